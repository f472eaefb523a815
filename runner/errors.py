"""The exception tree of gbatch; every module raises these, the CLI maps them to exit codes.

Branches are chosen by what the caller does next::

    GbatchError                      root; never raised itself
    ├── ManifestError                bad user input: fix the manifest (carries file:line:col)
    │   └── ManifestErrors           several ManifestError found in one pass
    ├── BackendError                 the Gemini API refused or failed
    │   ├── TransientBackendError    retry after ``delay`` seconds (429, 5xx, timeouts)
    │   │   └── UnclearCreateError   a create may or may not have happened: adopt by listing
    │   └── PermanentBackendError    do not retry (4xx other than 408/429)
    │       └── ResultsMismatchError answers that cannot be matched to requests: raw kept
    ├── UsageError                   bad arguments found while running: fix the command line
    │   ├── ListenError              a server cannot listen there (port taken, no such address)
    │   └── DataFileError            a data file is not readable CSV, JSONL or Parquet
    ├── StoreError                   the state or results database failed
    │   └── StoreBusyError           another process holds the database: retry later
    └── LockedError                  another gbatch process owns the state database, or
                                     another state writes the results file

Foreign exceptions (google.genai.errors, duckdb.Error) are translated into this tree in the
adapter that owns the library, never further up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class GbatchError(Exception):
    """Root of every error gbatch raises on purpose."""


@dataclass(frozen=True)
class Location:
    """Where in a manifest file a problem is; line and column are 1-based, 0 when unknown."""

    path: Path
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.path}:{self.line}:{self.column or 1}"
        return str(self.path)


class ManifestError(GbatchError):
    """A manifest is unusable; the message names the file, line, column and field."""

    def __init__(self, message: str, *, location: Location | None = None, field: str = "") -> None:
        self.location = location
        self.field = field
        self.reason = message
        prefix = f"{location}: " if location else ""
        where = f"{field}: " if field else ""
        super().__init__(f"{prefix}{where}{message}")


class ManifestErrors(ManifestError):
    """Every problem found in one validation pass, reported together."""

    def __init__(self, errors: list[ManifestError]) -> None:
        self.errors = errors
        Exception.__init__(self, "\n".join(str(e) for e in errors))
        self.location = errors[0].location if errors else None
        self.field = ""
        self.reason = str(self)


class BackendError(GbatchError):
    """The Gemini API (or a compatible server) failed a call."""

    def __init__(self, message: str, *, code: int = 0, status: str = "") -> None:
        self.code = code
        self.status = status
        super().__init__(message)


class TransientBackendError(BackendError):
    """Worth retrying after ``delay`` seconds (429 with RetryInfo, 5xx, timeouts)."""

    def __init__(
        self, message: str, *, code: int = 0, status: str = "", delay: float | None = None
    ):
        super().__init__(message, code=code, status=status)
        self.delay = delay  # the server's RetryInfo, if it named one; else the policy decides


class UnclearCreateError(TransientBackendError):
    """A batch create timed out or failed with 5xx: the job may exist. Find it before retrying."""


class PermanentBackendError(BackendError):
    """Retrying the same call will fail the same way (bad request, not found, forbidden)."""


class ResultsMismatchError(PermanentBackendError):
    """A job's answers cannot be matched to its requests (inline answers without keys, in
    another number than were sent). They were paid for, so their requests must not be sent
    again as if unanswered: the raw output is kept at ``raw_path`` for a person to look at.
    """

    def __init__(self, message: str, *, raw_path: Path) -> None:
        super().__init__(message, status="RESULTS_MISMATCH")
        self.raw_path = raw_path


class UsageError(GbatchError):
    """Bad arguments found while running (a port in use, a git branch that does not exist):
    exit 2, as click's own usage errors."""


class ListenError(UsageError):
    """The HTTP server cannot listen where it was asked (the port is taken, no such address)."""


class DataFileError(UsageError):
    """The file is not a readable CSV, JSONL or Parquet file."""


class StoreError(GbatchError):
    """The state or results database could not be read or written."""


class StoreBusyError(StoreError):
    """Another process holds the database file (DuckDB allows one writer); retry later."""


class LockedError(GbatchError):
    """Another gbatch process already owns this state directory."""


class NotLeaderError(LockedError):
    """This process does not (or no longer) lead the shared state: its write was refused
    (fencing). A daemon stands by again; a command exits as for any LockedError."""
