"""Which store implements each port, from the settings: the one place that decides it.

``GBATCH_STATE_URL`` unset: the SQLite state under ``GBATCH_STATE_DIR`` with its process lock,
and a process that always leads; ``postgresql://...``: the shared Postgres state, where one
of several processes leads (``runner.adapters.pg_state``). ``GBATCH_DB`` a path: the DuckDB
results file; ``ducklake:...``: a DuckLake (``runner.adapters.lake``). The Postgres and lake
adapters are imported only when asked for (they need ``gbatch[team]``). Called by
``runner.cli.commands``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from runner.adapters.results import ResultsDb
from runner.adapters.state import ProcessLock, StateStore
from runner.core.clock import Clock
from runner.core.ports import Leadership, ResultStore, State
from runner.engine.leadership import SoleLeader
from runner.errors import GbatchError
from runner.settings import Settings

if TYPE_CHECKING:
    from runner.adapters.pg_state import PgState


def _pg() -> type[PgState]:
    try:
        from runner.adapters.pg_state import PgState
    except ImportError as exc:
        raise GbatchError(
            f"GBATCH_STATE_URL is a Postgres URL, which needs pip install 'gbatch[team]' ({exc})"
        ) from None
    return PgState


def open_state(settings: Settings, *, clock: Clock | None = None) -> State:
    if settings.state_url is None:
        return StateStore(settings.state_db, clock=clock)
    url = settings.state_url.get_secret_value()
    if not url.startswith(("postgresql://", "postgres://")):
        raise GbatchError("GBATCH_STATE_URL must be a postgresql:// URL (or unset for SQLite)")
    return _pg()(url, clock=clock, lease_s=settings.leader_lease_s)


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
