"""The long-running commands: ``watch`` (the daemon, its metrics and status page) and
``emulator``. Both check what they can before serving: a port already taken, a git
repository or branch that does not exist, a page bound off loopback without a token, each
fail at start with exit 2 and a sentence, not a traceback later. Called by ``runner.cli.app``.
"""

from __future__ import annotations

import errno
import signal
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runner.adapters.gitrepo import GitCheckout
from runner.adapters.metrics import ListenError, MetricsServer
from runner.adapters.webui import StatusPage
from runner.cli import commands
from runner.cli.commands import Outcome
from runner.cli.exits import EXIT_OK, UsageError
from runner.cli.logs import log, note
from runner.cli.wiring import CliSettings, process_lock, runtime, selector, state_of
from runner.core.durations import parse_duration
from runner.core.paths import confine
from runner.engine.daemon import Daemon, DaemonOptions
from runner.errors import GbatchError

PAGE_ROWS = 200  # the page's SQL box returns at most this many rows


def _seconds(text: str, option: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _checkout(settings: CliSettings, url: str, branch: str | None) -> GitCheckout:
    """The checkout, synced once now: a wrong URL or branch fails here, at start."""
    git = GitCheckout(url, workdir=settings.state_dir / "checkout", branch=branch)
    try:
        git.sync()
    except GbatchError as exc:
        what = f"branch {branch!r} of {url}" if branch else url
        raise UsageError(f"--git: cannot follow {what}: {exc}") from None
    return git


def cmd_watch(
    settings: CliSettings,
    *,
    directory: Path | None,
    git_url: str | None,
    branch: str | None,
    path: str,
    interval: str,
    poll: bool,
    resync: str,
    settle: str,
    confirm_deletions: bool,
    metrics_port: int | None,
    metrics_host: str,
    selectors: Sequence[str] = (),
) -> Outcome:
    if (directory is None) == (git_url is None):
        raise UsageError("watch needs a directory or --git URL_OR_PATH (one of them)")
    options: dict[str, Any] = {
        "poll_files": poll,
        "resync_s": _seconds(resync, "--resync"),
        "settle_s": _seconds(settle, "--settle"),
        "confirm_deletions": confirm_deletions,
        "git_interval_s": _seconds(interval, "--interval"),
        "selector": selector(selectors) or None,
    }
    with process_lock(settings):
        git = None
        if git_url is not None:
            git = _checkout(settings, git_url, branch)
            root = confine(path, base_dir=git.path, root=git.path)
        else:
            assert directory is not None
            root = directory.resolve()
            if not root.is_dir():
                raise UsageError(f"{directory} is not a directory")
        with runtime(settings) as rt:
            daemon = Daemon(rt, DaemonOptions(root=root, git=git, **options))
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: daemon.stop.set())
            metrics = None
            if metrics_port is not None:
                metrics = _serve_http(settings, rt, daemon, host=metrics_host, port=metrics_port)
            note(f"gbatch watch: {git.url if git else root} (Ctrl-C stops)", event="startup")
            try:
                return Outcome(daemon.run())
            finally:
                if metrics is not None:
                    metrics.stop()


def _summary(settings: CliSettings) -> dict[str, list[tuple[Any, ...]]]:
    """The state's aggregates for one scrape, through a state opened for it."""
    with state_of(settings) as state:
        return state.summary()


def _serve_http(
    settings: CliSettings, rt: Any, daemon: Daemon, *, host: str, port: int
) -> MetricsServer:
    token = settings.ui_token.get_secret_value() if settings.ui_token else None
    page = StatusPage(
        status=lambda: commands.page_status(settings),
        query=lambda sql, rows: commands.query_results(settings, sql, max_rows=rows),
        bound_host=host,
        token=token,
        row_limit=PAGE_ROWS,
    )
    try:
        metrics = MetricsServer(
            summary=lambda: _summary(settings),
            api_errors=rt.backend.api_errors,
            checks=daemon.health_problems,
            host=host,
            port=port,
            page=page,
        ).start()
    except ListenError as exc:
        raise UsageError(f"--metrics-port: {exc}") from None
    daemon.observe_reconcile = metrics.observe_reconcile
    base = f"http://{host}:{metrics.port}"
    note(f"metrics: {base}/metrics", event="startup")
    if page.refusal:
        log.warning("%s", page.refusal)
    else:
        note(f"status page: {base}/" + ("?token=..." if token else ""), event="startup")
    return metrics


def cmd_emulator(
    settings: CliSettings,
    *,
    faults: list[str],
    host: str,
    port: int,
    pending_seconds: float,
    running_seconds: float,
    data_dir: Path | None,
) -> Outcome:
    from runner.emulator import EmulatorConfig, parse_fault, serve_forever  # only this needs it

    try:
        parsed = tuple(parse_fault(text) for text in faults)
    except ValueError as exc:
        raise UsageError(f"--fault: {exc}") from None
    config = EmulatorConfig(
        host=host,
        port=port,
        data_dir=data_dir,
        pending_seconds=pending_seconds,
        running_seconds=running_seconds,
        faults=parsed,
    )
    try:
        _check_free(host, port)  # before saying where it serves
        note(f"gbatch emulator on http://{host}:{port} (Ctrl-C stops)", event="startup")
        serve_forever(config)
    except OSError as exc:
        taken = exc.errno == errno.EADDRINUSE
        why = "the port is already in use" if taken else (exc.strerror or str(exc))
        raise UsageError(
            f"--port: cannot listen on {host}:{port}: {why} (pick another port)"
        ) from None
    return Outcome(EXIT_OK)


def _check_free(host: str, port: int) -> None:
    """Bind and let go, as the server will (SO_REUSEADDR): OSError when it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
