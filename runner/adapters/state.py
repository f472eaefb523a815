"""The runner's own state: a SQLite file of manifests, jobs and events, plus a process lock.

Apart from the results database on purpose: SQLite in WAL mode lets ``status`` and ``query``
read while a daemon writes, and users holding the results file open never block submissions.
Every remote side effect is recorded here as soon as it happens (intent before create, file
name right after upload, job name right after create). Migrations are ordered and recorded.
Called by the engine and the CLI (status, query).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from runner.core.clock import Clock, SystemClock, stamp
from runner.core.lifecycle import LIVE_PHASES, Phase, check_move
from runner.core.records import (
    EVENT_COLUMNS,
    CacheRow,
    JobRow,
    KeptRows,
    ManifestRow,
    TableOwner,
    columns,
)
from runner.errors import LockedError, StoreError

# Ordered, named migrations (llm's pattern): each applied one is recorded by name, so adding
# one is appending a (name, script) pair. Never edit or reorder an applied one.
MIGRATIONS: list[tuple[str, str]] = []


def migration(name: str, script: str) -> None:
    MIGRATIONS.append((name, script))


migration(
    "manifests-jobs-events",
    """
    create table manifests (
        name text primary key,
        path text not null,
        table_name text not null,
        model text not null,
        digest text not null,
        commit_sha text,
        request_set text,
        set_digest text,
        requests integer not null default 0,
        status text not null default 'ok',
        last_error text,
        updated_at text not null
    );
    create table jobs (
        id integer primary key,
        intent text not null unique,
        manifest text not null,
        digest text not null,
        commit_sha text,
        display_name text not null,
        model text not null,
        request_file text not null,
        requests integer not null,
        bytes integer not null,
        phase text not null,
        remote_name text,
        remote_state text,
        input_file text,
        inline integer not null default 0,
        succeeded integer not null default 0,
        failed integer not null default 0,
        cost_usd real,
        error text,
        created_at text not null,
        updated_at text not null
    );
    create index jobs_by_manifest on jobs (manifest, phase);
    create table events (
        id integer primary key,
        at text not null,
        manifest text,
        job integer,
        kind text not null,
        message text not null
    );
    """,
)
migration(
    "manifest-policy",
    """
    alter table manifests add column policy text not null default '{}';
    """,
)
migration(
    "job-tokens",
    """
    alter table jobs add column prompt_tokens integer not null default 0;
    alter table jobs add column output_tokens integer not null default 0;
    """,
)
migration(
    "job-kind-submitted-estimate",
    """
    alter table jobs add column kind text not null default 'batch';
    alter table jobs add column submitted_at text;
    alter table jobs add column input_tokens_est integer not null default 0;
    """,
)
migration(
    "caches",
    """
    create table caches (
        name text primary key,
        manifest text not null,
        digest text not null,
        model text not null,
        expire_time text not null,
        created_at text not null,
        deleted_at text
    );
    create index caches_by_digest on caches (manifest, digest);
    alter table jobs add column cache_digest text;
    """,
)
migration(
    "media",
    """
    create table media (
        sha256 text primary key,
        uri text not null,
        expire_time text not null,
        uploaded_at text not null
    );
    """,
)
migration(
    "job-lifecycle-times",
    """
    alter table jobs add column input_expires text;
    alter table jobs add column lookup_since text;
    alter table jobs add column cancel_reason text;
    alter table media add column name text;
    alter table media add column size integer not null default 0;
    alter table media add column deleted_at text;
    create table invalid_files (
        path text primary key,
        error text not null,
        at text not null
    );
    """,
)

# The state's identity (the results file records which state writes it), the
# table each manifest owns (seeded from the applied manifests, the earliest first), and
# where each ingested job's history rows are kept for a rebuild.
migration(
    "results-integrity",
    """
    create table identity (id text not null, created_at text not null, results_db text);
    insert into identity (id, created_at)
        select lower(hex(randomblob(16))), strftime('%Y-%m-%dT%H:%M:%fZ');
    create table table_owners (
        table_name text primary key,
        manifest text not null,
        path text not null,
        since text not null
    );
    insert or ignore into table_owners
        select table_name, name, path, updated_at from manifests order by updated_at;
    create table kept_rows (
        job integer primary key,
        table_name text not null,
        label text not null,
        rows integer not null,
        kind text not null,
        at text not null
    );
    """,
)

migration(
    "cache-storage-cost",
    """
    alter table caches add column tokens integer not null default 0;
    alter table caches add column cost_usd real not null default 0;
    """,
)
# What a job's requests ask for: "generate" (answers) or "embed" (vectors; an embeddings
# batch is created by another call). Every job recorded before this column generated.
migration(
    "job-task",
    """
    alter table jobs add column task text not null default 'generate';
    """,
)

# Kinds of job: a remote batch job, or answers copied from the answer store (never sent).
JOB_KINDS = ("batch", "reuse")

# The first six migrations were once recorded by their position; their names, in order.
_NUMBERED = {number: name for number, (name, _) in enumerate(MIGRATIONS[:6], start=1)}


_CACHE_COLUMNS = columns(CacheRow)
_JOB_COLUMNS = columns(JobRow)
_MANIFEST_COLUMNS = columns(ManifestRow)
_KEPT_COLUMNS = columns(KeptRows)
_OWNER_COLUMNS = columns(TableOwner)


def _owners(db: sqlite3.Connection) -> list[TableOwner]:
    """The recorded owners; a manifest's table with no owner row counts as its own."""
    tables = {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}
    owners: list[TableOwner] = []
    if "table_owners" in tables:
        rows = db.execute(f"select {_OWNER_COLUMNS} from table_owners order by since")
        owners = [TableOwner(*row) for row in rows]
    taken = {o.table_name for o in owners}
    for name, path, table, since in db.execute(
        "select name, path, table_name, updated_at from manifests order by updated_at"
    ):
        if table not in taken:
            owners.append(TableOwner(table, name, path, since))
            taken.add(table)
    return owners


def read_table_owners(path: Path) -> list[TableOwner]:
    """The table owners of the state at ``path``, read without creating or migrating it
    (``validate`` must leave the state as it found it); none when there is no state yet."""
    StateStore.check_not_lost(path)  # an emptied state that did work is refused, not read
    if not path.exists() or path.stat().st_size == 0:
        return []
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
        try:
            return _owners(db)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StoreError(f"state database {path}: {exc}") from exc


class StateStore:
    """Bookkeeping in ``<state_dir>/state.sqlite``; short transactions, many readers.

    Opening checks the file: a state that has recorded work before (its directory holds
    answers or ledgers) but whose database is empty, or fails SQLite's integrity check, is
    refused (StoreError, exit 4) rather than taken for a fresh start, which would forget
    every job and the spend a cost cap counts. A copy is kept before each migration.
    """

    def __init__(self, path: Path, *, clock: Clock | None = None) -> None:
        self.path = path
        self.clock = clock or SystemClock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.check_not_lost(path)
        try:
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self._db.execute("pragma journal_mode=wal")
            self._db.execute("pragma synchronous=full")
            self._check_integrity()
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(
                f"state database {path} is unreadable ({exc}); restore it from a backup "
                f"({path.name}.before-*) or move the state directory aside"
            ) from exc

    def now(self) -> str:
        return stamp(self.clock.now())

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def check_not_lost(path: Path) -> None:
        """Refuse an emptied database in a state directory that has done work before."""
        empty = not path.exists() or path.stat().st_size == 0
        worked = any(
            (path.parent / sub).is_dir() and any((path.parent / sub).iterdir())
            for sub in ("answers", "ledger")
        )
        if empty and worked:
            raise StoreError(
                f"state database {path} is missing or empty, but {path.parent} holds answers "
                "and ledgers of earlier work: refusing to start from nothing (the recorded "
                f"jobs and spend would be forgotten). Restore {path.name} from a backup "
                f"({path.name}.before-*) or move the state directory aside."
            )

    def _check_integrity(self) -> None:
        row = self._db.execute("pragma quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {row[0] if row else '?'}")

    def _migrate(self) -> None:
        """Apply the migrations not yet recorded, in order, each in its own transaction."""
        db = self._db
        db.execute("create table if not exists applied_migrations (name text primary key, at)")
        done = {str(row[0]) for row in db.execute("select name from applied_migrations")}
        legacy = db.execute(
            "select 1 from sqlite_master where type = 'table' and name = 'migrations'"
        ).fetchone()
        if legacy and not done:  # recorded by position before migrations had names
            for number, at in db.execute("select id, at from migrations").fetchall():
                if number in _NUMBERED:
                    db.execute(
                        "insert into applied_migrations values (?, ?)", (_NUMBERED[number], at)
                    )
            done = {str(row[0]) for row in db.execute("select name from applied_migrations")}
        pending = [(name, script) for name, script in MIGRATIONS if name not in done]
        if pending and done:
            self._backup(f"{self.path.name}.before-{pending[0][0]}")
        for name, script in pending:
            with self.transaction():
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("insert into applied_migrations values (?, ?)", (name, self.now()))

    def _backup(self, name: str) -> None:
        target = sqlite3.connect(self.path.with_name(name))
        try:
            self._db.backup(target)
        finally:
            target.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("begin immediate")
            try:
                yield self._db
            except BaseException:
                self._db.execute("rollback")
                raise
            self._db.execute("commit")
        except sqlite3.Error as exc:
            raise StoreError(f"state database {self.path}: {exc}") from exc

    @contextmanager
    def intent_lock(self, intent: str) -> Iterator[bool]:
        """Always held: one process owns a SQLite state (ProcessLock), so no other can create
        this intent meanwhile. (The Postgres store takes a lock across processes here.)"""
        yield True

    # -- manifests ---------------------------------------------------------------------------
    def upsert_manifest(self, **values: Any) -> None:
        values.setdefault("updated_at", self.now())
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in values if c != "name")
        with self.transaction() as db:
            db.execute(
                f"insert into manifests ({columns}) values ({marks}) "
                f"on conflict(name) do update set {updates}",
                tuple(values.values()),
            )

    def update_manifest(self, name: str, **values: Any) -> None:
        values["updated_at"] = self.now()
        assignments = ", ".join(f"{c} = ?" for c in values)
        with self.transaction() as db:
            db.execute(
                f"update manifests set {assignments} where name = ?", (*values.values(), name)
            )

    def manifest(self, name: str) -> ManifestRow | None:
        row = self._db.execute(
            f"select {_MANIFEST_COLUMNS} from manifests where name = ?", (name,)
        ).fetchone()
        return ManifestRow(*row) if row else None

    def manifests(self) -> list[ManifestRow]:
        rows = self._db.execute(f"select {_MANIFEST_COLUMNS} from manifests order by name")
        return [ManifestRow(*row) for row in rows]

    # -- jobs --------------------------------------------------------------------------------
    def add_jobs(self, jobs: list[dict[str, Any]]) -> None:
        """Record intents (phase ``planned``) in one transaction; known intents are kept."""
        at = self.now()
        with self.transaction() as db:
            for job in jobs:
                values = {**job, "phase": Phase.PLANNED.value, "created_at": at, "updated_at": at}
                columns = ", ".join(values)
                marks = ", ".join("?" for _ in values)
                db.execute(
                    f"insert into jobs ({columns}) values ({marks}) on conflict(intent) do nothing",
                    tuple(values.values()),
                )

    def update_job(self, job_id: int, **values: Any) -> None:
        """Record facts about a job; its phase moves only through :meth:`transition`."""
        if "phase" in values:
            raise ValueError("a job's phase changes through StateStore.transition")
        self._set_job(self._db, job_id, values)

    def transition(self, job_id: int, to: Phase, **values: Any) -> JobRow:
        """Move a job to phase ``to`` (a legal move of the lifecycle) with ``values``, at once."""
        with self.transaction() as db:
            row = db.execute("select phase from jobs where id = ?", (job_id,)).fetchone()
            if row is None:
                raise StoreError(f"no job {job_id}")
            check_move(Phase(row[0]), to)
            self._set_job(db, job_id, {**values, "phase": to.value})
        return self.job(job_id)

    def _set_job(self, db: sqlite3.Connection, job_id: int, values: dict[str, Any]) -> None:
        values = {**values, "updated_at": self.now()}
        assignments = ", ".join(f"{c} = ?" for c in values)
        db.execute(f"update jobs set {assignments} where id = ?", (*values.values(), job_id))

    def job(self, job_id: int) -> JobRow:
        row = self._db.execute(f"select {_JOB_COLUMNS} from jobs where id = ?", (job_id,))
        found = row.fetchone()
        if found is None:
            raise StoreError(f"no job {job_id}")
        return JobRow(*found)

    def jobs(
        self,
        *,
        manifest: str | None = None,
        live: bool | None = None,
        phases: Collection[Phase] | None = None,
    ) -> list[JobRow]:
        where: list[str] = []
        args: list[Any] = []
        if phases is not None:
            where.append(f"phase in ({', '.join('?' for _ in phases) or 'null'})")
            args.extend(p.value for p in phases)
        if manifest is not None:
            where.append("manifest = ?")
            args.append(manifest)
        if live is not None:
            marks = ", ".join("?" for _ in LIVE_PHASES)
            where.append(f"phase {'in' if live else 'not in'} ({marks})")
            args.extend(p.value for p in LIVE_PHASES)
        clause = f"where {' and '.join(where)}" if where else ""
        rows = self._db.execute(f"select {_JOB_COLUMNS} from jobs {clause} order by id", args)
        return [JobRow(*row) for row in rows]

    # -- context caches ----------------------------------------------------------------------
    def add_cache(
        self,
        *,
        name: str,
        manifest: str,
        digest: str,
        model: str,
        expire: str,
        tokens: int = 0,
        cost_usd: float = 0.0,
    ) -> None:
        with self.transaction() as db:
            db.execute(
                f"insert or replace into caches ({_CACHE_COLUMNS}) "
                "values (?, ?, ?, ?, ?, ?, null, ?, ?)",
                (name, manifest, digest, model, expire, self.now(), tokens, cost_usd),
            )

    def cache_cost(self, manifest: str) -> float:
        """What the manifest's context caches cost in storage so far (deleted ones too)."""
        row = self._db.execute(
            "select coalesce(sum(cost_usd), 0) from caches where manifest = ?", (manifest,)
        ).fetchone()
        return float(row[0]) if row else 0.0

    def update_cache(self, name: str, **values: Any) -> None:
        assignments = ", ".join(f"{c} = ?" for c in values)
        with self.transaction() as db:
            db.execute(f"update caches set {assignments} where name = ?", (*values.values(), name))

    def caches(self, *, manifest: str | None = None, digest: str | None = None) -> list[CacheRow]:
        """Caches not deleted, newest first."""
        where, args = ["deleted_at is null"], []
        for column, value in (("manifest", manifest), ("digest", digest)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        rows = self._db.execute(
            f"select {_CACHE_COLUMNS} from caches where {' and '.join(where)} "
            "order by created_at desc",
            args,
        )
        return [CacheRow(*row) for row in rows]

    # -- media files -------------------------------------------------------------------------
    def media_file(self, sha256: str) -> tuple[str, str] | None:
        """(uri, expire time) of the newest live upload of this content, if any."""
        row = self._db.execute(
            "select uri, expire_time from media where sha256 = ? and deleted_at is null",
            (sha256,),
        ).fetchone()
        return (str(row[0]), str(row[1])) if row else None

    def add_media_file(
        self, sha256: str, uri: str, expire: str, *, name: str | None = None, size: int = 0
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "insert or replace into media (sha256, uri, expire_time, uploaded_at, name, size) "
                "values (?, ?, ?, ?, ?, ?)",
                (sha256, uri, expire, self.now(), name, size),
            )

    def media_files(self) -> list[tuple[str, str | None, int, str]]:
        """(sha256, files/ name, size, expire time) of every upload not yet deleted."""
        rows = self._db.execute(
            "select sha256, name, size, expire_time from media where deleted_at is null"
        )
        return [(str(s), n, int(z), str(e)) for s, n, z, e in rows]

    def media_deleted(self, sha256: str) -> None:
        with self.transaction() as db:
            db.execute("update media set deleted_at = ? where sha256 = ?", (self.now(), sha256))

    # -- manifest files that do not validate ---------------------------------------------------
    def set_invalid(self, path: str, error: str) -> None:
        with self.transaction() as db:
            db.execute(
                "insert into invalid_files values (?, ?, ?) on conflict(path) do update set "
                "error = excluded.error, at = excluded.at",
                (path, error, self.now()),
            )

    def clear_invalid(self, paths: set[str] | None = None, *, keep: set[str] | None = None) -> None:
        """Forget invalid files: those in ``paths``, or all but ``keep`` under a resync."""
        with self.transaction() as db:
            for (path,) in db.execute("select path from invalid_files").fetchall():
                if (paths is not None and path in paths) or (keep is not None and path not in keep):
                    db.execute("delete from invalid_files where path = ?", (path,))

    def invalid_files(self) -> list[tuple[str, str, str]]:
        """(path, error, since) of every manifest file that does not validate now."""
        rows = self._db.execute("select path, error, at from invalid_files order by path")
        return [(str(p), str(e), str(a)) for p, e, a in rows]

    # -- events ------------------------------------------------------------------------------
    def event(
        self, kind: str, message: str, *, manifest: str | None = None, job: int | None = None
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "insert into events (at, manifest, job, kind, message) values (?, ?, ?, ?, ?)",
                (self.now(), manifest, job, kind, message),
            )

    def events_of(self, kinds: tuple[str, ...], *, limit: int = 5) -> list[tuple[str, str]]:
        """The newest events of these kinds as (at, message), newest first."""
        marks = ", ".join("?" for _ in kinds)
        rows = self._db.execute(
            f"select at, message from events where kind in ({marks}) order by id desc limit ?",
            (*kinds, limit),
        )
        return [(str(at), str(message)) for at, message in rows]

    # -- identity, table owners, kept rows (gbatch#13) ---------------------------------------
    def identity(self) -> str:
        """This state's id: the results file records it, so a second state cannot write it."""
        row = self._db.execute("select id from identity").fetchone()
        assert row is not None  # inserted by the migration
        return str(row[0])

    def verified_results(self) -> str | None:
        """The results file this state last verified it writes (resolved path), if any."""
        row = self._db.execute("select results_db from identity").fetchone()
        return str(row[0]) if row and row[0] else None

    def set_verified_results(self, path: str) -> None:
        with self.transaction() as db:
            db.execute("update identity set results_db = ?", (path,))

    def table_owners(self) -> list[TableOwner]:
        return _owners(self._db)

    def record_owners(self, owners: list[tuple[str, str, str]]) -> None:
        """(table, manifest, path): a table not owned yet becomes the manifest's; an owner's
        path is kept current. Never takes a table from another manifest (see ``move_table``)."""
        with self.transaction() as db:
            db.executemany(
                "insert into table_owners values (?, ?, ?, ?) on conflict(table_name) do update "
                "set path = excluded.path where table_owners.manifest = excluded.manifest",
                [(table, manifest, path, self.now()) for table, manifest, path in owners],
            )

    def move_table(self, table: str, manifest: str) -> TableOwner | None:
        """Give ``table`` to ``manifest`` (the explicit act); the previous owner, if any."""
        before = {o.table_name: o for o in self.table_owners()}.get(table)
        row = self.manifest(manifest)
        with self.transaction() as db:
            db.execute(
                "insert into table_owners values (?, ?, ?, ?) on conflict(table_name) do update "
                "set manifest = excluded.manifest, path = excluded.path, since = excluded.since",
                (table, manifest, row.path if row else "", self.now()),
            )
        return before

    def kept_rows(self) -> dict[int, KeptRows]:
        rows = self._db.execute(f"select {_KEPT_COLUMNS} from kept_rows order by job")
        return {int(row[0]): KeptRows(*row) for row in rows}

    def record_kept(self, *, job: int, table: str, label: str, rows: int, kind: str) -> None:
        with self.transaction() as db:
            db.execute(
                f"insert or replace into kept_rows ({_KEPT_COLUMNS}) values (?, ?, ?, ?, ?, ?)",
                (job, table, label, rows, kind, self.now()),
            )

    EVENT_COLUMNS = EVENT_COLUMNS

    def events(
        self, *, manifest: str | None = None, after: int = 0, newest: int | None = None
    ) -> list[tuple[Any, ...]]:
        """Events (``EVENT_COLUMNS``) with an id above ``after``, oldest first; ``newest``
        keeps only that many of the latest (read with a limit, not the whole log)."""
        where: list[str] = ["id > ?"]
        args: list[Any] = [after]
        if manifest is not None:
            where.append("manifest = ?")
            args.append(manifest)
        query = f"select {', '.join(self.EVENT_COLUMNS)} from events where {' and '.join(where)}"
        if newest is not None:
            query = f"select * from ({query} order by id desc limit {int(newest)}) order by id"
        return list(self._db.execute(query + ("" if newest else " order by id"), args))

    def summary(self) -> dict[str, list[tuple[Any, ...]]]:
        """Aggregates for metrics: manifests by status, jobs by phase and remote state."""
        return {
            "manifests": self._db.execute(
                "select status, count(*) from manifests group by status"
            ).fetchall(),
            "jobs": self._db.execute(
                "select phase, coalesce(remote_state, ''), count(*), sum(requests), "
                "sum(succeeded), sum(failed), sum(prompt_tokens), sum(output_tokens), "
                "coalesce(sum(cost_usd), 0) from jobs group by 1, 2"
            ).fetchall(),
        }

    def tables(self) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
        """The bookkeeping tables as (columns, rows), for ``gbatch query``."""
        result = {}
        for table in ("manifests", "jobs", "events", "caches"):
            cursor = self._db.execute(f"select * from {table}")
            result[f"gbatch_{table}"] = ([d[0] for d in cursor.description], cursor.fetchall())
        return result


class ProcessLock:
    """An exclusive flock on ``<state_dir>/lock``: one apply or daemon per state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "lock"
        self._file: TextIO | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise LockedError(
                f"{self.path.parent} is in use by {holder}; one gbatch apply or watch per "
                "state directory (set GBATCH_STATE_DIR for another)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "since": stamp(SystemClock().now())}))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> ProcessLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
