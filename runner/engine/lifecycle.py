"""Apply the lifecycle's decisions to jobs, recording every side effect as it happens.

``runner.core.lifecycle.step`` decides; this module gathers what it needs (the state's job
row, the service's view of the remote job), does what it says (upload, create, adopt, cancel,
download) and records each move once through ``StateStore.transition``. The intent is stored
before the create; a create whose outcome is unclear leaves the job ``submitting``, and the
job is then looked for by its display name for ``settings.adopt_grace_s`` (the list may lag)
before it may be created again.

Each job is its own fault boundary: whatever one job raises becomes that job's error (state,
event, one log line with the traceback for the unexpected) and the others go on.
Called by ``runner.engine.cycle``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from runner import crashpoints
from runner.adapters import ledger, media, sources
from runner.adapters.state import JobRow
from runner.core.clock import parse_time, stamp
from runner.core.durations import parse_duration
from runner.core.jobs import INLINE_MAX_REQUESTS, JobState, RemoteJob
from runner.core.lifecycle import (
    TO_SUBMIT,
    Action,
    Adopt,
    Cancel,
    Create,
    Download,
    KeepLooking,
    LifecyclePolicy,
    Limits,
    Phase,
    Reupload,
    Upload,
    admit,
    step,
    terminal_outcome,
)
from runner.core.manifest import Policy
from runner.engine import caching
from runner.engine.runtime import Runtime, fields, log
from runner.errors import (
    BackendError,
    PermanentBackendError,
    ResultsMismatchError,
    TransientBackendError,
    UnclearCreateError,
)

DOWNLOAD_ATTEMPTS = 3
CREDENTIAL_CODES = (401, 403)  # the runner's key or project is refused: nothing job-specific


@dataclass
class SubmitReport:
    created: int = 0
    adopted: int = 0
    waiting: int = 0  # intents left for a later round (back-off, quota, a lost create)
    abandoned: int = 0
    backend_errors: list[str] = field(default_factory=list)  # permanent API refusals
    api_errors: list[str] = field(default_factory=list)  # transient failures other than 429


def policy_for(rt: Runtime, job: JobRow) -> LifecyclePolicy:
    """The time rules for ``job``: its manifest's deadline, the settings' grace."""
    row = rt.state.manifest(job.manifest)
    policy = row.policy_spec if row else Policy()
    return LifecyclePolicy(
        deadline_s=parse_duration(policy.deadline),
        adopt_grace_s=rt.settings.adopt_grace_s,
    )


# -- the submit side: planned / uploaded / submitting -> submitted -------------------------
def submit_pending(rt: Runtime, *, manifests: set[str] | None = None) -> SubmitReport:
    """Push every job that is not yet created forward, within the limits."""
    report = SubmitReport()
    pending = [
        job
        for job in rt.state.jobs(phases=TO_SUBMIT)
        if job.kind == "batch" and (manifests is None or job.manifest in manifests)
    ]
    if not pending:
        return report
    found = _look_for(rt, {j.display_name for j in pending if j.phase is Phase.SUBMITTING})
    if found is None:  # the listing failed: no lost create may be created blindly now
        pending = [j for j in pending if j.phase is not Phase.SUBMITTING]
        report.waiting += len(rt.state.jobs(phases=(Phase.SUBMITTING,)))
        found = {}
    submitted = rt.state.jobs(phases=(Phase.SUBMITTED,))
    in_flight = len(submitted)
    enqueued: dict[str, int] = {}
    for job in submitted:
        if job.remote_state in (None, "pending", "running"):
            enqueued[job.model] = enqueued.get(job.model, 0) + job.input_tokens_est
    limits = Limits(rt.settings.max_concurrent_jobs, rt.settings.enqueued_tokens)
    for job in pending:
        remote = found.get(job.display_name)
        if remote is None:
            reason = admit(
                model=job.model,
                tokens=job.input_tokens_est,
                in_flight=in_flight,
                enqueued=enqueued,
                limits=limits,
                backoff=rt.backing_off(),
            )
            if reason is not None:
                report.waiting += 1
                if job.error != reason:
                    rt.state.update_job(job.id, error=reason)
                continue
        if _guarded(rt, job, report, partial(_advance_alone, rt, job, remote, report)):
            in_flight += 1
            enqueued[job.model] = enqueued.get(job.model, 0) + job.input_tokens_est
    return report


def _advance_alone(
    rt: Runtime, job: JobRow, remote: RemoteJob | None, report: SubmitReport
) -> bool:
    """#18: ``_advance`` under the intent's lock, held across the create and its record, on
    the job as it is now (another process may have moved it). Held elsewhere: wait a round."""
    with rt.state.intent_lock(job.intent) as held:
        if not held:
            report.waiting += 1
            return False
        job = rt.state.job(job.id)
        if job.phase not in TO_SUBMIT:
            return False
        return _advance(rt, job, remote, report)


def _advance(rt: Runtime, job: JobRow, remote: RemoteJob | None, report: SubmitReport) -> bool:
    """Step one job until it is created, adopted or must wait; True when it is in flight."""
    policy = policy_for(rt, job)
    for _ in range(6):  # planned -> uploaded -> submitting -> submitted at most, plus re-uploads
        action: Action = step(job.facts(), remote, now=rt.clock.now(), policy=policy)
        if isinstance(action, Upload):
            job = _upload(rt, job)
        elif isinstance(action, Reupload):
            rt.state.event("reupload", action.reason, manifest=job.manifest, job=job.id)
            job = rt.state.transition(job.id, Phase.PLANNED, input_file=None, input_expires=None)
        elif isinstance(action, Adopt):
            _record_created(rt, job, action.remote, adopted=True)
            report.adopted += 1
            return True
        elif isinstance(action, KeepLooking):
            why = (
                f"looking for a create whose reply was lost (since {stamp(action.since)}); "
                f"it may be created again after {stamp(action.until)}"
            )
            rt.state.update_job(job.id, lookup_since=stamp(action.since), error=why)
            report.waiting += 1
            return False
        elif isinstance(action, Create):
            return _create(rt, job, report)
        else:
            return False
    raise AssertionError(f"{job.display_name}: no progress")


def _create(rt: Runtime, job: JobRow, report: SubmitReport) -> bool:
    job = rt.state.transition(job.id, Phase.SUBMITTING, lookup_since=None)
    crashpoints.reached("create_sent")
    try:
        remote = rt.backend.create_job(
            model=job.model,
            display_name=job.display_name,
            src_file=None if job.inline else job.input_file,
            inline=_input_path(rt, job) if job.inline else None,
            task=job.task,
        )
    except UnclearCreateError:
        found = (_look_for(rt, {job.display_name}) or {}).get(job.display_name)
        if found is None:
            rt.state.update_job(job.id, lookup_since=stamp(rt.clock.now()))
            raise  # stays `submitting`: looked for again before any new create
        _record_created(rt, job, found, adopted=True)
        report.adopted += 1
        return True
    except (TransientBackendError, PermanentBackendError) as exc:
        # a clear refusal: nothing was created. A 4xx may mean the input file is gone (the
        # service deletes uploads after 48 h); a 429 is about quota, not the file.
        refused = isinstance(exc, PermanentBackendError)
        if refused and not job.inline and job.input_file and not _input_alive(rt, job.input_file):
            rt.state.transition(job.id, Phase.PLANNED, input_file=None, input_expires=None)
            rt.state.event(
                "reupload",
                f"create refused ({exc}); its input file {job.input_file} is gone, uploading again",
                manifest=job.manifest,
                job=job.id,
            )
            return False
        rt.state.transition(job.id, Phase.UPLOADED)
        raise
    crashpoints.reached("create_answered")
    _record_created(rt, job, remote, adopted=False)
    crashpoints.reached("job_recorded")
    report.created += 1
    return True


def _input_alive(rt: Runtime, name: str) -> bool:
    """Whether an uploaded input still exists (unknown counts as alive: no blind re-upload)."""
    try:
        return rt.backend.file_exists(name)
    except BackendError:
        return True


def _guarded(rt: Runtime, job: JobRow, report: SubmitReport, work: Callable[[], bool]) -> bool:
    """Run ``work()`` for one job; every exception becomes this job's recorded error."""
    try:
        return bool(work())
    except TransientBackendError as exc:
        report.waiting += 1
        if exc.code != 429:
            report.api_errors.append(str(exc))
        wait = rt.retry.wait(1, hinted=exc.delay)
        rt.back_off(wait, _backoff_reason(exc))
        rt.state.update_job(job.id, error=str(exc))
        rt.state.event("backoff", str(exc), manifest=job.manifest, job=job.id)
        log.warning(
            "%s: %s; retrying in %.0fs",
            job.display_name,
            exc,
            wait,
            extra=fields(event="backoff", job=job),
        )
    except PermanentBackendError as exc:
        report.backend_errors.append(str(exc))
        rt.state.update_manifest(job.manifest, last_error=str(exc))
        if exc.code in CREDENTIAL_CODES or exc.status in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            # the key or project is refused: the job is fine, the runner is not; wait for a fix
            rt.back_off(rt.settings.max_backoff_s, f"the API refused our credentials: {exc}")
            rt.state.update_job(job.id, error=str(exc))
            report.waiting += 1
        else:
            report.abandoned += 1
            _abandon(rt, rt.state.job(job.id), str(exc))
        log.error("%s: %s", job.display_name, exc, extra=fields(event="refused", job=job))
    except Exception as exc:  # the fault boundary: one job's bug never stops the others
        message = f"internal error: {type(exc).__name__}: {exc}"
        log.exception("%s: %s", job.display_name, message, extra=fields(event="error", job=job))
        rt.state.update_job(job.id, error=message)
        rt.state.update_manifest(job.manifest, last_error=message)
        rt.state.event("error", message, manifest=job.manifest, job=job.id)
        report.waiting += 1
    return False


def _backoff_reason(exc: TransientBackendError) -> str:
    if exc.code == 429:
        return f"the API asked to back off (429): {exc}"
    return f"the API is unavailable: {exc}"


def _abandon(rt: Runtime, job: JobRow, why: str) -> None:
    if job.phase is Phase.SUBMITTING:
        job = rt.state.transition(job.id, Phase.UPLOADED)
    rt.state.transition(job.id, Phase.ABANDONED, error=why)
    rt.state.event("abandoned", why, manifest=job.manifest, job=job.id)


def _upload(rt: Runtime, job: JobRow) -> JobRow:
    path = _input_path(rt, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    cache_name = caching.name_for(rt, job.manifest, job.cache_digest) if job.cache_digest else None
    uris = _media_uris(rt, job)
    sources.write_jsonl(Path(job.request_file), path, cache_name=cache_name, media_uris=uris)
    if job.bytes <= rt.settings.inline_max_bytes and job.requests <= INLINE_MAX_REQUESTS:
        return rt.state.transition(job.id, Phase.UPLOADED, inline=1)
    uploaded = rt.backend.upload_jsonl(path, display_name=job.display_name)
    crashpoints.reached("uploaded")
    job = rt.state.transition(
        job.id, Phase.UPLOADED, input_file=uploaded.name, input_expires=uploaded.expire_time
    )
    rt.state.event(
        "uploaded",
        f"{uploaded.name} ({job.requests} requests, expires {uploaded.expire_time})",
        manifest=job.manifest,
        job=job.id,
    )
    return job


def _media_uris(rt: Runtime, job: JobRow) -> dict[str, str]:
    """Upload each media file the job needs that has no upload living long enough; sha -> uri."""
    count = media.media_columns(Path(job.request_file))
    need = LifecyclePolicy().file_min_life_s
    uris = {}
    for sha, path, mime in media.files_of(Path(job.request_file), count):
        known = rt.state.media_file(sha)
        if known is not None and _seconds_left(rt, known[1]) > need:
            uris[sha] = known[0]
            continue
        if not Path(path).is_file():
            raise PermanentBackendError(f"media file {path} is gone since the plan")
        uploaded = rt.backend.upload_media(Path(path), mime_type=mime, display_name=sha[:40])
        rt.state.add_media_file(
            sha, uploaded.uri, uploaded.expire_time, name=uploaded.name, size=uploaded.size
        )
        uris[sha] = uploaded.uri
    if uris:
        rt.state.event("media", f"{len(uris)} media file(s) ready", manifest=job.manifest)
    return uris


def _seconds_left(rt: Runtime, expire_time: str) -> float:
    return (parse_time(expire_time) - rt.clock.now()).total_seconds()


def _input_path(rt: Runtime, job: JobRow) -> Path:
    return rt.inputs_dir() / f"{job.intent}.jsonl"


def _look_for(rt: Runtime, names: set[str]) -> dict[str, RemoteJob] | None:
    """Remote jobs with these display names, from a bounded listing; None if it failed."""
    try:
        return _listed(rt, names, by=lambda remote: remote.display_name)
    except BackendError as exc:
        log.warning("listing jobs to find lost creates: %s", exc)
        if isinstance(exc, TransientBackendError):
            rt.back_off(rt.retry.wait(1, hinted=exc.delay), _backoff_reason(exc))
        return None


def _listed(
    rt: Runtime, wanted: set[str], *, by: Callable[[RemoteJob], str]
) -> dict[str, RemoteJob]:
    """The remote jobs whose ``by`` is in ``wanted``, reading list pages (newest first, at
    most ``settings.max_list_pages``) only until all are seen."""
    found: dict[str, RemoteJob] = {}
    if not wanted:
        return found
    for remote in rt.backend.list_jobs(max_pages=rt.settings.max_list_pages):
        if by(remote) in wanted:
            found[by(remote)] = remote
            if len(found) == len(wanted):
                break
    return found


def _record_created(rt: Runtime, job: JobRow, remote: RemoteJob, *, adopted: bool) -> None:
    rt.state.transition(
        job.id,
        Phase.SUBMITTED,
        remote_name=remote.name,
        remote_state=remote.state.value,
        error=None,
        lookup_since=None,
        submitted_at=rt.state.now(),
    )
    verb = "adopted" if adopted else "created"
    rt.state.event(
        verb, f"{remote.name} ({job.requests} requests)", manifest=job.manifest, job=job.id
    )
    log.info("%s: %s %s", job.manifest, verb, remote.name, extra=fields(event=verb, job=job))
    _input_path(rt, job).unlink(missing_ok=True)


# -- the follow side: submitted -> downloaded ----------------------------------------------
def poll(rt: Runtime) -> None:
    """Refresh every submitted job from one bounded listing, then step each one."""
    watching = {
        job.remote_name: job for job in rt.state.jobs(phases=(Phase.SUBMITTED,)) if job.remote_name
    }
    if not watching:
        return
    seen: dict[str, RemoteJob] = {}
    try:
        seen = _listed(rt, set(watching), by=lambda remote: remote.name)
    except BackendError as exc:
        log.warning("poll: %s", exc)
        rt.state.event("poll_error", str(exc))
    report = SubmitReport()
    for name, job in watching.items():
        _guarded(rt, job, report, partial(_follow, rt, job, seen.get(name)))


def _follow(rt: Runtime, job: JobRow, remote: RemoteJob | None) -> bool:
    remote = remote or rt.backend.get_job(job.remote_name or "")
    if remote.state.value != job.remote_state or remote.succeeded_count != job.succeeded:
        rt.state.update_job(
            job.id,
            remote_state=remote.state.value,
            succeeded=remote.succeeded_count,
            failed=remote.failed_count,
        )
    action = step(job.facts(), remote, now=rt.clock.now(), policy=policy_for(rt, job))
    if isinstance(action, Download):
        _download(rt, rt.state.job(job.id), action.remote)
    elif isinstance(action, Cancel):
        cancel(rt, job, action.reason)
    return False


def cancel(rt: Runtime, job: JobRow, why: str) -> None:
    """Ask the service to cancel ``job``; it is followed to the end like any other, and what
    it answered before the cancel is downloaded and ingested (it was paid for)."""
    if job.phase is not Phase.SUBMITTED or not job.remote_name or job.cancel_reason:
        return
    try:
        rt.backend.cancel_job(job.remote_name)
    except BackendError as exc:
        log.warning(
            "%s: cancel of %s failed: %s",
            job.manifest,
            job.remote_name,
            exc,
            extra=fields(event="cancel_failed", job=job),
        )
        return
    rt.state.update_job(job.id, cancel_reason=why, error=why)
    kind = "deadline" if why.startswith("deadline") else "cancelled"
    rt.state.event(kind, f"{job.remote_name}: {why}", manifest=job.manifest, job=job.id)
    log.warning(
        "%s: %s cancelled: %s",
        job.manifest,
        job.remote_name,
        why,
        extra=fields(event=kind, job=job),
    )


def _download(rt: Runtime, job: JobRow, remote: RemoteJob) -> None:
    """Fetch what a finished job produced; keys it did not answer get the job's error."""
    dest = result_path(rt, job)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    produced = remote.result_file is not None or bool(job.inline)
    keys = ledger.job_keys(Path(job.request_file)) if job.inline else None
    try:
        if remote.state is JobState.SUCCEEDED:
            for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
                rt.backend.download_results(remote, dest, keys=keys)
                if _complete(dest, job.requests) or attempt == DOWNLOAD_ATTEMPTS:
                    break
                log.warning("%s: result file incomplete, downloading again", remote.name)
            error = None
        else:
            error = remote.error or job.cancel_reason or job.error or f"job {remote.state.value}"
            if produced:  # a cancelled or failed job may carry the answers it had already given
                try:
                    rt.backend.download_results(remote, dest, keys=keys)
                except ResultsMismatchError:
                    raise
                except PermanentBackendError as exc:
                    log.warning("%s: no partial results (%s)", remote.name, exc)
                    dest.unlink(missing_ok=True)
            ledger.complete_with_errors(
                job_requests=Path(job.request_file),
                result_file=dest,
                message=f"batch job {remote.name} ended {remote.state.value}: {error}",
                status=terminal_outcome(remote.state),
            )
    except ResultsMismatchError as exc:
        # paid answers that cannot be told apart: kept raw, never resent, and said loudly
        error = f"{exc} (raw output kept at {exc.raw_path})"
        dest.unlink(missing_ok=True)
        ledger.complete_with_errors(
            job_requests=Path(job.request_file), result_file=dest, message=error, status=exc.status
        )
        rt.state.update_manifest(job.manifest, last_error=error)
        log.error("%s: %s", job.manifest, error, extra=fields(event="mismatch", job=job))
    crashpoints.reached("downloaded")
    rt.state.transition(job.id, Phase.DOWNLOADED, error=error)
    rt.state.event(
        "finished", f"{remote.name} {remote.state.value}", manifest=job.manifest, job=job.id
    )


def _complete(path: Path, expected: int) -> bool:
    """A whole download: ends with a newline and has one line per request."""
    with path.open("rb") as handle:
        lines = sum(1 for _ in handle)
        if path.stat().st_size == 0:
            return expected == 0
        handle.seek(-1, 2)
        return handle.read(1) == b"\n" and lines >= expected


def result_path(rt: Runtime, job: JobRow) -> Path:
    """Where a finished job's result lines wait to be ingested."""
    return rt.results_dir() / f"{job.id}.jsonl"
