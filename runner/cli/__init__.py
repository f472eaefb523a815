"""The ``gbatch`` command: parse arguments, wire settings to adapters and engine, print.

``main(argv)`` is the programmatic entry point (tests call it); it is also the one place
where gbatch errors become exit codes (``runner.cli.exits``). Commands live in ``commands``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from runner import __version__
from runner.cli import commands
from runner.cli.exits import exit_code
from runner.cli.logs import setup_logging
from runner.errors import GbatchError

EMULATOR_HELP = """\
Serves the Gemini REST surface gbatch uses, in the shapes recorded from the real API
(tests/fixtures/recorded/). Faults: --fault JSON (repeatable), or POST the same JSON to
/_emulator/faults while it runs. Fields: endpoint (files.upload, files.download,
batches.create, batches.list, batches.get, ... or *), match (text in the path; for job
faults, in the display name), times (default 1; null = always), and one of:
  status: N                  reply HTTP N without acting (429 carries RetryInfo of retry_delay_s)
  kind: "drop"               close the connection without a reply
  kind: "hang"               act, then never reply
  kind: "truncate"           files.download: send half the file
  kind: "error_body"         files.upload: HTTP 200 with an error body and no file
  job_outcome: FAILED | EXPIRED | CANCELLED | PENDING_FOREVER      (batches.create)
  fail_lines_fraction: F     that share of lines fail with gRPC code 13
  drop_inline_metadata: true inline answers come back without metadata
  inline_out_of_order: true  inline answers come back in reverse order
Example: gbatch emulator --fault '{"endpoint": "files.upload", "kind": "error_body"}'
"""


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
    p = sub.add_parser(
        "emulator",
        help="serve the local Gemini API emulator",
        description=EMULATOR_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="JSON",
        help="a fault in force from the start, as JSON (repeatable; see above)",
    )
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
        return exit_code(exc)
    except KeyboardInterrupt:
        print("gbatch: interrupted", file=sys.stderr)
        return 130
