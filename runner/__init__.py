"""gbatch: a declarative runner for the Gemini Batch API.

Layers (enforced by import-linter contracts in pyproject.toml):

- ``runner.core``      pure: manifest model, templates, planning, pricing. Data in, decisions out.
- ``runner.adapters``  one foreign library each: ``gemini`` (google-genai), ``store`` /
                       ``results`` / ``sources`` (duckdb), ``watcher`` (watchdog).
- ``runner.engine``    applies the core's decisions through the adapters (apply, poll, ingest).
- ``runner.cli``       wires settings, adapters and engine; the one place errors become exit codes.
- ``runner.emulator``  a local Gemini API server; imports nothing of the runner.
"""

__version__ = "0.1.0"
