"""The CLI's commands: each wires a Runtime, calls the engine, prints, returns an exit code.

Thin on purpose: decisions live in the engine and the core. Called by ``runner.cli.main``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from runner.adapters import results, sources
from runner.adapters.gemini import GeminiBackend
from runner.adapters.gitrepo import GitCheckout
from runner.adapters.metrics import MetricsServer
from runner.adapters.state import JobRow, ProcessLock, StateStore
from runner.cli import render
from runner.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE, exit_code
from runner.core.clock import Clock, SystemClock
from runner.core.durations import parse_duration
from runner.core.lifecycle import TO_SUBMIT, Phase
from runner.core.loader import LoadedManifest
from runner.core.manifest import json_schema
from runner.core.paths import confine
from runner.core.pricing import load_prices
from runner.engine import cycle, integrity, lifecycle, reconcile
from runner.engine.daemon import Daemon, DaemonOptions
from runner.engine.runtime import Runtime
from runner.engine.validate import validate
from runner.errors import (
    GbatchError,
    ManifestError,
    ManifestErrors,
    PermanentBackendError,
    TransientBackendError,
)
from runner.settings import Settings, retry_policy

MAX_WAIT_ROUNDS = 20  # plan -> run -> ingest rounds in one apply --wait (retries need rounds)


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {"log_format": args.log_format} if args.log_format else {}
    return Settings(**overrides)


@contextmanager
def runtime(
    settings: Settings, *, work_dir: Path | None = None, clock: Clock | None = None
) -> Iterator[Runtime]:
    clock = clock or SystemClock()
    state = StateStore(settings.state_db, clock=clock)
    key = settings.api_key.get_secret_value() if settings.api_key else None
    if not key:
        raise GbatchError(
            "no API key: set GEMINI_API_KEY (or GOOGLE_API_KEY); for the local emulator any "
            "value works"
        )
    backend = GeminiBackend(
        api_key=key,
        base_url=settings.base_url,
        api_version=settings.api_version,
        timeout_s=settings.http_timeout_s,
        retry=retry_policy(settings),
    )
    try:
        yield Runtime(
            settings=settings,
            state=state,
            backend=backend,
            prices=load_prices(settings.prices_file),
            work_dir=work_dir or settings.state_dir,
            clock=clock,
        )
    finally:
        state.close()


def _private(settings: Settings) -> tuple[Path, ...]:
    return sources.private_paths(state_dir=settings.state_dir, db=settings.db)


def _validated(paths: list[Path], settings: Settings) -> list[LoadedManifest]:
    loaded, errors = validate(paths, forbidden=_private(settings), state_dir=settings.state_dir)
    loaded = integrity.refuse_collisions(loaded, errors, state_db=settings.state_db)
    if errors:
        raise ManifestErrors(errors)
    return loaded


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    loaded, errors = validate(
        args.paths, forbidden=_private(settings), state_dir=settings.state_dir
    )
    loaded = integrity.refuse_collisions(loaded, errors, state_db=settings.state_db)
    for error in sorted(errors, key=str):
        print(error, file=sys.stderr)
    for item in loaded:
        print(f"ok   {item.path}: {item.manifest.name} -> table {item.manifest.table}")
    if errors:
        print(f"{len(errors)} problem(s) in the manifests", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_plan(args: argparse.Namespace, settings: Settings) -> int:
    loaded = _validated(args.paths, settings)
    with (
        tempfile.TemporaryDirectory(prefix="gbatch-plan-") as scratch,
        runtime(settings, work_dir=Path(scratch)) as rt,
    ):
        plans = [
            reconcile.plan_manifest(rt, item, count_tokens=not args.no_count_tokens)
            for item in loaded
        ]
        print(render.plan(plans))
    return EXIT_FAILED if any(p.blocked for p in plans) else EXIT_OK


def cmd_apply(args: argparse.Namespace, settings: Settings) -> int:
    loaded = _validated(args.paths, settings)
    by_name = {item.manifest.name: item for item in loaded}
    with ProcessLock(settings.state_dir), runtime(settings) as rt:
        integrity.ensure(rt, loaded)  # the owner, the table names; rebuild what is missing
        progress = Progress(started=rt.clock.monotonic(), clock=rt.clock)
        for round_number in range(MAX_WAIT_ROUNDS):
            ingested_before = _ingested(rt)
            report = cycle.tick(rt, by_name, apply=list(by_name), scope=set(by_name))
            plans = list(report.plans.values())
            if report.errors and not plans:
                raise _worst(list(report.errors.values()))
            if round_number == 0:
                print(render.plan(plans))
            elif retrying := [p for p in plans if p.diff.submit_requests]:
                print(f"retry round {round_number}:")
                print(render.plan(retrying))
            _raise_api_refusals(rt, by_name, report.submitted)
            if not args.wait:
                sent = report.submitted
                print(
                    f"created {sent.created} job(s), adopted {sent.adopted}, "
                    f"waiting {sent.waiting}; `gbatch status` follows them"
                )
                if report.errors:
                    return exit_code(_worst(list(report.errors.values())))
                return EXIT_FAILED if any(p.blocked for p in plans) else EXIT_OK
            waiting = any(p.diff.waiting for p in plans)  # on another manifest's live job
            _wait(rt, by_name, progress, everyone=waiting)
            more = waiting or any(p.diff.submit_requests and not p.blocked for p in plans)
            if not more or _ingested(rt) == ingested_before:
                break  # done, or a round that finished nothing: retrying would not help
        print()
        print(render.status(rt.state.manifests(), rt.state.jobs()))
        failed = any(j.phase is Phase.ABANDONED for j in rt.state.jobs() if j.manifest in by_name)
        blocked = any(p.blocked for p in plans)
        if report.errors:
            return exit_code(_worst(list(report.errors.values())))
        return EXIT_FAILED if failed or blocked else EXIT_OK


def _worst(errors: list[GbatchError]) -> GbatchError:
    """The error a command exits with when manifests failed: bad manifests together, else
    the first (each is already in ``status`` and the log)."""
    bad = [e for e in errors if isinstance(e, ManifestError)]
    if len(bad) == len(errors):
        return bad[0] if len(bad) == 1 else ManifestErrors(bad)
    return next(e for e in errors if not isinstance(e, ManifestError))


def _raise_api_refusals(
    rt: Runtime, manifests: dict[str, LoadedManifest], sent: lifecycle.SubmitReport
) -> None:
    """Exit 3 when the API refused the work for good, or could not be reached at all and
    nothing of these manifests is in flight (waiting would not help)."""
    if sent.backend_errors:
        raise PermanentBackendError(sent.backend_errors[0])
    own = [j for j in rt.state.jobs(live=True) if j.manifest in manifests]
    nothing_sent = sent.created + sent.adopted == 0
    if sent.api_errors and nothing_sent and all(j.phase in TO_SUBMIT for j in own):
        raise TransientBackendError(
            f"{sent.api_errors[0]} (nothing was created; apply again once the API answers)"
        )


def _ingested(rt: Runtime) -> int:
    return sum(1 for j in rt.state.jobs() if j.phase is Phase.INGESTED)


def _wait(
    rt: Runtime, manifests: dict[str, LoadedManifest], progress: Progress, *, everyone: bool
) -> None:
    """Tick until none of these manifests' jobs (``everyone``: no job at all) is live."""
    scope = None if everyone else set(manifests)
    while True:
        report = cycle.tick(rt, manifests, scope=scope)
        own = [j for j in rt.state.jobs() if everyone or j.manifest in manifests]
        live = [j for j in own if j.phase.live]
        progress.show(own, live)
        if not live:
            progress.end()
            return
        _raise_api_refusals(rt, manifests, report.submitted)
        if report.ingested.ingested == 0:
            rt.clock.sleep(rt.settings.poll_interval_s)


@dataclass
class Progress:
    """One status line: rewritten in place on a terminal, printed on change otherwise."""

    started: float
    clock: Clock
    last: str = ""

    def show(self, own: list[JobRow], live: list[JobRow]) -> None:
        done = len(own) - len(live)
        requests = sum(j.requests for j in own)
        answered = sum(j.succeeded + j.failed for j in own)
        cost = sum(j.cost_usd or 0.0 for j in own)
        states = ", ".join(sorted({j.remote_state or j.phase for j in live})) or "done"
        text = (
            f"jobs {done}/{len(own)} done ({states}) · requests {answered}/{requests} answered"
            f" · cost so far {render.money(cost)}"
        )
        elapsed = int(self.clock.monotonic() - self.started)
        line = f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {text}"
        if sys.stderr.isatty():
            sys.stderr.write("\r" + line)
        elif text != self.last:
            sys.stderr.write(line + "\n")
        self.last = text
        sys.stderr.flush()

    def end(self) -> None:
        if sys.stderr.isatty():
            sys.stderr.write("\n")


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    if (args.dir is None) == (args.git is None):
        raise GbatchError("watch needs a directory or --git URL_OR_PATH (one of them)")
    git = None
    if args.git is not None:
        git = GitCheckout(args.git, workdir=settings.state_dir / "checkout", branch=args.branch)
        root = confine(args.path, base_dir=git.path, root=git.path)
    else:
        root = args.dir.resolve()
        if not root.is_dir():
            raise GbatchError(f"{args.dir} is not a directory")
    options = DaemonOptions(
        root=root,
        poll_files=args.poll,
        resync_s=_seconds(args.resync, "--resync"),
        settle_s=_seconds(args.settle, "--settle"),
        confirm_deletions=args.confirm_deletions,
        git=git,
        git_interval_s=_seconds(args.interval, "--interval"),
    )
    with ProcessLock(settings.state_dir), runtime(settings) as rt:
        daemon = Daemon(rt, options)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: daemon.stop.set())
        metrics = None
        if args.metrics_port is not None:
            metrics = MetricsServer(
                state_db=settings.state_db,
                api_errors=rt.backend.api_errors,
                checks=daemon.health_problems,
                host=args.metrics_host,
                port=args.metrics_port,
            ).start()
            daemon.observe_reconcile = metrics.observe_reconcile
            print(f"metrics: http://{args.metrics_host}:{metrics.port}/metrics", flush=True)
        print(f"gbatch watch: {git.url if git else root} (Ctrl-C stops)", flush=True)
        try:
            return daemon.run()
        finally:
            if metrics is not None:
                metrics.stop()


def _seconds(text: str, option: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise GbatchError(f"{option}: {exc}") from None


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    state = StateStore(settings.state_db)
    try:
        manifests, jobs = state.manifests(), state.jobs()
        invalid, media_files = state.invalid_files(), state.media_files()
    finally:
        state.close()
    if not manifests and not invalid:
        print(f"no manifests applied yet (state: {settings.state_dir})")
        return EXIT_OK
    if manifests:
        print(render.status(manifests, jobs))
        print("\n".join(_results_status(settings)))  # is every answer in the results file?
    if invalid:
        print("\ninvalid manifest files (the last good version of each keeps running):")
        for path, error, since in invalid:
            print(f"  {path} (since {since[:19]}): {error}")
    print("\n" + render.files_storage(jobs, media_files))
    if args.jobs:
        print()
        print(render.jobs_table(jobs))
    return EXIT_OK


def _results_status(settings: Settings) -> list[str]:
    state = StateStore(settings.state_db)
    try:
        return integrity.status_lines(
            integrity.Offline(
                settings=settings, state=state, prices=load_prices(settings.prices_file)
            )
        )
    finally:
        state.close()


def cmd_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    """Rewrite result tables from the state alone: no API key, no request sent."""
    with ProcessLock(settings.state_dir):
        state = StateStore(settings.state_db)
        try:
            stores = integrity.Offline(
                settings=settings, state=state, prices=load_prices(settings.prices_file)
            )
            report = integrity.rebuild(
                stores, table=args.table, move_to=args.move_to, claim=args.claim
            )
        finally:
            state.close()
    print("\n".join(report.lines()) or "every table is whole; nothing to rebuild")
    return EXIT_OK


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    state = StateStore(settings.state_db)
    try:
        extra = state.tables()
    finally:
        state.close()
    columns, rows = results.run_query(settings.db, args.sql, extra_tables=extra)
    formatter = {"table": render.table, "csv": render.as_csv, "json": render.as_json}
    print(formatter[args.format](columns, rows))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_emulator(args: argparse.Namespace, settings: Settings) -> int:
    from runner.emulator import EmulatorConfig, parse_fault, serve_forever  # only this needs it

    try:
        faults = tuple(parse_fault(text) for text in args.fault)
    except ValueError as exc:
        print(f"gbatch emulator: --fault: {exc}", file=sys.stderr)
        return EXIT_USAGE
    config = EmulatorConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        pending_seconds=args.pending_seconds,
        running_seconds=args.running_seconds,
        faults=faults,
    )
    print(f"gbatch emulator on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    serve_forever(config)
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "validate": cmd_validate,
    "plan": cmd_plan,
    "apply": cmd_apply,
    "watch": cmd_watch,
    "status": cmd_status,
    "rebuild": cmd_rebuild,
    "query": cmd_query,
    "schema": cmd_schema,
    "emulator": cmd_emulator,
}
