"""The ``gbatch`` command: the programmatic entry points and the one place errors become exit
codes (``runner.cli.exits``).

``invoke(argv)`` runs a command in this process exactly as the console script would (it
prints the same) and returns an ``Invocation``: the exit code, the error that ended it (if
any) and the command's structured result (``runner.cli.views``: the plans, the status rows,
...), so callers and tests need not parse stdout (dbt's ``dbtRunner().invoke``). ``main``
returns only the code (the console script). Parsing is ``runner.cli.app``; commands are in
``commands`` and ``serve``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click

from runner.cli import console
from runner.cli.app import cli
from runner.cli.commands import Outcome
from runner.cli.exits import EXIT_FAILED, EXIT_USAGE, exit_code
from runner.errors import GbatchError

INTERRUPTED = 130  # the shell's code for a command ended by SIGINT


@dataclass(frozen=True)
class Invocation:
    code: int
    error: BaseException | None = None
    result: Any = (
        None  # a runner.cli.views document (or commands.Applied), when the command has one
    )

    @property
    def success(self) -> bool:
        return self.code == 0


def invoke(argv: Sequence[str] | None = None) -> Invocation:
    args = list(sys.argv[1:] if argv is None else argv)
    obj: dict[str, Any] = {}
    try:
        returned = cli.main(args=args, prog_name="gbatch", standalone_mode=False, obj=obj)
    except click.ClickException as exc:  # bad arguments: exit 2 with the usage line
        exc.show()
        return Invocation(exc.exit_code if exc.exit_code else EXIT_USAGE, exc)
    except click.Abort as exc:  # Ctrl-C (click turns KeyboardInterrupt into Abort)
        console.say("gbatch: interrupted", err=True)
        return Invocation(INTERRUPTED, exc)
    except GbatchError as exc:
        logging.getLogger("gbatch").debug("failed", exc_info=True)
        command = obj.get("command")
        console.say(f"gbatch {command}: {exc}" if command else f"gbatch: {exc}", err=True)
        return Invocation(exit_code(exc), exc)
    except KeyboardInterrupt as exc:
        console.say("gbatch: interrupted", err=True)
        return Invocation(INTERRUPTED, exc)
    except SystemExit as exc:  # shell completion answers and exits
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILED if exc.code else 0
        return Invocation(code, None)
    if isinstance(returned, Outcome):
        return Invocation(returned.code, None, returned.result)
    return Invocation(int(returned or 0))  # --help, --version


def main(argv: Sequence[str] | None = None) -> int:
    return invoke(argv).code
