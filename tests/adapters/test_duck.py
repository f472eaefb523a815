"""Every DuckDB connection the runner opens keeps quiet: no progress bar on stdout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from runner.adapters.duck import memory, open_file, shared_memory, spill_dir


def test_no_connection_draws_a_progress_bar(tmp_path: Path) -> None:
    connections = [memory(), memory(ordered=False), shared_memory()]
    connections.append(open_file(tmp_path / "r.duckdb", read_only=False))
    for con in connections:
        try:
            setting = con.execute("select current_setting('enable_progress_bar')").fetchone()
            assert setting == (False,)
        finally:
            con.close()


def test_each_process_spills_into_a_directory_of_its_own_removed_at_exit() -> None:
    """DuckDB names spill files alike in every process: a shared directory mixes them up."""
    script = (
        "from runner.adapters.duck import memory, spill_dir\n"
        "con = memory()\n"
        "print(con.execute(\"select current_setting('temp_directory')\").fetchone()[0])\n"
        "print(spill_dir())\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    con = shared_memory()
    try:
        (mine,) = con.execute("select current_setting('temp_directory')").fetchone() or ("",)
    finally:
        con.close()
    assert other[0] == other[1] != mine == str(spill_dir())
    assert not Path(other[1]).exists()  # the other process removed its own at exit
