"""Everything an engine step needs, wired once by the CLI: settings, stores, backend, prices.

The stores are ports (``runner.core.ports``): ``state`` (SQLite or Postgres), ``results``
(a DuckDB file or a DuckLake) and ``leadership`` (who of several processes may act); the CLI
picks them from the settings in ``runner.cli.wiring``. Tests may pass any of them.

Also the state directory's layout, so every module names the same files the same way.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.adapters import sources
from runner.adapters.results import ResultsDb
from runner.core.clock import Clock, SystemClock
from runner.core.failures import RetryPolicy
from runner.core.ports import Backend, Leadership, ResultStore, State
from runner.core.pricing import PriceTable
from runner.core.records import JobRow
from runner.engine.leadership import SoleLeader
from runner.settings import Settings, retry_policy

log = logging.getLogger("gbatch")


def fields(
    *,
    event: str,
    manifest: str | None = None,
    job: JobRow | None = None,
    phase: str | None = None,
) -> dict[str, Any]:
    """The structured fields of a log record (``log.info(..., extra=fields(...))``): the JSON
    log format writes them as keys; a job gives its manifest, id and phase."""
    if job is not None:
        manifest = manifest or job.manifest
        phase = phase or job.phase.value
    return {"event": event, "manifest": manifest, "job": job.id if job else None, "phase": phase}


@dataclass
class Runtime:
    settings: Settings
    state: State
    backend: Backend
    prices: PriceTable
    commit: str | None = None
    work_dir: Path = field(default=Path())  # where new files go: a scratch dir for `plan`
    clock: Clock = field(default_factory=SystemClock)
    git_checkout: Path | None = None  # a `watch --git` checkout (its .git is private)
    stop: threading.Event | None = None  # set to stop a running query source (daemon stop)
    backoff_until: float = 0.0  # clock.monotonic() before which no create is attempted
    backoff_reason: str = ""  # what the API said when it asked to back off
    # -- #18: the result store and leadership ports; None / SoleLeader: one process, a file
    result_store: ResultStore | None = None
    leadership: Leadership = field(default_factory=SoleLeader)

    @property
    def results(self) -> ResultStore:
        """Where answers are ingested (``GBATCH_DB``: a DuckDB file by default)."""
        if self.result_store is None:
            self.result_store = ResultsDb(self.settings.db)
        return self.result_store

    @property
    def private(self) -> tuple[Path, ...]:
        """gbatch's own files, which no manifest source may read."""
        return sources.private_paths(
            state_dir=self.settings.state_dir, db=self.settings.db, git_checkout=self.git_checkout
        )

    @property
    def retry(self) -> RetryPolicy:
        return retry_policy(self.settings)

    def backing_off(self) -> str | None:
        """Why creates wait now (a 429, an unreachable API), or None."""
        if self.clock.monotonic() < self.backoff_until:
            return self.backoff_reason or "backing off"
        return None

    def back_off(self, seconds: float, reason: str) -> None:
        self.backoff_until = max(self.backoff_until, self.clock.monotonic() + seconds)
        self.backoff_reason = reason

    def __post_init__(self) -> None:
        if self.work_dir == Path():
            self.work_dir = self.settings.state_dir

    @property
    def results_db(self) -> Path:
        return self.settings.db

    def sets_dir(self, manifest: str) -> Path:
        """Request sets of a manifest's versions (``<set digest>.parquet``)."""
        return self.work_dir / "sets" / manifest

    def jobs_dir(self) -> Path:
        """One Parquet file per job's rows, named by their digest."""
        return self.work_dir / "jobs"

    def ledger_dir(self, manifest: str) -> Path:
        """Outcome per row of each finished job (``<job id>.parquet``); always the real state."""
        return self.settings.state_dir / "ledger" / manifest

    def answers_dir(self) -> Path:
        """The answer store: one Parquet file of (request_hash, response) per batch job."""
        return self.settings.state_dir / "answers"

    def inputs_dir(self) -> Path:
        """Request JSONL written for upload; removed once the job is created."""
        return self.work_dir / "inputs"

    def results_dir(self) -> Path:
        """Downloaded result JSONL, kept until ingested."""
        return self.work_dir / "results"
