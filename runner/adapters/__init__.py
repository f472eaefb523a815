"""Adapters: each owns one foreign library (google-genai, duckdb, sqlite3, watchdog, git)."""
