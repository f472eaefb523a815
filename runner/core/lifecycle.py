"""The job lifecycle: phases, the legal moves between them, and what to do next. Pure.

A job is one intent to run a set of requests as one remote batch job. Its local phase::

    planned ──upload──▶ uploaded ──create──▶ submitting ──created/adopted──▶ submitted
       ▲  │                │  ▲                  │                              │
       │  └─(inline)───────┘  └──clear refusal───┘                     terminal remote
       └──────── input file too close to expiry / gone ◀────────┘            │
                                                                              ▼
    ingested ◀──ingest── downloaded ◀───────────── download (results, or error lines)
    abandoned: superseded, removed, or refused for good (from planned / uploaded)

``step(job, remote, now=, policy=)`` is the one decision: given what the state says about a
job and what the service says about its remote job, the next :data:`Action`. It never does
anything; ``runner.engine.lifecycle`` applies the action and records the move through
:func:`check_move`. ``admit`` is the admission rule (job limit, token budget, back-off).
Called by the engine's lifecycle module; tests call it directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from runner.core.jobs import JobState, RemoteJob


class Phase(StrEnum):
    PLANNED = "planned"
    UPLOADED = "uploaded"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    DOWNLOADED = "downloaded"
    INGESTED = "ingested"
    ABANDONED = "abandoned"

    @property
    def live(self) -> bool:
        return self not in (Phase.INGESTED, Phase.ABANDONED)


LIVE_PHASES = tuple(p for p in Phase if p.live)
TO_SUBMIT = (Phase.PLANNED, Phase.UPLOADED, Phase.SUBMITTING)

# Every legal move. A reuse job (answers copied locally) goes planned -> downloaded.
MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.PLANNED: frozenset({Phase.UPLOADED, Phase.DOWNLOADED, Phase.ABANDONED}),
    Phase.UPLOADED: frozenset({Phase.PLANNED, Phase.SUBMITTING, Phase.ABANDONED}),
    Phase.SUBMITTING: frozenset({Phase.SUBMITTED, Phase.UPLOADED, Phase.PLANNED}),
    Phase.SUBMITTED: frozenset({Phase.DOWNLOADED}),
    Phase.DOWNLOADED: frozenset({Phase.INGESTED}),
    Phase.INGESTED: frozenset(),
    Phase.ABANDONED: frozenset(),
}


class IllegalMove(Exception):
    """A programming error: the engine tried a move the lifecycle does not have."""


def check_move(old: Phase, new: Phase) -> None:
    if new != old and new not in MOVES[old]:
        raise IllegalMove(f"a job cannot go from {old} to {new}")


@dataclass(frozen=True)
class LifecyclePolicy:
    """The time rules of the lifecycle, from settings and the manifest's policy."""

    deadline_s: float = 36 * 3600  # pending or running longer: cancel, keep what came back
    adopt_grace_s: float = 300.0  # a lost create is looked for this long before creating again
    file_min_life_s: float = 25 * 3600  # an input must outlive a day in the queue


@dataclass(frozen=True)
class JobFacts:
    """What the state knows of one job, as ``step`` needs it."""

    phase: Phase
    inline: bool = False
    input_file: str | None = None
    input_expires: datetime | None = None
    submitted_at: datetime | None = None
    lookup_since: datetime | None = None  # first listing that did not find a lost create
    cancel_reason: str | None = None  # a cancel was sent already


# -- actions: what the engine should do next ---------------------------------------------
@dataclass(frozen=True)
class Upload:
    """Write the request JSONL and upload it (or keep it for an inline create)."""


@dataclass(frozen=True)
class Reupload:
    reason: str


@dataclass(frozen=True)
class Create:
    """Send the create (never blindly retried: an unclear outcome leads to ``submitting``)."""


@dataclass(frozen=True)
class Adopt:
    remote: RemoteJob


@dataclass(frozen=True)
class KeepLooking:
    """A lost create not found yet: record since when, and create only after the grace."""

    since: datetime
    until: datetime


@dataclass(frozen=True)
class Cancel:
    reason: str


@dataclass(frozen=True)
class Download:
    """The remote job ended: fetch what it produced; keys without a line become errors."""

    remote: RemoteJob


@dataclass(frozen=True)
class Ingest:
    pass


@dataclass(frozen=True)
class Wait:
    reason: str = ""


Action = Upload | Reupload | Create | Adopt | KeepLooking | Cancel | Download | Ingest | Wait


def step(
    job: JobFacts, remote: RemoteJob | None, *, now: datetime, policy: LifecyclePolicy
) -> Action:
    """The next thing to do for ``job``; ``remote`` is the service's view (None: unknown).

    For a ``submitting`` job ``remote`` is the result of looking for it by display name.
    """
    if job.phase is Phase.PLANNED:
        return Upload()
    if job.phase is Phase.UPLOADED:
        if not job.inline and _expiring(job, now, policy):
            return Reupload(
                f"input file {job.input_file} expires {job.input_expires:%Y-%m-%d %H:%M} UTC, "
                "too soon for a job that may wait a day in the queue"
            )
        return Create()
    if job.phase is Phase.SUBMITTING:
        if remote is not None:
            return Adopt(remote)
        since = job.lookup_since or now
        until = since + timedelta(seconds=policy.adopt_grace_s)
        if now < until:
            return KeepLooking(since=since, until=until)
        if not job.inline and _expiring(job, now, policy):
            return Reupload("the lost create was never found and its input is expiring")
        return Create()
    if job.phase is Phase.SUBMITTED:
        if remote is None:
            return Wait("the service has not reported this job yet")
        if remote.state.terminal:
            return Download(remote)
        age = (now - job.submitted_at).total_seconds() if job.submitted_at else 0.0
        if job.cancel_reason is None and age > policy.deadline_s:
            return Cancel(
                f"deadline: still {remote.state.value} after {age:.0f}s "
                f"(policy.deadline {policy.deadline_s:.0f}s)"
            )
        return Wait(f"remote {remote.state.value}")
    if job.phase is Phase.DOWNLOADED:
        return Ingest()
    return Wait()


def _expiring(job: JobFacts, now: datetime, policy: LifecyclePolicy) -> bool:
    """An uploaded input with less life left than a job may spend in the queue."""
    if job.input_file is None:
        return False
    if job.input_expires is None:
        return False  # an upload from before expirations were recorded: the create will tell
    return (job.input_expires - now).total_seconds() < policy.file_min_life_s


@dataclass(frozen=True)
class Limits:
    max_concurrent_jobs: int
    enqueued_tokens: dict[str, int]


def admit(
    *,
    model: str,
    tokens: int,
    in_flight: int,
    enqueued: dict[str, int],
    limits: Limits,
    backoff: str | None,
) -> str | None:
    """Why a job must wait before it is created (None: it may go now).

    ``backoff`` is the reason the API gave for backing off, while that lasts.
    """
    if backoff is not None:
        return f"queued: {backoff}"
    if in_flight >= limits.max_concurrent_jobs:
        return f"queued: {in_flight} jobs in flight (limit {limits.max_concurrent_jobs})"
    budget = limits.enqueued_tokens.get(model)
    waiting = enqueued.get(model, 0)
    if budget is not None and waiting and waiting + tokens > budget:
        return (
            f"queued: {waiting:,} + {tokens:,} tokens would pass the enqueued-token budget of "
            f"{model} ({budget:,})"
        )
    return None


def terminal_outcome(state: JobState) -> str:
    """The status string written on the error lines of keys a finished job did not answer."""
    return f"JOB_{state.value.upper()}"
