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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from runner.errors import LockedError, StoreError

MIGRATIONS = (
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
    """
    alter table manifests add column policy text not null default '{}';
    """,
    """
    alter table jobs add column prompt_tokens integer not null default 0;
    alter table jobs add column output_tokens integer not null default 0;
    """,
    """
    alter table jobs add column kind text not null default 'batch';
    alter table jobs add column submitted_at text;
    alter table jobs add column input_tokens_est integer not null default 0;
    """,
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
    """
    create table media (
        sha256 text primary key,
        uri text not null,
        expire_time text not null,
        uploaded_at text not null
    );
    """,
    # gbatch#13: the state's identity (the results file records which state writes it), the
    # table each manifest owns (seeded from the applied manifests, the earliest first), and
    # where each ingested job's history rows are kept for a rebuild.
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

# Kinds of job: a remote batch job, or answers copied from the answer store (never sent).
JOB_KINDS = ("batch", "reuse")

# Local progress of a job, in order. Terminal phases: ingested, abandoned.
PHASES = ("planned", "uploaded", "submitting", "submitted", "downloaded", "ingested", "abandoned")
LIVE_PHASES = ("planned", "uploaded", "submitting", "submitted", "downloaded")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class JobRow:
    id: int
    intent: str
    manifest: str
    digest: str
    commit_sha: str | None
    display_name: str
    model: str
    request_file: str
    requests: int
    bytes: int
    phase: str
    remote_name: str | None
    remote_state: str | None
    input_file: str | None
    inline: int
    succeeded: int
    failed: int
    cost_usd: float | None
    error: str | None
    created_at: str
    updated_at: str
    prompt_tokens: int
    output_tokens: int
    kind: str
    submitted_at: str | None
    input_tokens_est: int
    cache_digest: str | None


@dataclass(frozen=True)
class ManifestRow:
    name: str
    path: str
    table_name: str
    model: str
    digest: str
    commit_sha: str | None
    request_set: str | None
    set_digest: str | None
    requests: int
    status: str
    last_error: str | None
    updated_at: str
    policy: str


@dataclass(frozen=True)
class CacheRow:
    name: str
    manifest: str
    digest: str
    model: str
    expire_time: str
    created_at: str
    deleted_at: str | None


@dataclass(frozen=True)
class TableOwner:
    """The manifest (identity: its name) that may write ``table_name`` and its derived names."""

    table_name: str
    manifest: str
    path: str
    since: str


@dataclass(frozen=True)
class KeptRows:
    """Where one ingested job's history rows are kept outside the results file.

    ``kind``: ``lines`` (the rows exactly as ingested), ``ledger`` (rebuilt from the ledger and
    the answer store: failed lines' error details were not kept), ``lost`` (nothing to rebuild
    from; counted so it is reported once, not retried every cycle).
    """

    job: int
    table_name: str
    label: str
    rows: int
    kind: str
    at: str


_CACHE_COLUMNS = ", ".join(f.name for f in fields(CacheRow))
_JOB_COLUMNS = ", ".join(f.name for f in fields(JobRow))
_MANIFEST_COLUMNS = ", ".join(f.name for f in fields(ManifestRow))
_KEPT_COLUMNS = ", ".join(f.name for f in fields(KeptRows))
_OWNER_COLUMNS = ", ".join(f.name for f in fields(TableOwner))


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
    if not path.exists():
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
    """Bookkeeping in ``<state_dir>/state.sqlite``; short transactions, many readers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self._db.execute("pragma journal_mode=wal")
            self._db.execute("pragma synchronous=full")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"state database {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        self._db.execute("create table if not exists migrations (id integer primary key, at text)")
        done = {row[0] for row in self._db.execute("select id from migrations")}
        for number, script in enumerate(MIGRATIONS, start=1):
            if number in done:
                continue
            with self.transaction():
                for statement in script.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute("insert into migrations values (?, ?)", (number, now()))

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

    # -- manifests ---------------------------------------------------------------------------
    def upsert_manifest(self, **values: Any) -> None:
        values.setdefault("updated_at", now())
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
        values["updated_at"] = now()
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
        stamp = now()
        with self.transaction() as db:
            for job in jobs:
                values = {**job, "phase": "planned", "created_at": stamp, "updated_at": stamp}
                columns = ", ".join(values)
                marks = ", ".join("?" for _ in values)
                db.execute(
                    f"insert into jobs ({columns}) values ({marks}) on conflict(intent) do nothing",
                    tuple(values.values()),
                )

    def update_job(self, job_id: int, **values: Any) -> None:
        values["updated_at"] = now()
        assignments = ", ".join(f"{c} = ?" for c in values)
        with self.transaction() as db:
            db.execute(f"update jobs set {assignments} where id = ?", (*values.values(), job_id))

    def job(self, job_id: int) -> JobRow:
        row = self._db.execute(f"select {_JOB_COLUMNS} from jobs where id = ?", (job_id,))
        found = row.fetchone()
        if found is None:
            raise StoreError(f"no job {job_id}")
        return JobRow(*found)

    def jobs(self, *, manifest: str | None = None, live: bool | None = None) -> list[JobRow]:
        where, args = [], []
        if manifest is not None:
            where.append("manifest = ?")
            args.append(manifest)
        if live is not None:
            marks = ", ".join("?" for _ in LIVE_PHASES)
            where.append(f"phase {'in' if live else 'not in'} ({marks})")
            args.extend(LIVE_PHASES)
        clause = f"where {' and '.join(where)}" if where else ""
        rows = self._db.execute(f"select {_JOB_COLUMNS} from jobs {clause} order by id", args)
        return [JobRow(*row) for row in rows]

    # -- context caches ----------------------------------------------------------------------
    def add_cache(self, *, name: str, manifest: str, digest: str, model: str, expire: str) -> None:
        with self.transaction() as db:
            db.execute(
                f"insert or replace into caches ({_CACHE_COLUMNS}) values (?, ?, ?, ?, ?, ?, null)",
                (name, manifest, digest, model, expire, now()),
            )

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
        """(uri, expire time) of the newest upload of this content, if any."""
        row = self._db.execute(
            "select uri, expire_time from media where sha256 = ?", (sha256,)
        ).fetchone()
        return (str(row[0]), str(row[1])) if row else None

    def add_media_file(self, sha256: str, uri: str, expire: str) -> None:
        with self.transaction() as db:
            db.execute(
                "insert or replace into media values (?, ?, ?, ?)", (sha256, uri, expire, now())
            )

    # -- events ------------------------------------------------------------------------------
    def event(
        self, kind: str, message: str, *, manifest: str | None = None, job: int | None = None
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "insert into events (at, manifest, job, kind, message) values (?, ?, ?, ?, ?)",
                (now(), manifest, job, kind, message),
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
                [(table, manifest, path, now()) for table, manifest, path in owners],
            )

    def move_table(self, table: str, manifest: str) -> TableOwner | None:
        """Give ``table`` to ``manifest`` (the explicit act); the previous owner, if any."""
        before = {o.table_name: o for o in self.table_owners()}.get(table)
        row = self.manifest(manifest)
        with self.transaction() as db:
            db.execute(
                "insert into table_owners values (?, ?, ?, ?) on conflict(table_name) do update "
                "set manifest = excluded.manifest, path = excluded.path, since = excluded.since",
                (table, manifest, row.path if row else "", now()),
            )
        return before

    def kept_rows(self) -> dict[int, KeptRows]:
        rows = self._db.execute(f"select {_KEPT_COLUMNS} from kept_rows order by job")
        return {int(row[0]): KeptRows(*row) for row in rows}

    def record_kept(self, *, job: int, table: str, label: str, rows: int, kind: str) -> None:
        with self.transaction() as db:
            db.execute(
                f"insert or replace into kept_rows ({_KEPT_COLUMNS}) values (?, ?, ?, ?, ?, ?)",
                (job, table, label, rows, kind, now()),
            )

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
        handle.write(json.dumps({"pid": os.getpid(), "since": now()}))
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
