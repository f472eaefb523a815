"""The engine: applies the core's decisions through the adapters (plan, submit, follow)."""
