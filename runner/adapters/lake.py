"""Results in a DuckLake: the same tables as the DuckDB file, written and read from any host.

``GBATCH_DB=ducklake:postgres:<libpq conninfo>`` keeps the lake's catalog in Postgres (several
hosts), ``ducklake:sqlite:<path>`` in a SQLite file (one host); the data are Parquet files
(zstd) under ``GBATCH_LAKE_DATA_PATH``. The tables, views and guarantees are those of
``runner.adapters.results`` (history, the current view, sources, typed columns, schema
changes), whose SQL runs here unchanged through :class:`LakeOpener`: a connection whose
current database is the lake.

- One lake transaction per job ingest. DuckLake refuses the second of two commits that
  changed the same table (each ingest re-makes the table's current view, so two ingests
  into one table always collide): that is retried from scratch (the job's rows are
  replaced, so a retry never duplicates them).
- Every commit writes files: ``ducklake_merge_adjacent_files`` runs after a write at most
  every ``GBATCH_LAKE_COMPACT_EVERY_S``.
- The ducklake / postgres / sqlite extensions come from their PyPI wheels (``gbatch[team]``),
  installed offline into a private extension directory, with autoinstall and autoload off.

Anyone reads it with DuckDB and the same extensions::

    INSTALL ducklake; LOAD ducklake;   -- or INSTALL '<wheel>/ducklake.duckdb_extension'
    ATTACH 'ducklake:postgres:dbname=gbatch host=db' AS lake (DATA_PATH '/data/lake', READ_ONLY);
    SELECT * FROM lake.product_copy;

Wired by ``runner.cli.wiring`` when ``GBATCH_DB`` starts with ``ducklake:``.
"""

from __future__ import annotations

import importlib
import logging
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import duckdb

from runner.adapters.duck import Connection, literal, memory
from runner.adapters.results import ResultsDb
from runner.errors import GbatchError, StoreBusyError, StoreError

log = logging.getLogger("gbatch")

PREFIX = "ducklake:"
CATALOG = "lake"  # the name the lake is attached under in gbatch's own connections
WHEELS = {
    "ducklake": "duckdb_extension_ducklake",
    "postgres": "duckdb_extension_postgres",
    "sqlite": "duckdb_extension_sqlite",
}
CONFLICT_ATTEMPTS = 8
T = TypeVar("T")


@dataclass(frozen=True)
class LakeSpec:
    """Where a lake is: its catalog (``postgres:<conninfo>`` or ``sqlite:<path>``), its data."""

    kind: str  # postgres | sqlite
    catalog: str  # the conninfo or path
    data_path: Path

    def attach_target(self) -> str:
        return f"{PREFIX}{self.kind}:{self.catalog}"

    def __str__(self) -> str:
        return f"{PREFIX}{self.kind}:{_redact(self.catalog)} (data {self.data_path})"


def parse(db: str, *, data_path: Path | None) -> LakeSpec | None:
    """The lake ``GBATCH_DB`` names, or None when it names a DuckDB file."""
    if not db.startswith(PREFIX):
        return None
    kind, _, catalog = db[len(PREFIX) :].partition(":")
    if kind not in ("postgres", "sqlite") or not catalog.strip():
        raise GbatchError(
            f"GBATCH_DB={_redact(db)}: a lake is ducklake:postgres:<libpq conninfo> "
            "(e.g. ducklake:postgres:dbname=gbatch host=db) or ducklake:sqlite:<path>"
        )
    if data_path is None:
        raise GbatchError(
            "GBATCH_DB names a DuckLake: set GBATCH_LAKE_DATA_PATH to the folder (seen by every "
            "host) that holds its Parquet files"
        )
    # settings keep GBATCH_DB as a path, which folds the // of a postgresql:// URI
    catalog = re.sub(r"^(postgres(?:ql)?):/(?=[^/])", r"\1://", catalog.strip())
    return LakeSpec(kind=kind, catalog=catalog, data_path=data_path)


def _redact(text: str) -> str:
    text = re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text)
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", text)


# -- extensions, offline ------------------------------------------------------------------
_installed: set[tuple[str, str]] = set()  # (extension directory, extension) this process put
_install_lock = threading.Lock()


def extension_dir() -> Path:
    """gbatch's own extension directory (never DuckDB's default ~/.duckdb, nothing shared)."""
    path = Path(tempfile.gettempdir()) / f"gbatch-duckdb-extensions-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def wheel_extension(name: str) -> Path:
    """The extension binary shipped in its PyPI wheel, for this DuckDB version."""
    module_name = WHEELS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise GbatchError(
            f"a DuckLake needs the {name} extension: pip install 'gbatch[team]' "
            f"(brings {module_name.replace('_', '-')})"
        ) from None
    base = Path(module.__file__ or "").parent / "extensions" / f"v{duckdb.__version__}"
    found = sorted(base.glob("*.duckdb_extension"))
    if not found:
        raise GbatchError(f"{module_name} holds no extension for DuckDB {duckdb.__version__}")
    return found[0]


def load_extensions(con: Connection, kind: str) -> None:
    """Install (once per directory) and load ducklake and the catalog's extension."""
    directory = extension_dir()
    con.execute("set autoinstall_known_extensions = false")
    con.execute("set autoload_known_extensions = false")
    con.execute(f"set extension_directory = {literal(str(directory))}")
    for name in ("ducklake", kind):
        with _install_lock:
            if (str(directory), name) not in _installed:
                con.execute(f"install {literal(str(wheel_extension(name)))}")
                _installed.add((str(directory), name))
        con.execute(f"load {name}")


# -- the opener and the store -------------------------------------------------------------
class LakeOpener:
    """Connections (``runner.adapters.results.Opener``) whose current database is the lake.

    Writers get a cursor on one in-memory database kept for the process with the lake
    attached (loading the extensions costs ~0.3 s, a cursor nothing; temp views stay per
    cursor); readers get a database of their own, locked down by ``run_query``.
    """

    def __init__(self, spec: LakeSpec) -> None:
        self.spec = spec
        self._db: Connection | None = None
        self._lock = threading.Lock()

    def connect(self, *, read_only: bool, wait_s: float = 0.0) -> Connection:
        if read_only:
            return self._attach(read_only=True)
        with self._lock:
            if self._db is None:
                self._db = self._attach(read_only=False)
            cursor = self._db.cursor()
        try:
            cursor.execute("set enable_progress_bar = false")
            cursor.execute(f"use {CATALOG}")
        except duckdb.Error as exc:
            cursor.close()
            self.reset()
            raise StoreBusyError(f"DuckLake {self.spec}: {_first_line(exc)}") from exc
        return cursor

    def reset(self) -> None:
        """Forget the kept database (after a failure: the next write attaches afresh)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _attach(self, *, read_only: bool) -> Connection:
        con = memory()
        try:
            load_extensions(con, self.spec.kind)
            self.spec.data_path.mkdir(parents=True, exist_ok=True)
            options = f"data_path {literal(str(self.spec.data_path) + '/')}"
            if read_only:
                options += ", read_only"
            con.execute(f"attach {literal(self.spec.attach_target())} as {CATALOG} ({options})")
            con.execute(f"use {CATALOG}")
        except duckdb.Error as exc:
            con.close()
            # an unreachable catalog passes: the engine tries the write again next cycle
            raise StoreBusyError(f"DuckLake {self.spec}: {_first_line(exc)}") from exc
        except BaseException:
            con.close()
            raise
        return con

    def exists(self) -> bool:
        return True  # attaching makes an empty lake

    def readable(self) -> tuple[Path, ...]:
        return (self.spec.data_path,)

    def __str__(self) -> str:
        return str(self.spec)


def _first_line(exc: BaseException) -> str:
    return _redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)


def _conflict(exc: BaseException) -> bool:
    cause = exc.__cause__
    return isinstance(cause, duckdb.TransactionException) and "conflict" in str(cause).lower()


class LakeResults(ResultsDb):
    """The result-store port on a DuckLake: results.py's writes, retried on commit conflicts,
    then compaction when it is due; ``describe`` for ``gbatch status``."""

    def __init__(self, spec: LakeSpec, *, compact_every_s: float = 300.0) -> None:
        self._opener = LakeOpener(spec)
        super().__init__(self._opener)
        self.spec = spec
        self.compact_every_s = compact_every_s
        self._compacted = time.monotonic()
        self._configured = False

    def _write(self, work: Callable[[], T]) -> T:
        self._configure()
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                result = work()
                break
            except StoreError as exc:
                if not _conflict(exc):
                    self._opener.reset()  # a broken catalog connection is not kept
                    raise
                if attempt == CONFLICT_ATTEMPTS:
                    raise
                log.info("lake commit conflict (another writer): retrying (%d)", attempt)
                time.sleep(random.uniform(0.02, 0.1) * attempt)  # let the other commit land
        if time.monotonic() - self._compacted >= self.compact_every_s:
            self.compact()
        return result

    def _configure(self) -> None:
        """zstd Parquet files (the long text columns, as in the DuckDB file); once."""
        if self._configured:
            return
        con = self._open()
        try:
            current = con.execute(
                f"select value from {CATALOG}.options() where option_name = 'parquet_compression'"
            ).fetchone()
            if current is None or current[0] != "zstd":
                con.execute(f"call {CATALOG}.set_option('parquet_compression', 'zstd')")
        except duckdb.Error as exc:
            raise StoreError(f"DuckLake {self.spec}: {_first_line(exc)}") from exc
        finally:
            con.close()
        self._configured = True

    def _open(self, *, read_only: bool = False) -> Connection:
        return self._opener.connect(read_only=read_only)

    def compact(self) -> None:
        """Merge small adjacent data files and delete the ones no snapshot needs any more.

        A failure (a writer committed meanwhile) is logged and tried at the next due time.
        """
        self._compacted = time.monotonic()
        con = self._open()
        try:
            con.execute(f"call ducklake_merge_adjacent_files({literal(CATALOG)})").fetchall()
            con.execute(f"call ducklake_cleanup_old_files({literal(CATALOG)})").fetchall()
        except duckdb.Error as exc:
            log.warning("lake compaction: %s (trying again later)", _first_line(exc))
        finally:
            con.close()

    def describe(self) -> list[str]:
        """The lake's snapshot and data files, for ``gbatch status``."""
        try:
            con = self._open(read_only=True)
        except StoreError as exc:
            return [f"results: {self.spec}: {exc}"]
        try:
            snapshot = con.execute(
                f"select max(snapshot_id), count(*) from ducklake_snapshots({literal(CATALOG)})"
            ).fetchone()
            tables = con.execute(
                f"select table_name, file_count, file_size_bytes, delete_file_count "
                f"from ducklake_table_info({literal(CATALOG)}) order by table_name"
            ).fetchall()
        except duckdb.Error as exc:
            return [f"results: {self.spec}: {_first_line(exc)}"]
        finally:
            con.close()
        files = sum(int(t[1]) for t in tables)
        size = sum(int(t[2]) for t in tables)
        deletes = sum(int(t[3]) for t in tables)
        lines = [
            f"results: DuckLake {self.spec}",
            f"  snapshot {snapshot[0] if snapshot else '-'} ({snapshot[1] if snapshot else 0} "
            f"snapshots); {len(tables)} tables, {files} data files ({size / 1e6:.1f} MB), "
            f"{deletes} delete files",
        ]
        lines += [f"  {name}: {count} files, {int(b) / 1e6:.1f} MB" for name, count, b, _ in tables]
        return lines
