"""The exit codes are one table (runner/cli/exits.py); the README lists the same codes."""

from __future__ import annotations

import re
from pathlib import Path

from runner.cli import exits
from runner.errors import (
    LockedError,
    ManifestError,
    PermanentBackendError,
    StoreBusyError,
    TransientBackendError,
)


def test_every_error_branch_has_its_code() -> None:
    assert exits.exit_code(ManifestError("x")) == exits.EXIT_USAGE == 2
    assert exits.exit_code(PermanentBackendError("x")) == exits.EXIT_BACKEND == 3
    assert exits.exit_code(TransientBackendError("x")) == exits.EXIT_BACKEND
    assert exits.exit_code(StoreBusyError("x")) == exits.EXIT_STORE == 4
    assert exits.exit_code(LockedError("x")) == exits.EXIT_LOCKED == 5


def test_the_readme_lists_exactly_the_codes_of_the_table() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    (paragraph,) = re.findall(r"Exit codes \(`runner/cli/exits.py`.*?\n\n", readme, re.S)
    listed = [int(n) for n in re.findall(r"(?:^|[:,] )(\d) [a-z]", paragraph.replace("\n", " "))]
    codes = sorted(v for k, v in vars(exits).items() if k.startswith("EXIT_") and k != "EXIT_CODES")
    assert listed == codes == [0, 1, 2, 3, 4, 5]
