"""Follow submitted jobs to the end: poll, download, ingest, and write the ledger.

One paged listing per poll finds every job's state (a single get only for jobs the listing
did not reach). A finished job is downloaded to the state directory (phase ``downloaded``)
and then ingested in one results transaction (phase ``ingested``); a busy results file
leaves it ``downloaded`` for the next poll. Called by the CLI's apply --wait and the daemon.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from runner import crashpoints
from runner.adapters import ledger, results
from runner.adapters.state import JobRow
from runner.core.durations import parse_duration
from runner.core.jobs import JobState, RemoteJob
from runner.core.loader import LoadedManifest
from runner.engine import caching
from runner.engine.reconcile import result_path, version_of
from runner.engine.runtime import Runtime, log
from runner.errors import BackendError, StoreBusyError

DOWNLOAD_ATTEMPTS = 3


@dataclass
class FollowReport:
    live: int = 0
    finished: int = 0
    ingested: int = 0
    busy: int = 0
    failed_lines: set[str] = field(default_factory=set)  # manifests to look at for retries


def poll(rt: Runtime) -> None:
    """Refresh the remote state of every submitted job."""
    watching = {
        job.remote_name: job
        for job in rt.state.jobs(live=True)
        if job.phase == "submitted" and job.remote_name
    }
    if not watching:
        return
    seen: dict[str, RemoteJob] = {}
    for remote in rt.backend.list_jobs():
        if remote.name in watching:
            seen[remote.name] = remote
            if len(seen) == len(watching):
                break
    for name, job in watching.items():
        remote = seen.get(name) or rt.backend.get_job(name)
        if remote.state.value != job.remote_state or remote.succeeded_count != job.succeeded:
            rt.state.update_job(
                job.id,
                remote_state=remote.state.value,
                succeeded=remote.succeeded_count,
                failed=remote.failed_count,
            )
        if remote.state.terminal:
            _download(rt, rt.state.job(job.id), remote)
        else:
            _enforce_deadline(rt, rt.state.job(job.id))


def _enforce_deadline(rt: Runtime, job: JobRow) -> None:
    """Cancel a job pending or running past its manifest's ``policy.deadline``.

    The cancelled job's requests come back as failed lines and are resubmitted like any
    retryable failure (up to ``policy.retries``).
    """
    row = rt.state.manifest(job.manifest)
    if job.submitted_at is None or row is None or not job.remote_name:
        return
    if (job.error or "").startswith("deadline"):
        return  # cancelled already; waiting for the service to say so
    deadline = parse_duration(json.loads(row.policy or "{}").get("deadline", "36h"))
    age = (datetime.now(UTC) - datetime.fromisoformat(job.submitted_at)).total_seconds()
    if age <= deadline:
        return
    why = f"deadline: still {job.remote_state} after {age:.0f}s (policy.deadline {deadline:.0f}s)"
    try:
        rt.backend.cancel_job(job.remote_name)
    except BackendError as exc:
        log.warning("%s: cancel of %s failed: %s", job.manifest, job.remote_name, exc)
        return
    rt.state.update_job(job.id, error=why)
    rt.state.event(
        "deadline", f"{job.remote_name} cancelled: {why}", manifest=job.manifest, job=job.id
    )
    log.warning("%s: %s cancelled: %s", job.manifest, job.remote_name, why)


def _download(rt: Runtime, job: JobRow, remote: RemoteJob) -> None:
    dest = result_path(rt, job)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if remote.state is JobState.SUCCEEDED:
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            rt.backend.download_results(remote, dest)
            if _complete(dest, job.requests) or attempt == DOWNLOAD_ATTEMPTS:
                break
            log.warning("%s: result file incomplete, downloading again", remote.name)
        error = None
    else:
        error = remote.error or job.error or f"job {remote.state.value}"
        ledger.failed_job_lines(
            job_requests=Path(job.request_file),
            message=f"batch job {remote.name} ended {remote.state.value}: {error}",
            status=f"JOB_{remote.state.value.upper()}",
            out=dest,
        )
    crashpoints.reached("downloaded")
    rt.state.update_job(job.id, phase="downloaded", error=error)
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


def ingest_ready(rt: Runtime, manifests: dict[str, LoadedManifest]) -> FollowReport:
    """Ingest every downloaded job; the manifest gives the table and schema."""
    report = FollowReport()
    for job in rt.state.jobs(live=True):
        if job.phase != "downloaded":
            continue
        loaded = manifests.get(job.manifest)
        row = rt.state.manifest(job.manifest)
        table = loaded.manifest.table if loaded else (row.table_name if row else job.manifest)
        schema = loaded.manifest.spec.output_schema if loaded else None
        result_file = result_path(rt, job)
        try:
            summary = results.ingest(
                results_db=rt.results_db,
                table=table,
                result_file=result_file,
                requests=Path(job.request_file),
                current=Path(row.request_set) if row and row.request_set else None,
                output_schema=schema,
                price=rt.prices.for_model(job.model),
                paid=job.kind == "batch",
                on_schema_change=loaded.manifest.spec.output.on_schema_change
                if loaded
                else "add_columns",
                job=job.remote_name or job.display_name,
                manifest=job.manifest,
                manifest_version=version_of(loaded) if loaded else job.digest[:12],
                commit=job.commit_sha,
            )
        except StoreBusyError as exc:
            report.busy += 1
            rt.state.update_manifest(job.manifest, last_error=f"ingest waiting: {exc}")
            rt.state.event("busy", str(exc), manifest=job.manifest, job=job.id)
            continue
        if job.kind == "batch":
            ledger.store_answers(
                job_requests=Path(job.request_file),
                result_file=result_file,
                out=rt.answers_dir() / f"{job.id}.parquet",
            )
        crashpoints.reached("ingest_committed")
        outcome = ledger.record_outcome(
            job_requests=Path(job.request_file),
            result_file=result_file,
            job_error=None,
            out=rt.ledger_dir(job.manifest) / f"{job.id}.parquet",
        )
        rt.state.update_job(
            job.id,
            phase="ingested",
            succeeded=outcome.succeeded,
            failed=outcome.failed,
            cost_usd=summary.cost_usd,
            prompt_tokens=summary.prompt_tokens,
            output_tokens=summary.output_tokens,
        )
        rt.state.event(
            "ingested",
            json.dumps(
                {
                    "rows": summary.rows,
                    "succeeded": summary.succeeded,
                    "failed": summary.failed,
                    "missing": summary.missing_keys,
                    "cost_usd": round(summary.cost_usd, 6),
                }
            ),
            manifest=job.manifest,
            job=job.id,
        )
        result_file.unlink(missing_ok=True)
        if row is not None and (row.last_error or "").startswith("ingest waiting"):
            rt.state.update_manifest(job.manifest, last_error=None)
        report.ingested += 1
        if outcome.failed:
            report.failed_lines.add(job.manifest)
    return report


def follow_once(rt: Runtime, manifests: dict[str, LoadedManifest]) -> FollowReport:
    """One poll and one ingest pass; BackendErrors in polling are logged, not raised."""
    try:
        poll(rt)
    except BackendError as exc:
        log.warning("poll: %s", exc)
        rt.state.event("poll_error", str(exc))
    report = ingest_ready(rt, manifests)
    caching.maintain(rt)
    live = rt.state.jobs(live=True)
    report.live = len(live)
    return report
