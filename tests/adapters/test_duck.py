"""Every DuckDB connection the runner opens keeps quiet: no progress bar on stdout."""

from __future__ import annotations

from pathlib import Path

from runner.adapters.duck import memory, open_file, shared_memory


def test_no_connection_draws_a_progress_bar(tmp_path: Path) -> None:
    connections = [memory(), memory(ordered=False), shared_memory()]
    connections.append(open_file(tmp_path / "r.duckdb", read_only=False))
    for con in connections:
        try:
            setting = con.execute("select current_setting('enable_progress_bar')").fetchone()
            assert setting == (False,)
        finally:
            con.close()
