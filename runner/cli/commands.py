"""The CLI's commands: each wires a Runtime, calls the engine, prints, returns an Outcome.

Thin on purpose: decisions live in the engine and the core. Each command returns its exit
code and its structured result (a view of ``runner.cli.views``: what ``-o json`` prints and
``runner.cli.invoke`` hands to a caller). Argument parsing is ``runner.cli.app``'s; the
daemon-side commands (watch, emulator) are in ``runner.cli.serve``.
"""

from __future__ import annotations

import difflib
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from runner.adapters import datafiles
from runner.adapters.state import ProcessLock
from runner.cli import console, render, scaffold, views
from runner.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, exit_code
from runner.cli.logs import note
from runner.cli.progress import Progress
from runner.cli.wiring import (
    CliSettings,
    checked,
    leadership_for,
    open_results,
    process_lock,
    runtime,
    selector,
    state_lines,
    state_of,
    validated,
)
from runner.core.lifecycle import TO_SUBMIT, Phase
from runner.core.loader import LoadedManifest, load_file
from runner.core.manifest import json_schema
from runner.core.ports import State
from runner.core.pricing import PriceTable, load_prices
from runner.core.records import EVENT_COLUMNS
from runner.engine import cycle, diffing, integrity, lifecycle, pruning, reconcile
from runner.engine.runtime import Runtime
from runner.engine.selection import Selector
from runner.errors import (
    GbatchError,
    LockedError,
    ManifestError,
    ManifestErrors,
    PermanentBackendError,
    TransientBackendError,
)

MAX_WAIT_ROUNDS = 20  # plan -> run -> ingest rounds in one apply --wait (retries need rounds)
EVENTS_SHOWN = 50  # on the status page
QUERY_ROWS = 10_000  # gbatch query's cap


@dataclass(frozen=True)
class Outcome:
    code: int
    result: BaseModel | None = None


def _emit(view: BaseModel, output: str) -> bool:
    """Print ``view`` as JSON when asked; True when done (the caller prints text otherwise)."""
    if output == "json":
        console.document(view)
        return True
    return False


# -- validate --------------------------------------------------------------------------------
def unknown_model_warnings(settings: CliSettings, loaded: Sequence[LoadedManifest]) -> list[str]:
    """A manifest whose model has no price: probably a typo; name the known ones."""
    prices = load_prices(settings.prices_file)
    known = sorted(prices.models)
    warnings = []
    for item in loaded:
        model = item.manifest.spec.model_id
        if prices.for_model(model) is not None:
            continue
        close = difflib.get_close_matches(model, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        warnings.append(
            f"{item.locate('spec', 'model')}: spec.model: unknown model {model!r} (no price "
            f"known: costs cannot be estimated or capped); {hint}known models: {', '.join(known)}"
            " (add one with GBATCH_PRICES_FILE)"
        )
    return warnings


def cmd_validate(settings: CliSettings, *, paths: Sequence[Path], output: str) -> Outcome:
    loaded, errors = checked(paths, settings)
    view = views.Validation(
        valid=not errors,
        items=[
            views.ValidManifest(
                path=str(i.path),
                name=i.manifest.name,
                table=i.manifest.table,
                model=i.manifest.spec.model_id,
                labels=dict(i.manifest.metadata.labels),
            )
            for i in loaded
        ],
        errors=[views.problem(e) for e in sorted(errors, key=str)],
        warnings=unknown_model_warnings(settings, loaded),
    )
    if not _emit(view, output):
        out, err = render.validation(view)
        if err:
            console.say("\n".join(err), err=True)
        if out:
            console.say("\n".join(out))
    return Outcome(EXIT_USAGE if errors else EXIT_OK, view)


# -- plan ------------------------------------------------------------------------------------
def _plans(
    settings: CliSettings, loaded: Sequence[LoadedManifest], *, count_tokens: bool
) -> views.Plan:
    """Plan in a scratch directory: the state is read, nothing is recorded or sent."""
    with (
        tempfile.TemporaryDirectory(prefix="gbatch-plan-") as scratch,
        runtime(settings, work_dir=Path(scratch), need_key=count_tokens) as rt,
    ):
        return views.plan(
            [reconcile.plan_manifest(rt, item, count_tokens=count_tokens) for item in loaded]
        )


def cmd_plan(
    settings: CliSettings,
    *,
    paths: Sequence[Path],
    selectors: Sequence[str],
    count_tokens: bool,
    output: str,
) -> Outcome:
    loaded = validated(paths, selector(selectors), settings)
    if count_tokens and settings.backend == "gemini" and settings.api_key is None:
        raise UsageError(
            "plan counts tokens with the API and there is no API key: set GEMINI_API_KEY, or "
            "pass --no-count-tokens to estimate locally"
        )
    view = _plans(settings, loaded, count_tokens=count_tokens)
    if not _emit(view, output):
        console.say(render.plan(view.items))
    return Outcome(EXIT_FAILED if any(p.blocked for p in view.items) else EXIT_OK, view)


# -- apply -----------------------------------------------------------------------------------
class Applied(BaseModel):
    """What ``apply`` did (``invoke``'s result): its plan, what left the folder, the status."""

    plan: views.Plan
    created: int
    adopted: int
    waiting: int
    gone: list[str]
    pruned: list[str]
    status: views.Status | None


def _confirm(plan: views.Plan, *, above: float, yes: bool, ask: Any) -> None:
    """On a terminal, ask before spending more than ``above`` dollars (``--yes`` skips)."""
    total = render.plan_total(plan.items)
    if yes or ask is None or (total is not None and total <= above):
        return
    cost = "an unknown cost (a model has no price)" if total is None else render.money(total)
    if not ask(f"Apply, at an estimated {cost} (over --confirm-above ${above:g})?"):
        raise GbatchError("nothing applied (declined)")


def cmd_apply(
    settings: CliSettings,
    *,
    paths: Sequence[Path],
    selectors: Sequence[str],
    wait: bool,
    yes: bool,
    confirm_above: float,
    prune: bool,
    confirm_deletions: bool,
    ask: Any = None,
) -> Outcome:
    """Reconcile once (``wait``: until every job is ingested). ``ask`` is a yes/no prompt,
    given only on a terminal: the plan is then shown and confirmed before anything is done."""
    chosen = selector(selectors)
    if prune and chosen:
        raise UsageError("--prune with --selector: a removed file's labels are unknown")
    loaded = validated(paths, chosen, settings)
    by_name = {item.manifest.name: item for item in loaded}
    with process_lock(settings), runtime(settings, lead=True) as rt:
        integrity.ensure(rt, loaded)  # the owner, the table names; rebuild what is missing
        shown = None
        if ask is not None and not yes:
            shown = _plans(settings, loaded, count_tokens=True)
            console.say(render.plan(shown.items))
            _confirm(shown, above=confirm_above, yes=yes, ask=ask)
        gone = pruning.gone(rt, paths, present=set(by_name)) if not chosen else []
        pruned = _prune(rt, gone, paths, confirm_deletions) if prune else []
        progress = Progress(
            clock=rt.clock,
            started=rt.clock.monotonic(),
            before={j.id for j in rt.state.jobs() if not j.phase.live},
        )
        for round_number in range(MAX_WAIT_ROUNDS):
            ingested_before = _ingested(rt)
            report = cycle.tick(rt, by_name, apply=list(by_name), scope=set(by_name))
            plans = list(report.plans.values())
            if report.errors and not plans:
                raise worst(list(report.errors.values()))
            if round_number == 0:
                first = views.plan(plans)
                if shown is None:
                    console.say(render.plan(first.items))
                _report_gone([g for g in gone if g not in pruned], pruned)
            elif retrying := [p for p in plans if p.diff.submit_requests]:
                console.say(f"retry round {round_number}:")
                console.say(render.plan(views.plan(retrying).items))
            _raise_api_refusals(rt, by_name, report.submitted)
            if not wait:
                sent = report.submitted
                console.say(
                    f"created {sent.created} job(s), adopted {sent.adopted}, "
                    f"waiting {sent.waiting}; `gbatch status` follows them"
                )
                code = _code_of(report.errors, failed=any(p.blocked for p in plans))
                result = Applied(
                    plan=first,
                    created=sent.created,
                    adopted=sent.adopted,
                    waiting=sent.waiting,
                    gone=gone,
                    pruned=pruned,
                    status=None,
                )
                return Outcome(code, result)
            waiting = any(p.diff.waiting for p in plans)  # on another manifest's live job
            _wait(rt, by_name, progress, everyone=waiting)
            more = waiting or any(p.diff.submit_requests and not p.blocked for p in plans)
            if not more or _ingested(rt) == ingested_before:
                break  # done, or a round that finished nothing: retrying would not help
        console.say()
        status = status_view(settings, rt.state)
        console.table(render.status(status))
        failed_jobs = any(
            j.phase is Phase.ABANDONED for j in rt.state.jobs() if j.manifest in by_name
        )
        blocked = any(p.blocked for p in plans)
        code = _code_of(report.errors, failed=failed_jobs or blocked)
        sent = report.submitted
        return Outcome(
            code,
            Applied(
                plan=first,
                created=sent.created,
                adopted=sent.adopted,
                waiting=sent.waiting,
                gone=gone,
                pruned=pruned,
                status=status,
            ),
        )


def _code_of(errors: dict[str, GbatchError], *, failed: bool) -> int:
    """Manifests that could not be applied decide the code (2 bad, 3 API, ...); else 1 when
    work failed or was blocked."""
    if errors:
        return exit_code(worst(list(errors.values())))
    return EXIT_FAILED if failed else EXIT_OK


def worst(errors: list[GbatchError]) -> GbatchError:
    """The error a command exits with when manifests failed: bad manifests together, else
    the first (each is already in ``status`` and the log)."""
    bad = [e for e in errors if isinstance(e, ManifestError)]
    if len(bad) == len(errors):
        return bad[0] if len(bad) == 1 else ManifestErrors(bad)
    return next(e for e in errors if not isinstance(e, ManifestError))


def _prune(rt: Runtime, gone: list[str], paths: Sequence[Path], confirmed: bool) -> list[str]:
    """Remove manifests gone from the folder, under the daemon's mass-deletion guard."""
    if not gone:
        return []
    active = pruning.active(rt, [p for p in paths if p.is_dir()])
    if pruning.mass_deletion(gone=len(gone), active=len(active)) and not confirmed:
        raise UsageError(
            f"{len(gone)} of {len(active)} applied manifests are gone from the folder at once "
            f"({', '.join(gone)}); nothing pruned. If that is intended, add --confirm-deletions"
        )
    for name in gone:
        reconcile.remove_manifest(rt, name)
    return gone


def _report_gone(gone: list[str], pruned: list[str]) -> None:
    if pruned:
        console.say(f"pruned (results kept): {', '.join(pruned)}")
    if gone:
        console.say(
            f"applied before and no longer in the folder: {', '.join(gone)} "
            "(`gbatch apply --prune` removes them; their results are kept)"
        )


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
    try:
        while True:
            report = cycle.tick(rt, manifests, scope=scope)
            own = [j for j in rt.state.jobs() if everyone or j.manifest in manifests]
            progress.show(own)
            if not any(j.phase.live for j in own):
                return
            _raise_api_refusals(rt, manifests, report.submitted)
            if report.ingested.ingested == 0:
                rt.clock.sleep(rt.settings.poll_interval_s)
    finally:
        progress.end()


# -- status, events --------------------------------------------------------------------------
def _labels_of(path: str) -> dict[str, str] | None:
    """A stored manifest's labels, from its file (None: the file is gone or unreadable)."""
    file = Path(path)
    try:
        for item in load_file(file, root=file.parent):
            return dict(item.manifest.metadata.labels)
    except ManifestError:
        return None
    return None


def status_view(
    settings: CliSettings,
    state: State,
    *,
    chosen: Selector | None = None,
    jobs: bool = False,
    events: int = 0,
) -> views.Status:
    prices = load_prices(settings.prices_file)
    manifests, all_jobs = state.manifests(), state.jobs()
    if chosen:
        manifests = [m for m in manifests if chosen.matches(_labels_of(m.path) or {})]
        names = {m.name for m in manifests}
        all_jobs = [j for j in all_jobs if j.manifest in names]
    now = state.clock.now()
    recent = None
    if events:
        rows = state.events(newest=events)
        recent = [views.event_view(EVENT_COLUMNS, r) for r in rows][::-1]
    return views.Status(
        state_dir=str(settings.state_dir),
        manifests=[views.manifest_status(m, all_jobs, prices) for m in manifests],
        invalid_files=[
            views.InvalidFile(path=p, error=e, since=s) for p, e, s in state.invalid_files()
        ],
        files_storage=views.files_storage(all_jobs, state.media_files()),
        results=_store_lines(settings, state, prices) if manifests else [],
        jobs=[views.job_view(j, now=now) for j in all_jobs] if jobs else None,
        events=recent,
    )


def _store_lines(settings: CliSettings, state: State, prices: PriceTable) -> list[str]:
    """Where the state and the results are (a shared state: who leads; a lake: its
    snapshot), and whether every answer is in the results file."""
    store = open_results(settings)
    stores = integrity.Offline(settings=settings, state=state, prices=prices, results=store)
    return state_lines(state) + store.describe() + integrity.status_lines(stores)


def page_status(settings: CliSettings) -> dict[str, Any]:
    """``/api/status`` of the page: every manifest, job and the newest events."""
    with state_of(settings) as state:
        view = status_view(settings, state, jobs=True, events=EVENTS_SHOWN)
    return view.model_dump(mode="json")


def cmd_status(
    settings: CliSettings, *, selectors: Sequence[str], jobs: bool, output: str
) -> Outcome:
    chosen = selector(selectors)
    with state_of(settings) as state:
        view = status_view(settings, state, chosen=chosen, jobs=jobs)
    if _emit(view, output):
        return Outcome(EXIT_OK, view)
    if not view.manifests and not view.invalid_files:
        console.say(f"no manifests applied yet (state: {settings.state_dir})")
        return Outcome(EXIT_OK, view)
    if view.manifests:
        console.table(render.status(view))
        console.say("\n".join(view.results))  # is every answer in the results file?
    if view.invalid_files:
        console.say("\n" + render.invalid_files(view))
    console.say("\n" + render.files_storage(view.files_storage))
    if view.jobs is not None:
        console.say()
        console.table(render.jobs_table(view.jobs))
    return Outcome(EXIT_OK, view)


def _events(settings: CliSettings, *, manifest: str | None, after: int) -> list[views.Event]:
    with state_of(settings) as state:
        rows = state.events(manifest=manifest, after=after)
    return [views.event_view(EVENT_COLUMNS, r) for r in rows]


def cmd_events(
    settings: CliSettings,
    *,
    manifest: str | None,
    follow: bool,
    limit: int,
    output: str,
    clock: Any = None,
    stop: Any = None,
) -> Outcome:
    """The event log, oldest first (the last ``limit``); ``follow`` keeps printing new ones
    until interrupted (``stop()`` true, in tests). JSON: one document, or one event per line
    when following."""
    from runner.core.clock import SystemClock

    clock = clock or SystemClock()
    shown = _events(settings, manifest=manifest, after=0)[-limit:] if limit else []
    if not follow:
        view = views.Events(items=shown)
        if not _emit(view, output):
            for event in shown:
                console.say(render.event_line(event))
        return Outcome(EXIT_OK, view)
    seen = shown[-1].id if shown else 0
    printed = list(shown)
    batch = shown
    while True:
        for event in batch:
            if output == "json":
                console.say(json.dumps(event.model_dump(mode="json"), ensure_ascii=False))
            else:
                console.say(render.event_line(event))
        if stop is not None and stop():
            return Outcome(EXIT_OK, views.Events(items=printed))
        clock.sleep(min(1.0, settings.poll_interval_s))
        batch = _events(settings, manifest=manifest, after=seen)
        if batch:
            seen = batch[-1].id
            printed += batch


# -- cancel ----------------------------------------------------------------------------------
def cmd_cancel(settings: CliSettings, *, manifest: str) -> Outcome:
    """Cancel the manifest's running jobs; without a daemon or apply running, also drop its
    intents not yet created. What the jobs answered before the cancel is still ingested (by
    the owner of the state, or the next apply). The manifest stays applied: the next apply or
    resync sends its unanswered rows again, unless the file is removed too."""
    lock = ProcessLock(settings.state_dir)
    try:
        if settings.state_url is not None:
            raise LockedError("a shared state")  # its daemons may run: as when one does here
        lock.acquire()
        owned = True
    except LockedError:
        owned = False  # a daemon runs: cancelling remote jobs is safe beside it, nothing else
    try:
        with runtime(settings) as rt:
            if rt.state.manifest(manifest) is None:
                known = ", ".join(m.name for m in rt.state.manifests()) or "none"
                raise UsageError(f"no applied manifest named {manifest!r} (applied: {known})")
            live = rt.state.jobs(manifest=manifest, live=True)
            running = [j for j in live if j.phase is Phase.SUBMITTED and not j.cancel_reason]
            for job in running:
                lifecycle.cancel(rt, job, "cancelled by gbatch cancel")
            dropped = 0
            if owned:
                for job in live:
                    if job.phase in (Phase.PLANNED, Phase.UPLOADED):
                        rt.state.transition(
                            job.id, Phase.ABANDONED, error="cancelled by gbatch cancel"
                        )
                        dropped += 1
            done = [j for j in rt.state.jobs(manifest=manifest) if j.cancel_reason]
            view = status_view(settings, rt.state, jobs=True)
    finally:
        lock.release()
    cancelled = sum(1 for j in running if any(d.id == j.id for d in done))
    console.say(
        f"{manifest}: cancel asked for {cancelled} running job(s)"
        + (f", {dropped} not yet created dropped" if dropped else "")
        + ("" if owned else " (a daemon owns the state: it follows the cancelled jobs)")
    )
    if cancelled < len(running):
        console.say(f"{len(running) - cancelled} cancel(s) failed: see the log", err=True)
        return Outcome(EXIT_FAILED, view)
    return Outcome(EXIT_OK, view)


# -- diff ------------------------------------------------------------------------------------
def cmd_diff(
    settings: CliSettings,
    *,
    paths: Sequence[Path],
    selectors: Sequence[str],
    limit: int,
    output: str,
) -> Outcome:
    loaded = validated(paths, selector(selectors), settings)
    with state_of(settings) as state:
        changes = [diffing.diff_manifest(state, item, limit=limit) for item in loaded]
    items = []
    for c in changes:
        parts = sorted({p for k in c.changed_keys for p in k.parts})
        status = (
            "new"
            if c.previous_version is None
            else "changed"
            if c.new or c.changed or c.removed
            else "unchanged"
        )
        items.append(
            views.ManifestDiff(
                name=c.name,
                table=c.table,
                status=status,
                previous_version=c.previous_version,
                version=c.version,
                new=c.new,
                changed=c.changed,
                removed=c.removed,
                unchanged=c.unchanged,
                new_keys=c.new_keys,
                changed_keys=[
                    views.ChangedKey(key=k.key, parts=list(k.parts)) for k in c.changed_keys
                ],
                removed_keys=c.removed_keys,
                parts=parts,
            )
        )
    view = views.Diff(items=items)
    if not _emit(view, output):
        console.say(render.diff(view))
    return Outcome(EXIT_OK, view)


# -- query, schema, init ---------------------------------------------------------------------
def query_results(
    settings: CliSettings, sql: str, *, max_rows: int
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """A user's read-only SQL over the results and the bookkeeping tables (CLI and page)."""
    with state_of(settings) as state:
        extra = state.tables()
    return open_results(settings).run_query(sql, extra_tables=extra, max_rows=max_rows)


def cmd_query(settings: CliSettings, *, sql: str, output_format: str) -> Outcome:
    columns, rows = query_results(settings, sql, max_rows=QUERY_ROWS)
    if output_format == "table":
        console.table(render.query_table(columns, rows))
    else:
        formatter = {"csv": render.as_csv, "json": render.as_json}[output_format]
        console.say(formatter(columns, rows))
    return Outcome(EXIT_OK)


def cmd_rebuild(
    settings: CliSettings, *, table: str | None, move_to: str | None, claim: bool
) -> Outcome:
    """Rewrite result tables from the state alone (the rows kept per job)."""
    with process_lock(settings), state_of(settings) as state:
        leadership = leadership_for(state)  # a shared state: only its leader writes (#18)
        if not leadership.lead():
            raise LockedError(
                f"{leadership.holder() or 'another process'} leads the shared state; one "
                "gbatch apply, watch or rebuild acts on it at a time"
            )
        try:
            report = _rebuild(settings, state, table=table, move_to=move_to, claim=claim)
        finally:
            leadership.release()
    console.say("\n".join(report.lines()) or "every table is whole; nothing to rebuild")
    return Outcome(EXIT_OK)


def _rebuild(
    settings: CliSettings, state: State, *, table: str | None, move_to: str | None, claim: bool
) -> integrity.Report:
    stores = integrity.Offline(
        settings=settings,
        state=state,
        prices=load_prices(settings.prices_file),
        results=open_results(settings),
    )
    return integrity.rebuild(stores, table=table, move_to=move_to, claim=claim)


def cmd_schema(settings: CliSettings) -> Outcome:
    console.say(json.dumps(json_schema(), indent=2))
    return Outcome(EXIT_OK)


def cmd_init(
    settings: CliSettings,
    *,
    data_file: Path,
    out: Path | None,
    name: str | None,
    key: str | None,
    model: str,
    force: bool,
) -> Outcome:
    """Write a manifest for ``data_file`` beside it, validate it, say what to run next."""
    if not data_file.is_file():
        raise UsageError(f"{data_file}: no such file")
    data = datafiles.describe(data_file)
    target = out or data_file.with_suffix(".yaml")
    if target.exists() and not force:
        raise UsageError(f"{target} exists; pass --force to overwrite it or --out for another")
    if key is not None and key not in dict(data.columns):
        known = ", ".join(n for n, _ in data.columns)
        raise UsageError(f"--key {key!r}: no such column in {data_file} (columns: {known})")
    try:
        relative = data_file.resolve().relative_to(target.resolve().parent)
    except ValueError:
        raise UsageError(
            f"{target} must sit in a folder above {data_file} (paths stay under the manifest)"
        ) from None
    text = scaffold.manifest_text(
        data,
        relative=relative.as_posix(),
        name=name or scaffold.manifest_name(data_file),
        key=key or scaffold.guess_key(data),
        model=model,
    )
    target.write_text(text)
    validation = cmd_validate(settings, paths=[target], output="text")
    if validation.code != EXIT_OK:
        return validation
    note(f"wrote {target}; next: gbatch plan {target}", event="init")
    return validation
