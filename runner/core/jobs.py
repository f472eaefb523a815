"""Remote batch jobs as the runner sees them: states, and what each state means next.

A value layer between the Gemini adapter (which fills :class:`RemoteJob` from the wire) and
the engine (which decides from it). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @classmethod
    def from_wire(cls, state: str) -> JobState:
        """``BATCH_STATE_X`` / ``JOB_STATE_X`` -> JobState; unknown states count as pending."""
        name = state.rsplit("_", 1)[-1].lower() if state else "pending"
        try:
            return cls(name)
        except ValueError:
            return cls.PENDING


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED})

# Most requests one job may send inline. Inline answers may come back without their metadata
# (python-genai #2008, js-genai #1191) and are then matched by position, which the docs
# promise but python-genai #1909 saw broken at 10k+ requests: stay well below that.
INLINE_MAX_REQUESTS = 1_000


@dataclass(frozen=True)
class RemoteJob:
    """One batch job on the service."""

    name: str
    display_name: str
    state: JobState
    result_file: str | None = None
    request_count: int = 0
    succeeded_count: int = 0
    failed_count: int = 0
    error: str | None = None
