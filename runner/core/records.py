"""The rows that cross the store ports: a manifest, a job, a cache, a table's owner, a job's
kept rows, an ingest's summary.

Values only (frozen dataclasses). Every state store (SQLite in ``runner.adapters.state``,
Postgres in ``runner.adapters.pg_state``) returns these, and every result store returns an
:class:`IngestSummary`, so the engine never sees which one it talks to. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from runner.core.clock import parse_time
from runner.core.lifecycle import JobFacts, Phase
from runner.core.manifest import Policy


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
    phase: Phase
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
    input_expires: str | None
    lookup_since: str | None
    cancel_reason: str | None
    task: str = "generate"

    def __post_init__(self) -> None:
        object.__setattr__(self, "phase", Phase(self.phase))

    def facts(self) -> JobFacts:
        """What the lifecycle's ``step`` reads of this job."""
        return JobFacts(
            phase=self.phase,
            inline=bool(self.inline),
            input_file=self.input_file,
            input_expires=_time(self.input_expires),
            submitted_at=_time(self.submitted_at),
            lookup_since=_time(self.lookup_since),
            cancel_reason=self.cancel_reason,
        )


def _time(text: str | None) -> datetime | None:
    return parse_time(text) if text else None


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

    @property
    def policy_spec(self) -> Policy:
        """The manifest's policy as recorded, with the model's own defaults (one place)."""
        return Policy.model_validate_json(self.policy or "{}")


@dataclass(frozen=True)
class CacheRow:
    name: str
    manifest: str
    digest: str
    model: str
    expire_time: str
    created_at: str
    deleted_at: str | None
    tokens: int
    cost_usd: float


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


@dataclass(frozen=True)
class IngestSummary:
    rows: int
    succeeded: int
    failed: int
    missing_keys: int
    unknown_keys: int
    cost_usd: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Owner:
    """A state's identity as the results store records it; ``state_dir`` is for messages."""

    id: str
    state_dir: str


# The columns of an event row (``State.events``), in order.
EVENT_COLUMNS = ("id", "at", "manifest", "job", "kind", "message")


def columns(
    row: type[JobRow] | type[ManifestRow] | type[CacheRow] | type[TableOwner] | type[KeptRows],
) -> str:
    """The row's columns in order, for a ``select`` that builds it positionally."""
    return ", ".join(f.name for f in fields(row))
