"""Move recorded job intents to created remote jobs, recording each side effect at once.

Phases (``runner.adapters.state.PHASES``): planned -> uploaded -> submitting -> submitted.
``submitting`` is written BEFORE the create call: a job found in that phase (a crash, a lost
reply) is first looked for by its display name and adopted; only if the service has no such
job is it created again. A 429 on create is a clear "no": back to ``uploaded``.
Called by the CLI's apply and by the daemon, after ``reconcile.apply_manifest``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from runner import crashpoints
from runner.adapters import media, sources
from runner.adapters.state import JobRow, now
from runner.core.jobs import RemoteJob
from runner.engine import caching
from runner.engine.runtime import Runtime, log
from runner.errors import PermanentBackendError, TransientBackendError, UnclearCreateError

UPLOAD_MAX_AGE_S = 46 * 3600  # uploaded files expire after 48 h
MEDIA_MIN_LIFE_S = 25 * 3600  # a media file must outlive the job's 24 h in the queue


@dataclass
class SubmitReport:
    created: int = 0
    adopted: int = 0
    waiting: int = 0  # intents left for a later round (back-off, quota)
    abandoned: int = 0
    retry_after: float = 0.0


def submit_pending(rt: Runtime, *, manifests: set[str] | None = None) -> SubmitReport:
    """Push every job in planned / uploaded / submitting forward, within the job limit."""
    report = SubmitReport()
    pending = [
        job
        for job in rt.state.jobs(live=True)
        if job.phase in ("planned", "uploaded", "submitting")
        and job.kind == "batch"
        and (manifests is None or job.manifest in manifests)
    ]
    if any(job.phase == "submitting" for job in pending):
        _adopt_lost(rt, pending, report)
        pending = [rt.state.job(job.id) for job in pending]
        pending = [job for job in pending if job.phase in ("planned", "uploaded", "submitting")]
    submitted = [job for job in rt.state.jobs(live=True) if job.phase == "submitted"]
    in_flight = len(submitted)
    enqueued: dict[str, int] = {}
    for job in submitted:
        if job.remote_state in (None, "pending", "running"):
            enqueued[job.model] = enqueued.get(job.model, 0) + job.input_tokens_est
    for job in pending:
        reason = _queued(rt, job, in_flight, enqueued)
        if reason is not None:
            report.waiting += 1
            if job.error != reason:
                rt.state.update_job(job.id, error=reason)
            continue
        try:
            if _advance(rt, job, report):
                in_flight += 1
                enqueued[job.model] = enqueued.get(job.model, 0) + job.input_tokens_est
        except TransientBackendError as exc:
            report.waiting += 1
            report.retry_after = min(max(report.retry_after, exc.delay), rt.settings.max_backoff_s)
            rt.backoff_until = time.monotonic() + report.retry_after
            rt.state.update_job(job.id, error=str(exc))
            rt.state.event("backoff", str(exc), manifest=job.manifest, job=job.id)
            log.warning("%s: %s; retrying in %.0fs", job.display_name, exc, exc.delay)
        except PermanentBackendError as exc:
            report.abandoned += 1
            rt.state.update_job(job.id, phase="abandoned", error=str(exc))
            rt.state.update_manifest(job.manifest, last_error=str(exc))
            rt.state.event("abandoned", str(exc), manifest=job.manifest, job=job.id)
            log.error("%s: %s", job.display_name, exc)
    return report


def _queued(rt: Runtime, job: JobRow, in_flight: int, enqueued: dict[str, int]) -> str | None:
    """Why ``job`` must wait (admission control), or None when it may go now."""
    if time.monotonic() < rt.backoff_until:
        return "queued: the API asked to back off (429)"
    limit = rt.settings.max_concurrent_jobs
    if in_flight >= limit:
        return f"queued: {in_flight} jobs in flight (limit {limit})"
    budget = rt.settings.enqueued_tokens.get(job.model)
    waiting_tokens = enqueued.get(job.model, 0)
    if budget is not None and waiting_tokens and waiting_tokens + job.input_tokens_est > budget:
        return (
            f"queued: {waiting_tokens:,} + {job.input_tokens_est:,} tokens would pass the "
            f"enqueued-token budget of {job.model} ({budget:,})"
        )
    return None


def _advance(rt: Runtime, job: JobRow, report: SubmitReport) -> bool:
    """Take one job as far as a created remote job; True when it was created or adopted."""
    if job.phase == "uploaded" and not job.inline and _upload_expired(job):
        rt.state.update_job(job.id, phase="planned", input_file=None)
        job = rt.state.job(job.id)
    if job.phase == "planned":
        job = _upload(rt, job)
    if job.phase == "submitting":
        found = _find(rt, job.display_name)
        if found is not None:
            _record_created(rt, job, found, adopted=True)
            report.adopted += 1
            return True
    rt.state.update_job(job.id, phase="submitting")
    crashpoints.reached("create_sent")
    try:
        remote = rt.backend.create_job(
            model=job.model,
            display_name=job.display_name,
            src_file=None if job.inline else job.input_file,
            inline=_input_path(rt, job) if job.inline else None,
        )
    except UnclearCreateError:
        found = _find(rt, job.display_name)
        if found is None:
            raise  # stays in `submitting`: the next round looks again before creating
        _record_created(rt, job, found, adopted=True)
        report.adopted += 1
        return True
    except (TransientBackendError, PermanentBackendError):
        rt.state.update_job(job.id, phase="uploaded")  # a clear refusal: nothing was created
        raise
    crashpoints.reached("create_answered")
    _record_created(rt, job, remote, adopted=False)
    crashpoints.reached("job_recorded")
    report.created += 1
    return True


def _upload(rt: Runtime, job: JobRow) -> JobRow:
    path = _input_path(rt, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    cache_name = caching.name_for(rt, job.manifest, job.cache_digest) if job.cache_digest else None
    uris = _media_uris(rt, job)
    sources.write_jsonl(Path(job.request_file), path, cache_name=cache_name, media_uris=uris)
    if job.bytes <= rt.settings.inline_max_bytes:
        rt.state.update_job(job.id, phase="uploaded", inline=1)
    else:
        name = rt.backend.upload_jsonl(path, display_name=job.display_name)
        crashpoints.reached("uploaded")
        rt.state.update_job(job.id, phase="uploaded", input_file=name)
        rt.state.event(
            "uploaded", f"{name} ({job.requests} requests)", manifest=job.manifest, job=job.id
        )
    return rt.state.job(job.id)


def _media_uris(rt: Runtime, job: JobRow) -> dict[str, str]:
    """Upload each media file the job needs that has no upload living long enough; sha -> uri.

    An uploaded file lives 48 h; the job may wait up to 24 h in the queue, so a file is
    uploaded again when less than MEDIA_MIN_LIFE_S of it is left.
    """
    count = media.media_columns(Path(job.request_file))
    uris = {}
    for sha, path, mime in media.files_of(Path(job.request_file), count):
        known = rt.state.media_file(sha)
        if known is not None and _seconds_left(known[1]) > MEDIA_MIN_LIFE_S:
            uris[sha] = known[0]
            continue
        if not Path(path).is_file():
            raise PermanentBackendError(f"media file {path} is gone since the plan")
        uri, expire = rt.backend.upload_media(Path(path), mime_type=mime, display_name=sha[:40])
        rt.state.add_media_file(sha, uri, expire)
        uris[sha] = uri
    if uris:
        rt.state.event("media", f"{len(uris)} media file(s) ready", manifest=job.manifest)
    return uris


def _seconds_left(expire_time: str) -> float:
    return datetime.fromisoformat(expire_time).timestamp() - time.time()


def _input_path(rt: Runtime, job: JobRow) -> Path:
    return rt.inputs_dir() / f"{job.intent}.jsonl"


def _upload_expired(job: JobRow) -> bool:
    updated = datetime.fromisoformat(job.updated_at).timestamp()
    return time.time() - updated > UPLOAD_MAX_AGE_S


def _find(rt: Runtime, display_name: str) -> RemoteJob | None:
    for remote in rt.backend.list_jobs():
        if remote.display_name == display_name:
            return remote
    return None


def _adopt_lost(rt: Runtime, pending: list[JobRow], report: SubmitReport) -> None:
    """One listing for every job whose create may have happened."""
    lost = {job.display_name: job for job in pending if job.phase == "submitting"}
    for remote in rt.backend.list_jobs():
        job = lost.pop(remote.display_name, None)
        if job is not None:
            _record_created(rt, job, remote, adopted=True)
            report.adopted += 1
        if not lost:
            return


def _record_created(rt: Runtime, job: JobRow, remote: RemoteJob, *, adopted: bool) -> None:
    rt.state.update_job(
        job.id,
        phase="submitted",
        remote_name=remote.name,
        remote_state=remote.state.value,
        error=None,
        submitted_at=now(),
    )
    verb = "adopted" if adopted else "created"
    rt.state.event(
        verb, f"{remote.name} ({job.requests} requests)", manifest=job.manifest, job=job.id
    )
    log.info("%s: %s %s", job.manifest, verb, remote.name)
    _input_path(rt, job).unlink(missing_ok=True)
