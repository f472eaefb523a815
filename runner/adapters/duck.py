"""Small DuckDB helpers shared by the DuckDB adapters: quoting, connections, lockdown, errors.

Opening a database file that another process holds raises StoreBusyError (DuckDB allows one
writer process or many readers, never both); every other duckdb.Error becomes StoreError
unless the caller maps it. Used by sources, results and ledger.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb

from runner.errors import StoreBusyError, StoreError

Error = duckdb.Error
Connection = duckdb.DuckDBPyConnection


def duckdb_version() -> str:
    return str(duckdb.__version__)


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def path_list(paths: Sequence[Path]) -> str:
    return "[" + ", ".join(literal(str(p)) for p in paths) + "]"


def memory(*, temp_dir: Path | None = None, ordered: bool = True) -> Connection:
    """A private in-memory database; spills to ``temp_dir`` (else this process's spill
    directory) instead of running out.

    Private, so it may be locked down (user SQL) or hold a set of any size. ``ordered=False``
    lets DuckDB write query results out of row order, on every core: for work whose output
    order carries no meaning (a request set, an upload file), it is ~1.5x faster.
    """
    config = _config()
    config["preserve_insertion_order"] = ordered
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        config["temp_directory"] = str(temp_dir)
    return _quiet(duckdb.connect(":memory:", config=config))


def spill_dir() -> Path:
    """This process's directory for what in-memory databases spill, removed at exit.

    One per process: DuckDB names its spill files alike in every process
    (``duckdb_temp_storage_S160K-0.tmp``), so two processes spilling into one directory
    read each other's blocks (an IO error, or worse).
    """
    with _spill_lock:
        if not _spill:
            path = Path(tempfile.mkdtemp(prefix="gbatch-duckdb-spill-"))
            atexit.register(shutil.rmtree, path, ignore_errors=True)
            _spill.append(path)
        return _spill[0]


_spill: list[Path] = []
_spill_lock = threading.Lock()


def _config() -> dict[str, str | bool | int | float | list[str]]:
    return {**_CONFIG, "temp_directory": str(spill_dir())}


def shared_memory() -> Connection:
    """A cursor on the process's shared in-memory database, with temp tables of its own.

    Opening a database costs ~10 ms and a reconcile needs several small ones (ledger, JSONL);
    a cursor costs ~0.3 ms. Only temp tables, and never lock it down: others share it.
    """
    return _quiet(_shared().cursor())


def _quiet(con: Connection) -> Connection:
    """No progress bar: DuckDB draws one on stdout for queries over ~2 s, even in a daemon."""
    con.execute("set enable_progress_bar = false")
    return con


# Memory caps: DuckDB spills to disk beyond them instead of failing. The allocator hands
# freed memory back at once: otherwise what one step freed stays resident while the next step
# (another database) allocates its own, and the peaks add up (bench/apply_e2e.py).
_ALLOCATOR: dict[str, str | bool | int | float | list[str]] = {
    "allocator_flush_threshold": "16MB",
    "allocator_bulk_deallocation_flush_threshold": "16MB",
}
_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    # what a build of 1M wide rows needs (bench/build_requests.py; 250 MB ran out): the caps
    # are a floor against running out, the steps themselves keep their working sets small
    "memory_limit": "600MB",
    "preserve_insertion_order": True,
    **_ALLOCATOR,
}
_FILE_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    # an ingest holds a job's parsed rows until they are written: 200 MB ran out at 200k
    # lines in one file (bench/ingest.py), 300 MB holds 1M
    "memory_limit": "300MB",
    **_ALLOCATOR,
}
_shared_db: list[Connection] = []
_shared_lock = threading.Lock()


def _shared() -> Connection:
    with _shared_lock:
        if not _shared_db:
            _shared_db.append(duckdb.connect(":memory:", config=_config()))
        return _shared_db[0]


def open_file(path: Path, *, read_only: bool, wait_s: float = 0.0) -> Connection:
    """A connection to a database file; StoreBusyError when another process holds it.

    ``wait_s`` keeps trying that long first (a reader waiting out one ingest transaction).
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return _open(path, read_only=read_only)
        except StoreBusyError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


# Rows per row group in the files gbatch writes (DuckDB's default is 122,880). A transaction
# that appends less than a row group goes through the WAL, and the checkpoint at close then
# rewrites the table's last, partial row group whole: appending 50k-row jobs to a results
# file cost 0.25-1.9 s per close at the default, 0.02 s at this size, and the file came out
# 37 MB instead of 67 MB for 400k rows (bench/append_jobs.py: 2.2x per 50k-row job, 1.3x
# per 20k, even at 5k).
ROW_GROUP_SIZE = 16384


def _open(path: Path, *, read_only: bool) -> Connection:
    if read_only and not path.exists():
        raise StoreError(f"no results database at {path} yet: nothing has been ingested")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if read_only:
            return _quiet(duckdb.connect(str(path), read_only=True, config=_FILE_CONFIG))
        return _quiet(_writer(path))
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise StoreBusyError(
                f"{path} is held by another process ({_holder(exc)}); gbatch retries the write "
                "later. Readers should open it read-only (duckdb -readonly)."
            ) from exc
        raise StoreError(f"{path}: {exc}") from exc
    except duckdb.Error as exc:
        raise StoreError(f"{path}: {exc}") from exc


def _writer(path: Path) -> Connection:
    """``path`` attached as the current database with ``ROW_GROUP_SIZE`` (an ATTACH option
    only), named as ``duckdb.connect(path)`` would name it; spills beside it, as then."""
    config = {**_FILE_CONFIG, "temp_directory": str(path) + ".tmp"}
    # DuckDB's own renaming of reserved names (main.duckdb -> main_db); "memory" is the host
    name = path.stem + "_db" if path.stem in ("main", "temp", "system", "memory") else path.stem
    con = duckdb.connect(":memory:", config=config)
    try:
        con.execute(
            f"attach {literal(str(path))} as {ident(name)} (row_group_size {ROW_GROUP_SIZE})"
        )
        con.execute(f"use {ident(name)}")
    except BaseException:
        con.close()
        raise
    return con


def _holder(exc: Exception) -> str:
    text = str(exc)
    marker = "(PID "
    if marker in text:
        return "PID " + text.split(marker, 1)[1].split(")", 1)[0]
    return "a conflicting lock"


def lock_down(con: Connection, *, readable: Sequence[Path] = ()) -> None:
    """No file access except reading under ``readable``; no extensions; settings frozen."""
    con.execute("set autoinstall_known_extensions = false")
    con.execute("set autoload_known_extensions = false")
    if readable:
        dirs = ", ".join(literal(str(p.resolve()) + "/") for p in readable)
        con.execute(f"set allowed_directories = [{dirs}]")
    con.execute("set enable_external_access = false")
    con.execute("set lock_configuration = true")


def single_select(sql: str) -> str | None:
    """Why ``sql`` is not exactly one SELECT statement (None when it is)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        return f"not valid SQL: {exc}"
    if len(statements) != 1:
        return f"expected one SELECT statement, got {len(statements)} statements"
    if statements[0].type != duckdb.StatementType.SELECT:
        return f"only SELECT is allowed, got {statements[0].type.name}"
    return None
