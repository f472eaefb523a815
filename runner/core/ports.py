"""The ports: what the engine needs from the outside world, as Protocols.

Adapters implement them (``runner.adapters.gemini.GeminiBackend``; the state stores in
``runner.adapters.state`` and ``runner.adapters.pg_state``; the result stores in
``runner.adapters.results`` and ``runner.adapters.lake``); tests pass fakes
(``tests/fakes.py``). The backend is split by concern: files, jobs, caches, models. The CLI
picks the stores from the settings (``runner.cli.wiring``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from runner.core.clock import Clock
from runner.core.jobs import RemoteJob
from runner.core.lifecycle import Phase
from runner.core.pricing import Price
from runner.core.records import (
    CacheRow,
    IngestSummary,
    JobRow,
    KeptRows,
    ManifestRow,
    Owner,
    TableOwner,
)


@dataclass(frozen=True)
class UploadedFile:
    """A file the Files API holds for us: it is deleted by the service at ``expire_time``."""

    name: str  # files/...
    uri: str
    expire_time: str  # RFC 3339, from the File's expirationTime
    size: int = 0


class Files(Protocol):
    """Uploads the service holds for us (the Files API, or a bucket)."""

    def upload_jsonl(self, path: Path, *, display_name: str) -> UploadedFile:
        """Upload a request file."""
        ...

    def upload_media(self, path: Path, *, mime_type: str, display_name: str) -> UploadedFile:
        """Upload a media file (used once it is ACTIVE)."""
        ...

    def file_exists(self, name: str) -> bool:
        """Whether an uploaded file (``files/...``) still exists."""
        ...

    def delete_file(self, name: str) -> None:
        """Delete an uploaded file; one already gone is not an error."""
        ...


class Jobs(Protocol):
    """Batch jobs: created once per intent, listed, followed, cancelled, downloaded."""

    def create_job(
        self,
        *,
        model: str,
        display_name: str,
        src_file: str | None,
        inline: Path | None,
        task: str = "generate",
    ) -> RemoteJob:
        """Create a batch job from an uploaded file or from a small local JSONL sent inline.

        ``task``: ``generate`` (GenerateContent requests) or ``embed`` (EmbedContent
        requests: an embeddings batch). Never retried here: an unclear outcome raises
        UnclearCreateError.
        """
        ...

    def list_jobs(self, *, max_pages: int | None = None) -> Iterator[RemoteJob]:
        """Jobs, newest first, page by page."""
        ...

    def get_job(self, name: str) -> RemoteJob: ...

    def cancel_job(self, name: str) -> None: ...

    def download_results(
        self, job: RemoteJob, dest: Path, *, keys: Collection[str] | None = None
    ) -> None:
        """Write the job's result lines (``{"key", "response"|"error"}``) to ``dest``.

        ``keys``: an inline job's keys, to match answers that come back without metadata.
        Raises ResultsMismatchError (raw output kept beside ``dest``) when they can't be.
        """
        ...


class Caches(Protocol):
    """Context caches (explicit caching); a backend without them refuses in ``create_cache``."""

    def create_cache(
        self, *, model: str, body: dict[str, Any], ttl_s: float, display_name: str
    ) -> tuple[str, str]:
        """Create a context cache; (name, expire time). Not retried: UnclearCreateError."""
        ...

    def find_cache(self, display_name: str) -> tuple[str, str] | None:
        """A live cache by display name: (name, expire time)."""
        ...

    def extend_cache(self, name: str, *, ttl_s: float) -> str:
        """Set the TTL from now; the new expire time."""
        ...

    def delete_cache(self, name: str) -> None: ...


class Models(Protocol):
    """What the planner asks of a model before anything is sent."""

    def count_tokens(self, *, model: str, contents: list[dict[str, Any]]) -> int: ...


class Backend(Files, Jobs, Caches, Models, Protocol):
    """A batch service, by concern; the engine's modules each use the part they need.

    Implemented by ``runner.adapters.gemini.GeminiBackend``; a new service is one adapter
    implementing these, which owns its wire format (its input lines, and its result lines
    normalised to ``{"key", "response" | "error"}``).
    """

    @property
    def api_errors(self) -> Mapping[str, int]:
        """Errors seen so far, by HTTP code or status (for metrics)."""
        ...


class State(Protocol):
    """The runner's bookkeeping: manifests, jobs and their moves, caches, media, events, the
    state's identity, table owners and kept rows (gbatch#13).

    ``runner.adapters.state.StateStore`` (SQLite, one process per state directory) and
    ``runner.adapters.pg_state.PgState`` (Postgres, several processes, one leader) implement
    it. Every write is one short transaction; the engine records each remote side effect
    through it as soon as it happens.
    """

    clock: Clock

    def now(self) -> str:
        """The clock's now, in the one text form of times in the state."""
        ...

    def close(self) -> None: ...

    def intent_lock(self, intent: str) -> AbstractContextManager[bool]:
        """Hold ``intent`` against every other process across a remote create and its record;
        yields False (at once, nothing waits) when another process holds it now."""
        ...

    # manifests
    def upsert_manifest(self, **values: Any) -> None: ...
    def update_manifest(self, name: str, **values: Any) -> None: ...
    def manifest(self, name: str) -> ManifestRow | None: ...
    def manifests(self) -> list[ManifestRow]: ...

    # jobs
    def add_jobs(self, jobs: list[dict[str, Any]]) -> None:
        """Record intents (phase ``planned``); an intent already known is kept as it is."""
        ...

    def update_job(self, job_id: int, **values: Any) -> None:
        """Record facts about a job; never its phase (ValueError)."""
        ...

    def transition(self, job_id: int, to: Phase, **values: Any) -> JobRow:
        """Move a job along a legal move of the lifecycle (IllegalMove otherwise)."""
        ...

    def job(self, job_id: int) -> JobRow: ...
    def jobs(
        self,
        *,
        manifest: str | None = None,
        live: bool | None = None,
        phases: Collection[Phase] | None = None,
    ) -> list[JobRow]:
        """Jobs by id; ``phases`` filters in the store (the cycle asks for few of many)."""
        ...

    # context caches
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
    ) -> None: ...
    def update_cache(self, name: str, **values: Any) -> None: ...
    def caches(
        self, *, manifest: str | None = None, digest: str | None = None
    ) -> list[CacheRow]: ...
    def cache_cost(self, manifest: str) -> float:
        """What the manifest's context caches cost in storage so far (deleted ones too)."""
        ...

    # media uploads
    def media_file(self, sha256: str) -> tuple[str, str] | None: ...
    def add_media_file(
        self, sha256: str, uri: str, expire: str, *, name: str | None = None, size: int = 0
    ) -> None: ...
    def media_files(self) -> list[tuple[str, str | None, int, str]]: ...
    def media_deleted(self, sha256: str) -> None: ...

    # manifest files that do not validate
    def set_invalid(self, path: str, error: str) -> None: ...
    def clear_invalid(
        self, paths: set[str] | None = None, *, keep: set[str] | None = None
    ) -> None: ...
    def invalid_files(self) -> list[tuple[str, str, str]]: ...

    # the state's identity, table owners, kept rows (gbatch#13)
    def identity(self) -> str: ...
    def verified_results(self) -> str | None: ...
    def set_verified_results(self, path: str) -> None: ...
    def table_owners(self) -> list[TableOwner]: ...
    def record_owners(self, owners: list[tuple[str, str, str]]) -> None: ...
    def move_table(self, table: str, manifest: str) -> TableOwner | None: ...
    def kept_rows(self) -> dict[int, KeptRows]: ...
    def record_kept(self, *, job: int, table: str, label: str, rows: int, kind: str) -> None: ...

    # events, metrics, query
    def event(
        self, kind: str, message: str, *, manifest: str | None = None, job: int | None = None
    ) -> None: ...
    def events_of(self, kinds: tuple[str, ...], *, limit: int = 5) -> list[tuple[str, str]]: ...
    def events(
        self, *, manifest: str | None = None, after: int = 0, newest: int | None = None
    ) -> list[tuple[Any, ...]]:
        """Events (id, at, manifest, job, kind, message) with an id above ``after``, oldest
        first; ``newest`` keeps only that many of the latest."""
        ...

    def summary(self) -> dict[str, list[tuple[Any, ...]]]: ...
    def tables(self) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]: ...


class Leadership(Protocol):
    """Which of several processes over one shared state may act (reconcile, submit, ingest).

    A single-process state always leads (``runner.engine.leadership.SoleLeader``); the
    Postgres state elects one leader with a lease and fences every write of a former one.
    """

    def lead(self) -> bool:
        """Whether this process leads now, taking the lead when it is free (never blocks)."""
        ...

    def holder(self) -> str:
        """Who leads, for logs and status ("" when nobody does)."""
        ...

    def release(self) -> None:
        """Give the lead up (a standby takes over at once)."""
        ...


Table = tuple[list[str], list[tuple[Any, ...]]]  # (columns, rows)


class ResultStore(Protocol):
    """Where answers land and users query them: a DuckDB file (``runner.adapters.results``)
    or a DuckLake (``runner.adapters.lake``). The same tables, views and guarantees in both:
    ``<table>_history`` (every answer ever ingested), the ``<table>`` view of the current
    rows, ``<table>_sources``, typed output-schema columns; one transaction per job ingest;
    ``owner``: the one state that writes it (LockedError for another).

    The file's integrity checks and repairs (inspect, keep, restore, move aside) are
    functions of the file, called by ``runner.engine.integrity`` when ``file`` is set; a lake
    keeps its own snapshots in its catalog. Another store operation is one more method here,
    taking what ``results.py``'s function of the same name takes minus ``results_db``.
    """

    @property
    def file(self) -> Path | None:
        """The DuckDB file (None for a lake)."""
        ...

    def ingest(
        self,
        *,
        table: str,
        result_file: Path,
        requests: Path,
        current: Path | None,
        output_schema: dict[str, Any] | None,
        price: Price | None,
        job: str,
        manifest: str,
        manifest_version: str,
        commit: str | None,
        paid: bool = True,
        on_schema_change: str = "add_columns",
        keep: Path | None = None,
        owner: Owner | None = None,
        ingested_at: str | None = None,
    ) -> IngestSummary:
        """One job's result lines into ``table``'s history and current view, atomically
        (``keep``: its rows copied there too); StoreBusyError when the store is held (the
        engine tries again next cycle)."""
        ...

    def show_current(self, *, table: str, current: Path, owner: Owner | None = None) -> None:
        """Point ``table`` at the newest answer of each (key, hash) of the current version."""
        ...

    def claim(self, owner: Owner, *, take: bool = False, wait_s: float = 0.0) -> None:
        """Make ``owner`` the store's writer; LockedError if another state is (unless
        ``take``)."""
        ...

    def run_query(
        self, sql: str, *, extra_tables: dict[str, Table] | None = None, max_rows: int = 10_000
    ) -> Table:
        """A user's SELECT, read-only and locked down, with ``extra_tables`` beside it."""
        ...

    def describe(self) -> list[str]:
        """Lines for ``gbatch status`` about the store itself (where it is; for a lake, its
        snapshot and file counts)."""
        ...
