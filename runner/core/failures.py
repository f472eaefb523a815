"""Which failures are worth retrying: the one classifier of error codes and status strings.

A failed API call carries an HTTP code and a status string; a failed result line carries a
``google.rpc.Status`` whose ``code`` is a gRPC code, often with no status string; the lines
gbatch writes itself for a job that ended without answers carry ``code`` 0 and a status of
its own (``JOB_FAILED``...). One integer field is enough to tell the two code spaces apart:
gRPC codes are 0..16 and HTTP codes 100..599, so a code below 100 is read as gRPC. A known
status string wins over the code.

Pure. Called by the Gemini adapter (``_translate``: API errors) and by the ledger, whose SQL
for a line's ``retryable`` is generated from the tables below, so both say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

# google.rpc.Code values the same request will hit again, and their canonical names.
PERMANENT_GRPC: dict[int, str] = {
    3: "INVALID_ARGUMENT",
    5: "NOT_FOUND",
    7: "PERMISSION_DENIED",
    9: "FAILED_PRECONDITION",
    16: "UNAUTHENTICATED",
}
# google.rpc.Code values of a moment: overload, quota, timeouts, server faults.
TRANSIENT_GRPC: dict[int, str] = {
    4: "DEADLINE_EXCEEDED",
    8: "RESOURCE_EXHAUSTED",
    10: "ABORTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
}
# Statuses gbatch gives failures that no server named (with code 0): a job that ended
# without answering (JOB_*, written by the engine per line), a call that timed out, could not
# connect or lost its connection or got a reply that is not JSON, an upload whose final reply
# was an error body. Each may go well the next time.
GBATCH_TRANSIENT_STATUSES = frozenset(
    {
        "JOB_FAILED",
        "JOB_EXPIRED",
        "JOB_CANCELLED",
        "TIMEOUT",
        "CONNECTION",
        "TRANSPORT",
        "BAD_REPLY",
        "UPLOAD_FAILED",
    }
)
# And those that will not: an exception nothing here knows (a bug, or an SDK that changed:
# retrying would hide it), answers that cannot be matched to their requests (paid for: a
# retry would pay again).
GBATCH_PERMANENT_STATUSES = frozenset({"UNEXPECTED", "RESULTS_MISMATCH"})
PERMANENT_STATUSES = frozenset(PERMANENT_GRPC.values()) | GBATCH_PERMANENT_STATUSES
TRANSIENT_STATUSES = frozenset(TRANSIENT_GRPC.values()) | GBATCH_TRANSIENT_STATUSES
# HTTP: every 4xx is the caller's fault except these two; every 5xx is the server's.
PERMANENT_HTTP = range(400, 500)
TRANSIENT_HTTP_4XX = frozenset({408, 429})
HTTP_MIN = 100  # codes below are gRPC


@dataclass(frozen=True)
class Verdict:
    """Whether to retry, and the rule that decided (for messages and tests)."""

    retryable: bool
    reason: str


def classify(*, code: int | None = None, status: str | None = None) -> Verdict:
    """Transient or permanent, from a gRPC or HTTP ``code`` and/or a ``status`` string.

    Anything not known to be permanent is retryable: a retry is bounded by
    ``policy.retries``, while calling a passing fault permanent would drop the row for good.
    Unknown status strings are ignored (the code decides); so are unknown gRPC codes such as
    2 UNKNOWN, for the same reason.
    """
    if status in PERMANENT_STATUSES:
        return Verdict(False, f"status {status}")
    if status in TRANSIENT_STATUSES:
        return Verdict(True, f"status {status}")
    if code is None:
        return Verdict(True, "no code")
    if code < HTTP_MIN:
        if code in PERMANENT_GRPC:
            return Verdict(False, f"gRPC {code} {PERMANENT_GRPC[code]}")
        name = TRANSIENT_GRPC.get(code, "not known to be permanent")
        return Verdict(True, f"gRPC {code} {name}")
    if code in PERMANENT_HTTP and code not in TRANSIENT_HTTP_4XX:
        return Verdict(False, f"HTTP {code}")
    return Verdict(True, f"HTTP {code}")


@dataclass(frozen=True)
class RetryPolicy:
    """How often an idempotent call is tried again, and how long to wait: the one policy.

    Its numbers come from settings (``read_attempts``, ``retry_delay_s``, ``max_backoff_s``);
    the adapter retries reads with it and the engine backs off creates with it.
    """

    attempts: int = 5
    first_delay_s: float = 2.0
    max_delay_s: float = 300.0

    def wait(self, attempt: int, *, hinted: float | None = None) -> float:
        """Seconds before try ``attempt + 1``: the server's RetryInfo if it gave one, else
        the first delay times the attempt; never more than the cap."""
        base = hinted if hinted is not None else self.first_delay_s * attempt
        return min(base, self.max_delay_s)
