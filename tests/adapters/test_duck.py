"""Every DuckDB connection the runner opens keeps quiet: no progress bar on stdout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from runner.adapters.duck import ROW_GROUP_SIZE, memory, open_file, shared_memory, spill_dir


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


def test_files_are_written_in_small_row_groups_so_an_append_does_not_rewrite_much(
    tmp_path: Path,
) -> None:
    """Each job's rows are appended to the results file, and DuckDB rewrites a table's last,
    partial row group at every checkpoint: the row group size bounds what an append costs
    beyond its own rows (122,880 by default: 0.25-1.9 s per 50k-row job)."""
    path = tmp_path / "results.duckdb"
    for job in range(3):  # three 30k-row appends: one row group at the default size
        con = open_file(path, read_only=False)
        try:
            con.execute("create table if not exists h (key varchar, job int)")
            con.execute(f"insert into h select 'k' || i, {job} from range(30000) t(i)")
            assert con.execute("select current_database()").fetchone() == ("results",)
        finally:
            con.close()
    con = open_file(path, read_only=True)
    try:
        (groups, rows) = con.execute(
            "select count(distinct row_group_id), (select count(*) from h) "
            "from pragma_storage_info('h')"
        ).fetchone() or (0, 0)
    finally:
        con.close()
    assert rows == 90000
    assert groups >= 90000 // ROW_GROUP_SIZE >= 5
