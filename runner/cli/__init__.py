"""The ``gbatch`` command: parse arguments, wire settings to adapters and engine, print.

``main(argv)`` is the programmatic entry point (tests call it); it is also the one place
where gbatch errors become exit codes (see EXIT_CODES). Commands live in ``commands``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from runner import __version__
from runner.cli import commands
from runner.cli.logs import setup_logging
from runner.errors import (
    BackendError,
    GbatchError,
    LockedError,
    ManifestError,
    StoreBusyError,
    StoreError,
)

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran, but work failed (jobs failed, rows failed, blocked)
EXIT_USAGE = 2  # bad arguments or bad manifests
EXIT_BACKEND = 3
EXIT_STORE = 4
EXIT_LOCKED = 5

EXIT_CODES: tuple[tuple[type[GbatchError], int], ...] = (
    (ManifestError, EXIT_USAGE),
    (BackendError, EXIT_BACKEND),
    (StoreBusyError, EXIT_STORE),
    (StoreError, EXIT_STORE),
    (LockedError, EXIT_LOCKED),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gbatch", description="Declarative runner for the Gemini Batch API."
    )
    parser.add_argument("--version", action="version", version=f"gbatch {__version__}")
    parser.add_argument("--log-format", choices=["text", "json"], default=None)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def paths(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "paths",
            nargs="+",
            type=Path,
            metavar="PATH",
            help="manifest files or directories of them",
        )

    p = sub.add_parser("validate", help="check manifests and their data; file:line:col errors")
    paths(p)
    p = sub.add_parser("plan", help="what apply would submit, with estimates; changes nothing")
    paths(p)
    p.add_argument(
        "--no-count-tokens",
        action="store_true",
        help="estimate tokens locally instead of calling countTokens",
    )
    p = sub.add_parser("apply", help="reconcile once: submit what the manifests need")
    paths(p)
    p.add_argument(
        "--wait",
        action="store_true",
        help="block until every job is finished and ingested, showing progress",
    )
    p = sub.add_parser("watch", help="the daemon: reconcile on every change and on a timer")
    p.add_argument("dir", nargs="?", type=Path, help="the manifest directory to watch")
    p.add_argument("--git", metavar="URL_OR_PATH", help="follow a git repository instead")
    p.add_argument("--branch", help="the branch to follow (default: the remote's HEAD)")
    p.add_argument("--path", default=".", help="manifest folder inside the repository")
    p.add_argument("--interval", default="60s", help="how often to fetch the repository")
    p.add_argument(
        "--poll",
        action="store_true",
        help="poll the file system (network mounts, containers) instead of inotify",
    )
    p.add_argument("--resync", default="5m", help="full reconcile at least this often")
    p.add_argument(
        "--settle",
        default="30s",
        help="how long a manifest must stay gone before it counts as deleted",
    )
    p.add_argument(
        "--confirm-deletions",
        action="store_true",
        help="allow many manifests to vanish at once (the guard holds them otherwise)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus /metrics and /healthz on this port (0 picks a free one)",
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    p = sub.add_parser("status", help="manifests, jobs, states, counts, cost, last error")
    p.add_argument("--jobs", action="store_true", help="list every job too")
    p = sub.add_parser(
        "rebuild",
        help="rewrite result tables from the state (no request sent); move a table; claim",
    )
    p.add_argument("--table", help="only this table (default: every table the state knows)")
    p.add_argument(
        "--move-to",
        metavar="MANIFEST",
        help="give --table to this manifest first (the explicit act of moving a table)",
    )
    p.add_argument(
        "--claim",
        action="store_true",
        help="make this state the results file's writer (its previous state is gone for good)",
    )
    p = sub.add_parser("query", help="run read-only SQL over the results")
    p.add_argument("sql")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p = sub.add_parser("schema", help="print the manifest JSON Schema (for editors)")
    p = sub.add_parser("emulator", help="serve the local Gemini API emulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--pending-seconds", type=float, default=1.0)
    p.add_argument("--running-seconds", type=float, default=2.0)
    p.add_argument("--data-dir", type=Path, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = commands.load_settings(args)
        setup_logging(settings, verbose=args.verbose)
        return int(commands.COMMANDS[args.command](args, settings))
    except GbatchError as exc:
        logging.getLogger("gbatch").debug("failed", exc_info=True)
        print(f"gbatch {args.command}: {exc}", file=sys.stderr)
        for kind, code in EXIT_CODES:
            if isinstance(exc, kind):
                return code
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("gbatch: interrupted", file=sys.stderr)
        return 130
