"""Wiring shared by the commands: settings, the stores, the Runtime, the manifests a command
works on.

``runtime`` builds the one Runtime of a command (state store, result store, leadership,
Gemini backend, prices); with ``need_key=False`` (``plan --no-count-tokens``, ``diff``) a
backend that refuses every call stands in, so no API key is needed and none can be used by
mistake.

Which store implements each port is decided here, from the settings, and only here (#18):
``GBATCH_STATE_URL`` unset: the SQLite state under ``GBATCH_STATE_DIR`` with its process
lock, and a process that always leads; ``postgresql://...``: the shared Postgres state,
where one of several processes leads (``runner.adapters.pg_state``). ``GBATCH_DB`` a path:
the DuckDB results file; ``ducklake:...``: a DuckLake (``runner.adapters.lake``). The
Postgres and lake adapters are imported only when asked for (they need ``gbatch[team]``).
Called by the commands, the status page and the metrics endpoint.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.adapters import sources
from runner.adapters.backends import backend_for
from runner.adapters.results import ResultsDb
from runner.adapters.state import ProcessLock, StateStore, read_table_owners
from runner.cli.exits import UsageError
from runner.core.clock import Clock, SystemClock
from runner.core.jobs import RemoteJob
from runner.core.loader import LoadedManifest
from runner.core.ports import Backend, Leadership, ResultStore, State, UploadedFile
from runner.core.pricing import load_prices
from runner.core.records import TableOwner
from runner.engine import integrity
from runner.engine.leadership import SoleLeader
from runner.engine.runtime import Runtime
from runner.engine.selection import Selector
from runner.engine.validate import validate
from runner.errors import (
    GbatchError,
    LockedError,
    ManifestError,
    ManifestErrors,
    PermanentBackendError,
)
from runner.settings import Settings

if TYPE_CHECKING:
    from runner.adapters.pg_state import PgState


CliSettings = Settings  # the commands' settings: runner.settings.Settings, the one class


def load_settings(*, log_format: str | None) -> CliSettings:
    overrides: dict[str, Any] = {"log_format": log_format} if log_format else {}
    return CliSettings(**overrides)


def secrets(settings: CliSettings) -> list[str]:
    """What must never be printed or logged."""
    return [s.get_secret_value() for s in (settings.api_key, settings.ui_token) if s is not None]


class KeylessBackend:
    """A Backend for work that must not call the API: every call says why it cannot."""

    def __init__(self, why: str) -> None:
        self.why = why

    @property
    def api_errors(self) -> Mapping[str, int]:
        return {}

    def _refuse(self) -> GbatchError:
        return PermanentBackendError(self.why)

    def upload_jsonl(self, path: Path, *, display_name: str) -> UploadedFile:
        raise self._refuse()

    def upload_media(self, path: Path, *, mime_type: str, display_name: str) -> UploadedFile:
        raise self._refuse()

    def file_exists(self, name: str) -> bool:
        raise self._refuse()

    def delete_file(self, name: str) -> None:
        raise self._refuse()

    def create_job(
        self,
        *,
        model: str,
        display_name: str,
        src_file: str | None,
        inline: Path | None,
        task: str = "generate",
    ) -> RemoteJob:
        raise self._refuse()

    def list_jobs(self, *, max_pages: int | None = None) -> Iterator[RemoteJob]:
        raise self._refuse()

    def get_job(self, name: str) -> RemoteJob:
        raise self._refuse()

    def cancel_job(self, name: str) -> None:
        raise self._refuse()

    def download_results(
        self, job: RemoteJob, dest: Path, *, keys: Collection[str] | None = None
    ) -> None:
        raise self._refuse()

    def count_tokens(self, *, model: str, contents: list[dict[str, Any]]) -> int:
        raise self._refuse()

    def create_cache(
        self, *, model: str, body: dict[str, Any], ttl_s: float, display_name: str
    ) -> tuple[str, str]:
        raise self._refuse()

    def find_cache(self, display_name: str) -> tuple[str, str] | None:
        raise self._refuse()

    def extend_cache(self, name: str, *, ttl_s: float) -> str:
        raise self._refuse()

    def delete_cache(self, name: str) -> None:
        raise self._refuse()


# -- the stores (#18) ------------------------------------------------------------------------
def _pg() -> type[PgState]:
    try:
        from runner.adapters.pg_state import PgState
    except ImportError as exc:
        raise GbatchError(
            f"GBATCH_STATE_URL is a Postgres URL, which needs pip install 'gbatch[team]' ({exc})"
        ) from None
    return PgState


def open_state(settings: Settings, *, clock: Clock | None = None) -> State:
    """The state store the settings name: SQLite under the state directory, or Postgres."""
    if settings.state_url is None:
        return StateStore(settings.state_db, clock=clock)
    url = settings.state_url.get_secret_value()
    if not url.startswith(("postgresql://", "postgres://")):
        raise GbatchError("GBATCH_STATE_URL must be a postgresql:// URL (or unset for SQLite)")
    return _pg()(url, clock=clock, lease_s=settings.leader_lease_s)


@contextmanager
def state_of(settings: Settings) -> Iterator[State]:
    """The state, opened for one read (status, events, query, the status page, metrics)."""
    state = open_state(settings)
    try:
        yield state
    finally:
        state.close()


def table_owners(settings: Settings) -> list[TableOwner]:
    """The state's table owners for validate and plan: a SQLite state is read without being
    created or migrated; a shared state is read where it is."""
    if settings.state_url is None:
        return read_table_owners(settings.state_db)
    with state_of(settings) as state:
        return state.table_owners()


def _shared(state: State) -> PgState | None:
    if isinstance(state, StateStore):
        return None
    from runner.adapters.pg_state import PgState

    return state if isinstance(state, PgState) else None


def leadership_for(state: State) -> Leadership:
    """The lease over a shared state; a state of one process always leads."""
    shared = _shared(state)
    if shared is None:
        return SoleLeader()
    from runner.adapters.pg_state import PgLeadership

    return PgLeadership(shared)


def process_lock(settings: Settings) -> AbstractContextManager[object]:
    """One process per SQLite state directory; a shared state elects a leader instead."""
    return ProcessLock(settings.state_dir) if settings.state_url is None else nullcontext()


def open_results(settings: Settings) -> ResultStore:
    """The result store ``GBATCH_DB`` names: a DuckDB file, or a DuckLake."""
    from runner.adapters import lake  # duckdb only, like results.py; the extensions load late

    spec = lake.parse(str(settings.db), data_path=settings.lake_data_path)
    if spec is None:
        return ResultsDb(settings.db)
    return lake.LakeResults(spec, compact_every_s=settings.lake_compact_every_s)


def state_lines(state: State) -> list[str]:
    """What ``gbatch status`` says of a shared state: where it is and who leads it."""
    shared = _shared(state)
    if shared is None:
        return []
    epoch, holder, age = shared.leader()
    beat = f", heartbeat {age:.1f}s ago" if age is not None else ""
    return [f"state: {shared.where}; leader {holder or 'none yet'} (epoch {epoch}{beat})"]


@contextmanager
def runtime(
    settings: Settings,
    *,
    work_dir: Path | None = None,
    clock: Clock | None = None,
    need_key: bool = True,
    lead: bool = False,
) -> Iterator[Runtime]:
    """The wired Runtime; ``lead``: take the lead of a shared state now (LockedError when
    another process leads it), as ``apply`` must; ``watch`` waits for it in the daemon."""
    clock = clock or SystemClock()
    backend: Backend = (
        backend_for(settings)  # GBATCH_BACKEND: gemini | vertex; says what is missing
        if need_key
        else KeylessBackend("this command does not call the API")
    )
    state = open_state(settings, clock=clock)
    leadership = leadership_for(state)
    try:
        if lead and not leadership.lead():
            raise LockedError(
                f"{leadership.holder() or 'another process'} leads the shared state; one "
                "gbatch apply or watch acts on it at a time (the others stand by)"
            )
        yield Runtime(
            settings=settings,
            state=state,
            backend=backend,
            prices=load_prices(settings.prices_file),
            work_dir=work_dir or settings.state_dir,
            clock=clock,
            result_store=open_results(settings),
            leadership=leadership,
        )
    finally:
        leadership.release()
        state.close()


def selector(texts: Sequence[str]) -> Selector:
    try:
        return Selector.parse(texts)
    except ValueError as exc:
        raise UsageError(f"--selector: {exc}") from None


def private(settings: Settings) -> tuple[Path, ...]:
    """gbatch's own files, which no manifest source may read."""
    return sources.private_paths(state_dir=settings.state_dir, db=settings.db)


def checked(
    paths: Sequence[Path], settings: Settings
) -> tuple[list[LoadedManifest], list[ManifestError]]:
    """Every manifest under ``paths`` that is valid, and every problem: its data (away from
    gbatch's own files) and its table name against every table the state knows."""
    loaded, errors = validate(
        paths, forbidden=private(settings), backend=settings.backend, state_dir=settings.state_dir
    )
    loaded = integrity.refuse_collisions(loaded, errors, owners=table_owners(settings))
    return loaded, errors


def validated(paths: Sequence[Path], chosen: Selector, settings: Settings) -> list[LoadedManifest]:
    """Every manifest under ``paths`` that the selector picks; all must be valid."""
    loaded, errors = checked(paths, settings)
    if errors:
        raise ManifestErrors(errors)
    picked = [item for item in loaded if chosen.matches(item.manifest.metadata.labels)]
    if loaded and not picked:
        raise UsageError(f"no manifest under {', '.join(map(str, paths))} matches {chosen}")
    return picked
