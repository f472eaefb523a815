"""Reconcile one manifest: build its request set, diff it against the ledger, plan jobs.

``plan_manifest`` only computes (in a scratch directory when ``dry_run``); ``apply_manifest``
also records the manifest version and one intent per job, then hands the intents to
``runner.engine.submit``. Called by the CLI's plan / apply and by the daemon.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from runner import crashpoints
from runner.adapters import ledger, sources
from runner.adapters.state import JobRow, ManifestRow
from runner.core.lifecycle import Phase
from runner.core.loader import LoadedManifest
from runner.core.pricing import Storage
from runner.core.requests import token_contents
from runner.engine import caching, integrity, lifecycle
from runner.engine.lifecycle import result_path
from runner.engine.runtime import Runtime, fields, log
from runner.engine.validate import HANDOVER, SetRecord, Settled, fingerprint, locate
from runner.errors import BackendError, ManifestError, StoreBusyError

COUNT_TOKENS_SAMPLE = 5
ASSUMED_OUTPUT_TOKENS = 256


@dataclass(frozen=True)
class Estimate:
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    basis: str  # how input tokens were counted: "countTokens sample of N" or "estimate"
    tokens_per_char: float = 0.25
    cached_tokens: int = 0  # of input_tokens, read from the context cache
    cost_without_cache_usd: float | None = None  # what the same requests cost uncached
    cache_storage: Storage | None = None  # the context cache kept for its TTL (in cost_usd)


@dataclass(frozen=True)
class ManifestPlan:
    name: str
    table: str
    model: str
    version: str
    diff: ledger.RowDiff
    jobs: list[ledger.Chunk]
    estimate: Estimate
    spent_usd: float
    desired: Path
    set_digest: str
    to_reuse: Path
    cache_digest: str | None = None
    blocked: str | None = None
    notes: list[str] = field(default_factory=list)
    record: SetRecord | None = None  # what the set was built from, kept beside it on apply


def version_of(loaded: LoadedManifest) -> str:
    return loaded.digest[:12]


def plan_manifest(
    rt: Runtime, loaded: LoadedManifest, *, count_tokens: bool = True
) -> ManifestPlan:
    """What applying ``loaded`` would submit, with estimates. Writes only under ``rt.work_dir``.

    The request set is built only when no set of exactly these inputs exists: the recorded
    one (``SetRecord``: same fingerprint) is used as it is, and one validation just built
    is taken over (``HANDOVER``). The diff is skipped too when the recorded set was settled
    against the same ledger and no job of the manifest is live (``_settled_diff``).
    """
    manifest = loaded.manifest
    name = manifest.name
    sets = rt.sets_dir(name)
    sets.mkdir(parents=True, exist_ok=True)
    try:
        cache = (
            caching.prepare(rt, loaded, count_tokens=count_tokens)
            if manifest.spec.cache is not None
            else None
        )
        cache_digest = cache.digest if cache else ""
        handed = HANDOVER.take(loaded, cache_digest)  # validation's, moments ago
        stamp, built = (
            handed
            if handed is not None
            else (fingerprint(loaded, cache_digest=cache_digest, forbidden=rt.private), None)
        )
        previous_row = rt.state.manifest(name)
        previous = (
            Path(previous_row.request_set) if previous_row and previous_row.request_set else None
        )
        record = _recorded(previous_row, previous, stamp)
        if record is not None and previous is not None:
            desired, set_digest = previous, record.set_digest
            if built is not None:
                built.unlink(missing_ok=True)
        else:
            desired, set_digest = _build(rt, loaded, sets, built, cache_digest)
    except ManifestError as exc:
        raise locate(loaded, exc) from exc

    live = rt.state.jobs(manifest=name, live=True)
    to_submit = sets / "to_submit.parquet"
    to_reuse = sets / "to_reuse.parquet"
    reuse = manifest.spec.policy.reuse_answers
    ledger_dir = rt.ledger_dir(name)
    # read before the diff: a ledger written meanwhile then differs from the one recorded
    ledger_now = ledger.ledger_digest(ledger_dir) if stamp is not None and not live else None
    diff = _settled_diff(record, ledger_now) if record is not None else None
    if diff is None:
        diff = ledger.diff(
            desired=desired,
            ledger_dir=ledger_dir,
            in_flight=[Path(job.request_file) for job in live],
            previous=previous,
            retries=manifest.spec.policy.retries,
            out=to_submit,
            answers=sorted(rt.answers_dir().glob("*.parquet")) if reuse else None,
            elsewhere=[Path(j.request_file) for j in rt.state.jobs(live=True) if j.kind == "batch"]
            if reuse
            else None,
            reuse_out=to_reuse,
        )
    limit = manifest.spec.policy.max_requests_per_job or rt.settings.max_requests_per_job
    chunks = (
        ledger.chunk(
            desired=desired,
            to_submit=to_submit,
            max_requests=limit,
            max_bytes=rt.settings.max_job_bytes,
            out_dir=rt.jobs_dir(),
        )
        if diff.submit_requests
        else []
    )
    estimate = _estimate(rt, loaded, diff, desired, to_submit, cache, count_tokens=count_tokens)
    spent = sum(job.cost_usd or 0.0 for job in rt.state.jobs(manifest=name))
    spent += rt.state.cache_cost(name)  # context cache storage is spend too
    blocked = cache.too_small if cache is not None else None
    cap = manifest.spec.policy.max_cost_usd
    model = manifest.spec.model_id
    notes = []
    unpriced = None
    if rt.prices.for_model(manifest.spec.model) is None:
        unpriced = f"no price known for {model}"
        notes.append(f"{unpriced}: costs unknown")
    elif estimate.cache_storage is not None and estimate.cache_storage.usd is None:
        unpriced = f"no cache storage price known for {model}"
        notes.append(f"{unpriced}: the estimate leaves the cache's storage out")
    if cap is not None and unpriced and diff.submit_requests and not blocked:
        # a cap that cannot be checked is not a cap: refuse rather than spend unbounded
        blocked = (
            f"{unpriced}, so policy.max_cost_usd ${cap:.2f} cannot be checked; nothing "
            f"submitted. Supply a price in a TOML file named by GBATCH_PRICES_FILE: "
            f'[models."{model}"] with input, output (and cache_storage) in USD per 1M tokens '
            "at batch price (see runner/data/prices.toml)"
        )
    over = cap is not None and estimate.cost_usd is not None and spent + estimate.cost_usd > cap
    if over and not blocked:
        blocked = (
            f"estimated cost ${estimate.cost_usd:.4f} plus ${spent:.4f} already spent exceeds "
            f"policy.max_cost_usd ${cap:.2f}; nothing submitted"
        )
    settled = None
    if ledger_now is not None and _is_settled(diff, reuse=reuse):
        settled = Settled(
            ledger=ledger_now,
            total=diff.total,
            unchanged=diff.unchanged,
            exhausted=diff.exhausted,
        )
    return ManifestPlan(
        name=name,
        table=manifest.table,
        model=manifest.spec.model_id,
        version=version_of(loaded),
        diff=diff,
        jobs=chunks,
        estimate=estimate,
        spent_usd=spent,
        desired=desired,
        set_digest=set_digest,
        to_reuse=to_reuse,
        cache_digest=cache.digest if cache else None,
        blocked=blocked,
        notes=notes,
        record=SetRecord(fingerprint=stamp, set_digest=set_digest, settled=settled)
        if stamp is not None
        else None,
    )


def _build(
    rt: Runtime, loaded: LoadedManifest, sets: Path, built: Path | None, cache_digest: str
) -> tuple[Path, str]:
    """The manifest's request set, ``built`` by validation or built now; (path, digest)."""
    building = sets / "building.parquet"
    if built is not None:
        shutil.move(built, building)
    else:
        sources.build_requests(
            loaded.manifest,
            base_dir=loaded.base_dir,
            root=loaded.root,
            out=building,
            cache_digest=cache_digest,
            forbidden=rt.private,
            cancel=rt.stop,
        )
    set_digest = ledger.set_digest(building)
    desired = sets / f"{set_digest}.parquet"
    building.replace(desired)
    return desired, set_digest


def _recorded(
    row: ManifestRow | None, request_set: Path | None, stamp: str | None
) -> SetRecord | None:
    """The record of the manifest's recorded set when it was built from exactly these
    inputs and is the set its table shows (an unshown one is applied again)."""
    if row is None or request_set is None or stamp is None:
        return None
    record = SetRecord.read(request_set)
    if record is None or record.fingerprint != stamp or record.set_digest != row.set_digest:
        return None
    return record


def _settled_diff(record: SetRecord, ledger_now: str | None) -> ledger.RowDiff | None:
    """The diff of a settled set whose ledger is as it was then (``ledger_now``, None while
    a job of the manifest is live): nothing to do."""
    settled = record.settled
    if settled is None or ledger_now is None or ledger_now != settled.ledger:
        return None
    return ledger.RowDiff(
        total=settled.total,
        unchanged=settled.unchanged,
        in_flight=0,
        reused=0,
        waiting=0,
        new=0,
        changed=0,
        retry=0,
        exhausted=settled.exhausted,
        removed=0,  # the previous set is this set
        submit_requests=0,
        submit_bytes=0,
        submit_chars=0,
    )


def _is_settled(diff: ledger.RowDiff, *, reuse: bool) -> bool:
    """Nothing to do, and nothing that another manifest's answers could change: a row out
    of retries may still be answered from the answer store while reuse is on."""
    done = diff.unchanged + (0 if reuse else diff.exhausted)
    return diff.removed == 0 and done == diff.total


def _estimate(
    rt: Runtime,
    loaded: LoadedManifest,
    diff: ledger.RowDiff,
    desired: Path,
    to_submit: Path,
    cache: caching.PreparedCache | None,
    *,
    count_tokens: bool,
) -> Estimate:
    """Input tokens from countTokens on a sample (scaled by characters), else chars / 4.

    Priced per request (the price tier depends on each request's prompt size), at the average
    request of the set. With a cache, each request also reads the cache's tokens at the cached
    rate, and the cache is stored for its TTL (once: extending it while jobs wait costs more).
    """
    spec = loaded.manifest.spec
    tokens_per_char = 0.25
    basis = "estimate (characters / 4)"
    if count_tokens and diff.submit_requests:
        try:
            sample = ledger.sample_requests(
                desired=desired, to_submit=to_submit, limit=COUNT_TOKENS_SAMPLE
            )
            contents = [token_contents(json.loads(r)) for r in sample]
            model = spec.model_id
            counted = sum(rt.backend.count_tokens(model=model, contents=c) for c in contents)
            chars = sum(len(json.dumps(c)) for c in contents)
            if counted and chars:
                tokens_per_char = counted / chars
                basis = f"countTokens on {len(sample)} requests, scaled by characters"
        except BackendError as exc:
            log.info("countTokens unavailable (%s); estimating", exc)
    requests = diff.submit_requests
    input_tokens = int(diff.submit_chars * tokens_per_char)
    per_request = spec.generation.max_output_tokens or ASSUMED_OUTPUT_TOKENS
    if spec.task == "embed":
        per_request = 0  # a vector is not billed as output
    cached = cache.tokens if cache is not None and requests else 0
    price = rt.prices.for_model(spec.model)
    storage = None
    if cache is not None and cached:
        rate = price.cache_storage if price is not None else None
        storage = Storage(tokens=cached, hours=cache.ttl_s / 3600, rate=rate)
    cost = uncached_cost = None
    if price is not None:
        average = {
            "promptTokenCount": (input_tokens / requests if requests else 0) + cached,
            "candidatesTokenCount": per_request,
        }
        cost = requests * price.cost({**average, "cachedContentTokenCount": cached})
        uncached_cost = requests * price.cost(average)
        if storage is not None and storage.usd is not None:
            cost += storage.usd
    return Estimate(
        input_tokens=input_tokens + cached * requests,
        output_tokens=per_request * requests,
        cost_usd=cost,
        basis=basis,
        tokens_per_char=tokens_per_char,
        cached_tokens=cached * requests,
        cost_without_cache_usd=uncached_cost if cache is not None else None,
        cache_storage=storage,
    )


def intent_of(manifest: str, chunk_digest: str, generation: int) -> str:
    """The durable identity of one job; its display name carries it, so it can be found."""
    return hashlib.sha256(f"{manifest}\n{chunk_digest}\n{generation}".encode()).hexdigest()


def display_name(manifest: str, intent: str) -> str:
    return f"gbatch-{manifest}-{intent[:16]}"


def apply_manifest(rt: Runtime, loaded: LoadedManifest) -> ManifestPlan:
    """Plan, then record the version and the job intents (durably, before any create)."""
    plan = plan_manifest(rt, loaded)
    manifest = loaded.manifest
    previous = rt.state.manifest(plan.name)
    new_set = previous is None or previous.set_digest != plan.set_digest
    shown = not new_set or show_current(rt, plan.name, plan.table, plan.desired)
    rt.state.upsert_manifest(
        name=plan.name,
        path=str(loaded.path),
        table_name=plan.table,
        model=plan.model,
        digest=loaded.digest,
        commit_sha=rt.commit,
        request_set=str(plan.desired),
        # an unshown set keeps the old digest, so the next reconcile tries again
        set_digest=plan.set_digest if shown else (previous.set_digest if previous else None),
        requests=plan.diff.total,
        status="blocked" if plan.blocked else "ok",
        last_error=plan.blocked or (None if shown else f"{integrity.BUSY}: view not yet switched"),
        policy=manifest.spec.policy.model_dump_json(),
    )
    if plan.record is not None and shown:
        plan.record.write(plan.desired)
    _drop_old_sets(rt.sets_dir(plan.name), keep=plan.desired)
    if previous is not None and previous.digest != loaded.digest:
        _retire_old_version(
            rt, plan.name, keep=loaded.digest, cancel=manifest.spec.policy.on_change == "cancel"
        )
    if new_set:
        rt.state.event("version", f"version {plan.version}: {_counts(plan)}", manifest=plan.name)
    if plan.blocked:
        rt.state.event("blocked", plan.blocked, manifest=plan.name)
        log.warning(
            "%s: %s", plan.name, plan.blocked, extra=fields(event="blocked", manifest=plan.name)
        )
        return plan
    intents = []
    for chunk in plan.jobs:
        earlier = sum(
            1 for job in rt.state.jobs(manifest=plan.name) if job.request_file == str(chunk.path)
        )
        intent = intent_of(plan.name, chunk.digest, earlier)
        intents.append(
            {
                "intent": intent,
                "manifest": plan.name,
                "digest": loaded.digest,
                "commit_sha": rt.commit,
                "display_name": display_name(plan.name, intent),
                "model": plan.model,
                "request_file": str(chunk.path),
                "requests": chunk.requests,
                "bytes": chunk.bytes,
                "input_tokens_est": int(chunk.bytes * plan.estimate.tokens_per_char),
                "cache_digest": plan.cache_digest,
                "task": manifest.spec.task,
            }
        )
    if intents:
        rt.state.add_jobs(intents)
        rt.state.event("planned", f"{len(intents)} job(s): {_counts(plan)}", manifest=plan.name)
        crashpoints.reached("intent_recorded")
    if plan.diff.reused:
        _reuse(rt, plan, loaded.digest)
    for job in rt.state.jobs(manifest=plan.name, live=True):
        if job.kind == "reuse" and job.phase is Phase.PLANNED:
            materialize_reuse(rt, job)
    return plan


def _reuse(rt: Runtime, plan: ManifestPlan, digest: str) -> None:
    """Record a job of answers copied from the answer store (it is never sent)."""
    (chunk,) = ledger.chunk(
        desired=plan.desired,
        to_submit=plan.to_reuse,
        max_requests=2**62,
        max_bytes=2**62,
        out_dir=rt.jobs_dir(),
    )
    earlier = sum(
        1 for job in rt.state.jobs(manifest=plan.name) if job.request_file == str(chunk.path)
    )
    intent = intent_of(plan.name, f"reuse:{chunk.digest}", earlier)
    rt.state.add_jobs(
        [
            {
                "intent": intent,
                "manifest": plan.name,
                "digest": digest,
                "commit_sha": rt.commit,
                "display_name": f"gbatch-{plan.name}-reuse-{intent[:16]}",
                "model": plan.model,
                "request_file": str(chunk.path),
                "requests": chunk.requests,
                "bytes": chunk.bytes,
                "kind": "reuse",
            }
        ]
    )
    rt.state.event(
        "reused", f"{chunk.requests} answer(s) copied from the answer store", manifest=plan.name
    )


def materialize_reuse(rt: Runtime, job: JobRow) -> None:
    """Write a reuse job's result lines from the answer store; it is then ingested as usual."""
    ledger.reused_lines(
        job_requests=Path(job.request_file),
        answers=sorted(rt.answers_dir().glob("*.parquet")),
        out=result_path(rt, job),
    )
    rt.state.transition(job.id, Phase.DOWNLOADED, remote_state="reused")


def show_current(rt: Runtime, name: str, table: str, desired: Path) -> bool:
    """Make the results table show this version; False when the file is busy (retry later)."""
    try:
        rt.results.show_current(table=table, current=desired, owner=integrity.owner_of(rt))
    except StoreBusyError as exc:
        rt.state.event("busy", str(exc), manifest=name)
        return False
    return True


def _counts(plan: ManifestPlan) -> str:
    d = plan.diff
    return (
        f"{d.total} requests: {d.new} new, {d.changed} changed, {d.retry} retry, "
        f"{d.unchanged} unchanged, {d.in_flight} in flight, {d.reused} reused, "
        f"{d.waiting} waiting, {d.removed} removed"
    )


def _drop_old_sets(sets: Path, *, keep: Path) -> None:
    """Delete the request sets of earlier versions, once recorded ``keep`` has replaced them.

    Only the recorded set is read again (the next diff's previous set, ingest's current
    version); jobs keep their own rows under jobs/. Only the holder of the state lock gets
    here (``plan`` works in a scratch directory). Scratch files (building, to_submit,
    to_reuse) are not sets and are rewritten by every plan.
    """
    for path in sets.glob("*.parquet"):
        named_by_digest = len(path.stem) == 64 and all(c in "0123456789abcdef" for c in path.stem)
        if named_by_digest and path != keep:
            path.unlink(missing_ok=True)
            SetRecord.path_for(path).unlink(missing_ok=True)


def _retire_old_version(rt: Runtime, name: str, *, keep: str, cancel: bool) -> None:
    """A new version: drop the old one's unsent intents; cancel its running jobs if asked."""
    for job in rt.state.jobs(manifest=name, live=True):
        if job.digest == keep:
            continue
        if job.phase in (Phase.PLANNED, Phase.UPLOADED):
            rt.state.transition(job.id, Phase.ABANDONED, error="superseded by a new version")
        elif cancel:
            lifecycle.cancel(rt, job, "policy.on_change: cancel")


def remove_manifest(rt: Runtime, name: str) -> None:
    """The manifest is gone: results stay; live jobs are cancelled only if its policy says so."""
    row = rt.state.manifest(name)
    if row is None:
        return
    on_delete = row.policy_spec.on_delete
    for job in rt.state.jobs(manifest=name, live=True):
        if job.phase in (Phase.PLANNED, Phase.UPLOADED):
            rt.state.transition(job.id, Phase.ABANDONED, error="manifest removed")
        elif on_delete == "cancel":
            lifecycle.cancel(rt, job, "policy.on_delete: cancel")
    rt.state.update_manifest(name, status="removed", last_error=None)
    rt.state.event(
        "removed", f"manifest removed (on_delete: {on_delete}); results kept", manifest=name
    )
    log.info(
        "%s: removed (on_delete: %s); results kept",
        name,
        on_delete,
        extra=fields(event="removed", manifest=name),
    )
