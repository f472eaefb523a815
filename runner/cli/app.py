"""The ``gbatch`` command line on click: every command, option, default and example.

Parsing only: each command turns its options into a call of ``runner.cli.commands`` (or
``serve``) and returns that call's Outcome; ``runner.cli.invoke`` runs this group and maps
errors to exit codes. Options may come anywhere after the command (``gbatch apply manifests
--wait -v``); ``--log-format`` and ``-v`` are accepted before the command too. Bad arguments
exit 2 with the usage line. ``gbatch completion bash|zsh|fish`` prints a completion script.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.shell_completion import get_completion_class

from runner import __version__
from runner.cli import commands, serve
from runner.cli.commands import Outcome
from runner.cli.logs import setup_logging
from runner.cli.wiring import CliSettings, load_settings, secrets

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT = {
    "help_option_names": ["-h", "--help"],
    "show_default": True,
    "max_content_width": 100,
}
PATHS = click.argument(
    "paths", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="PATH..."
)
OUTPUT = click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    help="json: one document of the schema in docs/cli-output.schema.json",
)
SELECTOR = click.option(
    "-l",
    "--selector",
    "selectors",
    multiple=True,
    metavar="LABEL=VALUE",
    help="only manifests whose metadata.labels match (repeatable; a,b = both; != excludes)",
)

EMULATOR_HELP = """\
Serve the local Gemini API emulator.

Serves the Gemini REST surface gbatch uses, in the shapes recorded from the real API
(tests/fixtures/recorded/). Faults: --fault JSON (repeatable), or POST the same JSON to
/_emulator/faults while it runs. Fields: endpoint (files.upload, files.download,
batches.create, batches.list, batches.get, ... or *), match (text in the path; for job
faults, in the display name), times (default 1; null = always), and one of:

\b
  status: N                  reply HTTP N without acting (429 carries RetryInfo of retry_delay_s)
  kind: "drop"               close the connection without a reply
  kind: "hang"               act, then never reply
  kind: "truncate"           files.download: send half the file
  kind: "error_body"         files.upload: HTTP 200 with an error body and no file
  job_outcome: FAILED | EXPIRED | CANCELLED | PENDING_FOREVER      (batches.create)
  fail_lines_fraction: F     that share of lines fail with gRPC code 13
  drop_inline_metadata: true inline answers come back without metadata
  inline_out_of_order: true  inline answers come back in reverse order

\b
Example:
  gbatch emulator --port 8765 --fault '{"endpoint": "files.upload", "kind": "error_body"}'
  GOOGLE_GEMINI_BASE_URL=http://127.0.0.1:8765 GEMINI_API_KEY=any gbatch apply manifests --wait
"""


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Keep a global option's value wherever it was written (before or after the command)."""
    if value not in (None, False):
        ctx.ensure_object(dict)[param.name or ""] = value
    return value


def common(function: F) -> F:
    """The options every command takes too: --log-format, -v."""
    function = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default=None,
        expose_value=False,
        callback=_remember,
        help="json: every log line one JSON object [default: GBATCH_LOG_FORMAT or text]",
        show_default=False,
    )(function)
    return click.option(
        "-v",
        "--verbose",
        is_flag=True,
        expose_value=False,
        callback=_remember,
        help="log debug detail",
    )(function)


def start(ctx: click.Context) -> CliSettings:
    """Settings and logging, once every option is known."""
    obj = ctx.ensure_object(dict)
    obj["command"] = ctx.info_name
    settings = load_settings(log_format=obj.get("log_format"))
    setup_logging(
        log_format=settings.log_format,
        verbose=bool(obj.get("verbose")),
        secrets=secrets(settings),
    )
    return settings


@click.group(
    context_settings=CONTEXT,
    epilog="Docs: README.md (Using it). Exit codes: 0 ok, "
    "1 work failed or blocked, 2 bad manifest or arguments, 3 API error, 4 database "
    "error, 5 another gbatch owns the state directory.",
)
@click.version_option(__version__, "--version", prog_name="gbatch", message="%(prog)s %(version)s")
@common
def cli() -> None:
    """Declarative runner for the Gemini Batch API: manifests in, DuckDB tables out."""


@cli.command(epilog="\b\nExamples:\n  gbatch validate manifests/\n  gbatch validate a.yaml -o json")
@PATHS
@OUTPUT
@common
@click.pass_context
def validate(ctx: click.Context, paths: tuple[Path, ...], output: str) -> Outcome:
    """Check manifests and their data; file:line:col errors (exit 2 when any)."""
    return commands.cmd_validate(start(ctx), paths=paths, output=output)


@cli.command(
    epilog="\b\nExamples:\n  gbatch plan manifests/\n  gbatch plan manifests/ -l team=catalog "
    "-o json\n  gbatch plan manifests/ --no-count-tokens      # CI: no API key needed"
)
@PATHS
@SELECTOR
@click.option(
    "--count-tokens/--no-count-tokens",
    default=True,
    help="count input tokens with the API's countTokens (needs a key) or estimate locally",
)
@OUTPUT
@common
@click.pass_context
def plan(
    ctx: click.Context,
    paths: tuple[Path, ...],
    selectors: tuple[str, ...],
    count_tokens: bool,
    output: str,
) -> Outcome:
    """What apply would submit, with estimates: new / changed / unchanged / removed, jobs,
    tokens and cost at batch price. Changes nothing."""
    return commands.cmd_plan(
        start(ctx), paths=paths, selectors=selectors, count_tokens=count_tokens, output=output
    )


@cli.command(
    epilog="\b\nExamples:\n  gbatch apply manifests/ --wait\n  gbatch apply manifests/ --prune"
    "              # also remove manifests deleted from the folder\n  gbatch apply m.yaml --yes "
    "--confirm-above 50"
)
@PATHS
@SELECTOR
@click.option("--wait", is_flag=True, help="block until every job is finished and ingested")
@click.option("-y", "--yes", is_flag=True, help="do not ask, whatever the estimate")
@click.option(
    "--confirm-above",
    type=click.FloatRange(min=0),
    default=10.0,
    metavar="USD",
    help="on a terminal, ask first when the plan's estimate is above this many dollars",
)
@click.option(
    "--prune",
    is_flag=True,
    help="remove manifests applied from DIR before and no longer in it (results are kept)",
)
@click.option(
    "--confirm-deletions",
    is_flag=True,
    help="with --prune: allow half or more of the folder's manifests to go at once",
)
@common
@click.pass_context
def apply(
    ctx: click.Context,
    paths: tuple[Path, ...],
    selectors: tuple[str, ...],
    wait: bool,
    yes: bool,
    confirm_above: float,
    prune: bool,
    confirm_deletions: bool,
) -> Outcome:
    """Reconcile once: submit what the manifests need (prints the plan first)."""
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    return commands.cmd_apply(
        start(ctx),
        paths=paths,
        selectors=selectors,
        wait=wait,
        yes=yes,
        confirm_above=confirm_above,
        prune=prune,
        confirm_deletions=confirm_deletions,
        ask=(lambda question: click.confirm(question, default=False)) if interactive else None,
    )


@cli.command(
    epilog="\b\nExamples:\n  gbatch diff manifests/\n  gbatch diff product-copy.yaml --limit 50 "
    "-o json"
)
@PATHS
@SELECTOR
@click.option(
    "--limit", type=click.IntRange(min=0), default=20, help="keys listed per kind of change"
)
@OUTPUT
@common
@click.pass_context
def diff(
    ctx: click.Context,
    paths: tuple[Path, ...],
    selectors: tuple[str, ...],
    limit: int,
    output: str,
) -> Outcome:
    """Per manifest, the keys that are new / changed / removed against the applied version,
    and for a changed key which parts changed (prompt, system, generation, schema, tools,
    cache, model). No API key needed; changes nothing."""
    return commands.cmd_diff(
        start(ctx), paths=paths, selectors=selectors, limit=limit, output=output
    )


@cli.command(
    epilog="\b\nExamples:\n  gbatch watch manifests/ --metrics-port 9464   # page at "
    "http://127.0.0.1:9464/\n  gbatch watch --git URL --path jobs/ --branch main --interval 60s"
)
@click.argument("directory", required=False, type=click.Path(path_type=Path), metavar="[DIR]")
@click.option("--git", "git_url", metavar="URL_OR_PATH", help="follow a git repository instead")
@click.option("--branch", help="the branch to follow  [default: the remote's HEAD]")
@click.option("--path", default=".", help="manifest folder inside the repository")
@click.option("--interval", default="60s", help="how often to fetch the repository")
@click.option(
    "--poll", is_flag=True, help="poll the file system (network mounts, containers), not inotify"
)
@click.option("--resync", default="5m", help="full reconcile at least this often")
@click.option("--settle", default="30s", help="how long a manifest must stay gone to be deleted")
@click.option(
    "--confirm-deletions",
    is_flag=True,
    help="allow many manifests to vanish at once (the guard holds them otherwise)",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="serve /metrics, /healthz and the status page / on this port (0: a free one)",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    help="address for --metrics-port (off loopback the page needs GBATCH_UI_TOKEN)",
)
@SELECTOR
@common
@click.pass_context
def watch(ctx: click.Context, **options: Any) -> Outcome:
    """The daemon: reconcile on every change and on a timer until stopped."""
    return serve.cmd_watch(start(ctx), **options)


@cli.command(
    epilog="\b\nExamples:\n  gbatch status\n  gbatch status --jobs -o json\n  gbatch status "
    "-l team=catalog"
)
@SELECTOR
@click.option("--jobs", is_flag=True, help="list every job too")
@OUTPUT
@common
@click.pass_context
def status(ctx: click.Context, selectors: tuple[str, ...], jobs: bool, output: str) -> Outcome:
    """Manifests, their jobs, states, counts, cost, last error."""
    return commands.cmd_status(start(ctx), selectors=selectors, jobs=jobs, output=output)


@cli.command(
    epilog="\b\nExamples:\n  gbatch events\n  gbatch events product-copy --follow\n  gbatch "
    "events -o json --limit 0 --follow    # new events only, one JSON object a line"
)
@click.argument("manifest", required=False)
@click.option("-f", "--follow", is_flag=True, help="keep printing new events until Ctrl-C")
@click.option(
    "--limit", type=click.IntRange(min=0), default=100, help="the newest events shown first"
)
@OUTPUT
@common
@click.pass_context
def events(
    ctx: click.Context, manifest: str | None, follow: bool, limit: int, output: str
) -> Outcome:
    """The event log (versions, jobs created, cancelled, ingested, errors), oldest first."""
    return commands.cmd_events(
        start(ctx), manifest=manifest, follow=follow, limit=limit, output=output
    )


@cli.command(epilog="\b\nExample:\n  gbatch cancel product-copy")
@click.argument("manifest")
@common
@click.pass_context
def cancel(ctx: click.Context, manifest: str) -> Outcome:
    """Cancel a manifest's running jobs. What they answered is still ingested; the next
    apply sends the rest again unless the manifest is removed."""
    return commands.cmd_cancel(start(ctx), manifest=manifest)


@cli.command(
    epilog='\b\nExamples:\n  gbatch query "select key, text from seed_requests"\n  gbatch '
    'query "select * from gbatch_jobs" --format csv'
)
@click.argument("sql")
@click.option(
    "-o", "--format", "output_format", type=click.Choice(["table", "csv", "json"]), default="table"
)
@common
@click.pass_context
def query(ctx: click.Context, sql: str, output_format: str) -> Outcome:
    """Run read-only SQL over the results and the gbatch_* bookkeeping tables."""
    return commands.cmd_query(start(ctx), sql=sql, output_format=output_format)


@cli.command(epilog="\b\nExample:\n  gbatch schema > gbatch.schema.json")
@common
@click.pass_context
def schema(ctx: click.Context) -> Outcome:
    """Print the manifest JSON Schema (for editors)."""
    return commands.cmd_schema(start(ctx))


@cli.command(
    epilog="\b\nExamples:\n  gbatch init data/products.csv            # writes data/products."
    "yaml\n  gbatch init data/batch_requests.jsonl     # ready request lines: three-line manifest"
    "\n  gbatch init data/rows.parquet --key id --out manifests/rows.yaml"
)
@click.argument("data_file", type=click.Path(path_type=Path), metavar="CSV|JSONL|PARQUET")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="where to write the manifest  [default: the data file's name, .yaml]",
)
@click.option("--name", help="manifest name  [default: from the file name]")
@click.option(
    "--key", help="the column that keys each request  [default: a unique column, guessed]"
)
@click.option("--model", default="gemini-2.5-flash", help="the model to ask")
@click.option("--force", is_flag=True, help="overwrite an existing manifest")
@common
@click.pass_context
def init(
    ctx: click.Context,
    data_file: Path,
    out: Path | None,
    name: str | None,
    key: str | None,
    model: str,
    force: bool,
) -> Outcome:
    """Write a manifest for a data file (key guessed, columns listed in the template),
    validate it and print the next command."""
    return commands.cmd_init(
        start(ctx), data_file=data_file, out=out, name=name, key=key, model=model, force=force
    )


@cli.command(
    epilog="\b\nExamples:\n  gbatch rebuild                      # every table, from the state\n"
    "  gbatch rebuild --table product_copy\n"
    "  gbatch rebuild --table shared --move-to new-owner   # give a table to another manifest"
)
@click.option("--table", default=None, help="rebuild only this table (default: every table)")
@click.option(
    "--move-to",
    default=None,
    metavar="MANIFEST",
    help="first give --table to this manifest (the explicit act of moving a table)",
)
@click.option(
    "--claim",
    is_flag=True,
    help="make this state the results file's writer (its previous state is gone for good)",
)
@common
@click.pass_context
def rebuild(ctx: click.Context, table: str | None, move_to: str | None, claim: bool) -> Outcome:
    """Rewrite result tables from the state alone: no API key, no request sent."""
    return commands.cmd_rebuild(start(ctx), table=table, move_to=move_to, claim=claim)


@cli.command(help=EMULATOR_HELP)
@click.option(
    "--fault", "faults", multiple=True, metavar="JSON", help="a fault in force from the start"
)
@click.option("--host", default="127.0.0.1", help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, help="port to listen on")
@click.option("--pending-seconds", type=float, default=1.0, help="how long a job stays pending")
@click.option("--running-seconds", type=float, default=2.0, help="how long a job then runs")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="where uploads and results are kept  [default: a temporary folder]",
)
@common
@click.pass_context
def emulator(
    ctx: click.Context,
    faults: tuple[str, ...],
    host: str,
    port: int,
    pending_seconds: float,
    running_seconds: float,
    data_dir: Path | None,
) -> Outcome:
    return serve.cmd_emulator(
        start(ctx),
        faults=list(faults),
        host=host,
        port=port,
        pending_seconds=pending_seconds,
        running_seconds=running_seconds,
        data_dir=data_dir,
    )


@cli.command(
    epilog="\b\nInstall (bash):\n  gbatch completion bash > ~/.local/share/bash-completion/"
    'completions/gbatch\nzsh:  gbatch completion zsh > "${fpath[1]}/_gbatch"\nfish: gbatch '
    "completion fish > ~/.config/fish/completions/gbatch.fish"
)
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@common
def completion(shell: str) -> Outcome:
    """Print the shell completion script for gbatch (commands, options, choices, files)."""
    kind = get_completion_class(shell)
    assert kind is not None
    click.echo(kind(cli, {}, "gbatch", "_GBATCH_COMPLETE").source())
    return Outcome(0)


# What `gbatch --help` lists beside each command (the docstrings say more).
SHORT_HELP = {
    "apply": "Reconcile once: submit what the manifests need.",
    "cancel": "Cancel a manifest's running jobs.",
    "completion": "Print the shell completion script.",
    "diff": "Keys new / changed / removed against the applied version.",
    "emulator": "Serve the local Gemini API emulator.",
    "events": "The event log; --follow for new events.",
    "init": "Write a first manifest for a data file.",
    "plan": "What apply would submit, with estimates; changes nothing.",
    "query": "Run read-only SQL over the results.",
    "schema": "Print the manifest JSON Schema (for editors).",
    "status": "Manifests, jobs, states, counts, cost, last error.",
    "validate": "Check manifests and their data; file:line:col errors.",
    "watch": "The daemon: reconcile on every change and on a timer.",
}
for _name, _text in SHORT_HELP.items():
    cli.commands[_name].short_help = _text
