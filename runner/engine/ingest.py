"""Ingest downloaded jobs into the results database and record their outcome per row.

A downloaded job is ingested in one results transaction (``rt.results.ingest``), its answers go
to the answer store and its outcome per row to the ledger, then it is ``ingested``; a busy
results file leaves it ``downloaded`` for the next cycle. Files the service holds for us are
deleted once no live job needs them (uploads count against the project's 20 GB). Called by
``runner.engine.cycle``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from runner import crashpoints
from runner.adapters import ledger, media
from runner.adapters.state import JobRow
from runner.core.lifecycle import Phase
from runner.core.loader import LoadedManifest
from runner.engine import integrity
from runner.engine.lifecycle import result_path
from runner.engine.reconcile import version_of
from runner.engine.runtime import Runtime, fields, log
from runner.errors import BackendError, StoreBusyError


@dataclass
class IngestReport:
    ingested: int = 0
    busy: int = 0
    failed_lines: set[str] = field(default_factory=set)  # manifests to look at for retries


def ingest_ready(rt: Runtime, manifests: dict[str, LoadedManifest]) -> IngestReport:
    """Ingest every downloaded job; the manifest gives the table and schema."""
    report = IngestReport()
    for job in rt.state.jobs(phases=(Phase.DOWNLOADED,)):
        loaded = manifests.get(job.manifest)
        row = rt.state.manifest(job.manifest)
        table = loaded.manifest.table if loaded else (row.table_name if row else job.manifest)
        schema = loaded.manifest.spec.output_schema if loaded else None
        result_file = result_path(rt, job)
        try:
            summary = rt.results.ingest(
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
                keep=integrity.kept_path(rt.settings, table, job.id),
                owner=integrity.owner_of(rt),
            )
        except StoreBusyError as exc:
            report.busy += 1
            integrity.note_busy(rt.state, job.manifest, f"ingest waiting: {exc}")
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
        rt.state.transition(
            job.id,
            Phase.INGESTED,
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
        _delete_input(rt, rt.state.job(job.id))
        integrity.caught_up(rt.state, job.manifest)  # ingest catches the view up
        report.ingested += 1
        log.info(
            "%s: ingested %s (%d succeeded, %d failed)",
            job.manifest,
            job.remote_name or job.display_name,
            summary.succeeded,
            summary.failed,
            extra=fields(event="ingested", job=rt.state.job(job.id)),
        )
        if outcome.failed:
            report.failed_lines.add(job.manifest)
    return report


def _delete_input(rt: Runtime, job: JobRow) -> None:
    """The job's uploaded JSONL is no longer needed once its answers are ingested."""
    if not job.input_file:
        return
    try:
        rt.backend.delete_file(job.input_file)
    except BackendError as exc:
        log.warning(
            "%s: could not delete %s: %s",
            job.manifest,
            job.input_file,
            exc,
            extra=fields(event="delete_failed", job=job),
        )
        return
    rt.state.update_job(job.id, input_file=None)
    rt.state.event("file_deleted", job.input_file, manifest=job.manifest, job=job.id)


def delete_unneeded_media(rt: Runtime) -> None:
    """Delete uploaded media files that no job still to be created or running needs."""
    uploads = rt.state.media_files()
    if not uploads:
        return
    needed: set[str] = set()
    to_run = (Phase.PLANNED, Phase.UPLOADED, Phase.SUBMITTING, Phase.SUBMITTED)
    for job in rt.state.jobs(phases=to_run):
        path = Path(job.request_file)
        needed |= {sha for sha, _, _ in media.files_of(path, media.media_columns(path))}
    for sha, name, _, _ in uploads:
        if sha in needed or not name:
            continue
        try:
            rt.backend.delete_file(name)
        except BackendError as exc:
            log.warning("could not delete media %s: %s", name, exc)
            continue
        rt.state.media_deleted(sha)
        rt.state.event("file_deleted", f"{name} (media, no job needs it)")
