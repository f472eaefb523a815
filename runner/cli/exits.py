"""Exit codes: the one table, and the one function that turns an error into a code.

Called by ``runner.cli.main`` (errors) and the commands (outcomes). README "Exit codes" lists
the same table; a test pins the two together.
"""

from __future__ import annotations

from runner.errors import (
    BackendError,
    GbatchError,
    LockedError,
    ManifestError,
    StoreError,
    UsageError,
)

__all__ = ["EXIT_CODES", "UsageError", "exit_code"]

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran, but work failed (jobs failed, rows failed, blocked)
EXIT_USAGE = 2  # bad arguments or bad manifests
EXIT_BACKEND = 3  # the API refused or could not be reached
EXIT_STORE = 4  # the state or results database failed
EXIT_LOCKED = 5  # another gbatch owns the state directory (or the results file)


EXIT_CODES: tuple[tuple[type[GbatchError], int], ...] = (
    (ManifestError, EXIT_USAGE),
    (UsageError, EXIT_USAGE),
    (BackendError, EXIT_BACKEND),
    (StoreError, EXIT_STORE),
    (LockedError, EXIT_LOCKED),
)


def exit_code(error: GbatchError) -> int:
    for kind, code in EXIT_CODES:
        if isinstance(error, kind):
            return code
    return EXIT_FAILED
