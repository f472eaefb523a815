"""What the commands return: the structured outcome behind ``-o json``, ``invoke`` and the page.

One pydantic model per document (``Plan``, ``Validation``, ``Status``, ``Diff``, ``Events``);
each carries ``apiVersion: gbatch/v1`` and its ``kind``, like a kubectl list. The text output
is rendered from the same models (``runner.cli.render``), so the two never disagree. The JSON
Schema of every document is ``docs/cli-output.schema.json`` (``output_schema()``; a test pins
the file to the models). Fields are only ever added within ``gbatch/v1``; renaming or removing
one is a new apiVersion. Built by ``runner.cli.commands`` from engine and state values.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runner.adapters.state import JobRow, ManifestRow
from runner.core.clock import parse_time
from runner.core.lifecycle import Phase
from runner.core.pricing import PriceTable
from runner.engine.reconcile import ASSUMED_OUTPUT_TOKENS, ManifestPlan
from runner.errors import ManifestError


class View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# -- plan ------------------------------------------------------------------------------------
class RequestCounts(View):
    total: int = Field(description="Requests of this manifest version.")
    new: int = Field(description="Keys never sent before.")
    changed: int = Field(description="Keys whose request (prompt, settings, model) changed.")
    retry: int = Field(description="Failed before; sent again.")
    unchanged: int = Field(description="Answered before with the same request: not sent.")
    in_flight: int = Field(description="Carried by a live job of this manifest.")
    removed: int = Field(description="Keys of the previous version no longer present.")
    exhausted: int = Field(description="Failed policy.retries times: not sent again.")
    reused: int = Field(description="Answered before elsewhere: copied at cost 0.")
    waiting: int = Field(description="In flight elsewhere: copied once answered.")
    to_submit: int = Field(description="Requests the jobs below will send.")


class PlannedJob(View):
    requests: int
    bytes: int


class CacheStorage(View):
    tokens: int
    hours: float
    rate_usd: float | None = Field(description="USD per 1M tokens per hour; null: unknown.")
    usd: float | None


class Estimate(View):
    input_tokens: int
    output_tokens: int = Field(description="At most: max_output_tokens (or 256) per request.")
    cost_usd: float | None = Field(description="At batch price; null when the model is unpriced.")
    basis: str = Field(description="How input tokens were counted.")
    cached_tokens: int
    cost_without_cache_usd: float | None
    cache_storage: CacheStorage | None


class PlanItem(View):
    name: str
    table: str
    model: str
    version: str
    requests: RequestCounts
    jobs: list[PlannedJob]
    estimate: Estimate
    spent_usd: float = Field(description="What this manifest's jobs cost so far.")
    blocked: str | None = Field(description="Why nothing will be submitted (cost cap, ...).")
    notes: list[str]


class Plan(View):
    apiVersion: Literal["gbatch/v1"] = "gbatch/v1"
    kind: Literal["Plan"] = "Plan"
    items: list[PlanItem]


def plan_item(p: ManifestPlan) -> PlanItem:
    d, e = p.diff, p.estimate
    storage = e.cache_storage
    return PlanItem(
        name=p.name,
        table=p.table,
        model=p.model,
        version=p.version,
        requests=RequestCounts(
            total=d.total,
            new=d.new,
            changed=d.changed,
            retry=d.retry,
            unchanged=d.unchanged,
            in_flight=d.in_flight,
            removed=d.removed,
            exhausted=d.exhausted,
            reused=d.reused,
            waiting=d.waiting,
            to_submit=d.submit_requests,
        ),
        jobs=[PlannedJob(requests=c.requests, bytes=c.bytes) for c in p.jobs],
        estimate=Estimate(
            input_tokens=e.input_tokens,
            output_tokens=e.output_tokens,
            cost_usd=e.cost_usd,
            basis=e.basis,
            cached_tokens=e.cached_tokens,
            cost_without_cache_usd=e.cost_without_cache_usd,
            cache_storage=None
            if storage is None
            else CacheStorage(
                tokens=storage.tokens, hours=storage.hours, rate_usd=storage.rate, usd=storage.usd
            ),
        ),
        spent_usd=p.spent_usd,
        blocked=p.blocked,
        notes=list(p.notes),
    )


def plan(plans: Sequence[ManifestPlan]) -> Plan:
    return Plan(items=[plan_item(p) for p in plans])


# -- validate --------------------------------------------------------------------------------
class Problem(View):
    path: str | None
    line: int = Field(description="1-based; 0 when unknown.")
    column: int
    field: str = Field(description="The manifest field, dotted; empty when the whole file.")
    message: str = Field(description="file:line:col: field: reason, as printed.")


class ValidManifest(View):
    path: str
    name: str
    table: str
    model: str
    labels: dict[str, str]


class Validation(View):
    apiVersion: Literal["gbatch/v1"] = "gbatch/v1"
    kind: Literal["Validation"] = "Validation"
    valid: bool
    items: list[ValidManifest]
    errors: list[Problem]
    warnings: list[str] = Field(description="Worth a look, not wrong (an unpriced model, ...).")


def problem(error: ManifestError) -> Problem:
    where = error.location
    return Problem(
        path=str(where.path) if where else None,
        line=where.line if where else 0,
        column=(where.column or 1) if where and where.line else 0,
        field=error.field,
        message=str(error),
    )


# -- status ----------------------------------------------------------------------------------
class Job(View):
    id: int
    manifest: str
    kind: str = Field(description="batch (sent to the API) or reuse (copied answers).")
    remote_name: str | None
    phase: str = Field(description="planned, uploaded, submitting, submitted, downloaded, ...")
    remote_state: str | None = Field(description="The API's state, lower case (running, ...).")
    requests: int
    succeeded: int
    failed: int
    cost_usd: float | None
    created_at: str
    updated_at: str
    age_s: float = Field(description="Seconds since the job was created (planned).")
    error: str | None


class ManifestStatus(View):
    name: str
    status: str = Field(description="ok, blocked, invalid, missing or removed.")
    table: str
    model: str
    path: str
    requests: int = Field(description="Requests of the current version.")
    jobs: dict[str, int] = Field(description="Jobs by state (remote state while submitted).")
    succeeded: int = Field(description="Answered rows of ingested jobs.")
    failed: int = Field(description="Failed rows of ingested jobs (retries count again).")
    pending: int = Field(description="Requests in live jobs (planned to downloaded).")
    progress: float = Field(description="succeeded + failed over that plus pending, 0..1.")
    cost_usd: float = Field(description="Cost so far at batch price.")
    estimate_usd: float | None = Field(
        description="Cost so far plus the live jobs' estimate (input tokens estimated, 256 "
        "output tokens per request); null when the model is unpriced."
    )
    commit: str | None
    last_error: str | None
    updated_at: str


class InvalidFile(View):
    path: str
    error: str
    since: str


class FilesStorage(View):
    bytes: int
    input_files: int
    media_files: int


class Event(View):
    id: int
    at: str
    manifest: str | None
    job: int | None
    kind: str
    message: str


class Status(View):
    apiVersion: Literal["gbatch/v1"] = "gbatch/v1"
    kind: Literal["Status"] = "Status"
    state_dir: str
    manifests: list[ManifestStatus]
    invalid_files: list[InvalidFile]
    files_storage: FilesStorage
    results: list[str] = Field(
        description="Whether every answer is in the results file, what is missing, the last "
        "repairs (the results file is rebuilt from the state)."
    )
    jobs: list[Job] | None = Field(description="Every job (status --jobs, the page); else null.")
    events: list[Event] | None = Field(description="The newest events (the page); else null.")


def _label(job: JobRow) -> str:
    return job.remote_state if job.phase is Phase.SUBMITTED and job.remote_state else job.phase


def job_view(job: JobRow, *, now: datetime) -> Job:
    return Job(
        id=job.id,
        manifest=job.manifest,
        kind=job.kind,
        remote_name=job.remote_name,
        phase=str(job.phase),
        remote_state=job.remote_state,
        requests=job.requests,
        succeeded=job.succeeded,
        failed=job.failed,
        cost_usd=job.cost_usd,
        created_at=job.created_at,
        updated_at=job.updated_at,
        age_s=round(max(0.0, (now - parse_time(job.created_at)).total_seconds()), 3),
        error=job.error,
    )


def manifest_status(m: ManifestRow, jobs: Sequence[JobRow], prices: PriceTable) -> ManifestStatus:
    own = [j for j in jobs if j.manifest == m.name]
    states: dict[str, int] = {}
    for j in own:
        states[_label(j)] = states.get(_label(j), 0) + 1
    ingested = [j for j in own if j.phase is Phase.INGESTED]
    succeeded = sum(j.succeeded for j in ingested)
    failed = sum(j.failed for j in ingested)
    live = [j for j in own if j.phase.live]
    pending = sum(j.requests for j in live)
    cost = sum(j.cost_usd or 0.0 for j in own)
    price = prices.for_model(m.model)
    estimate = None
    if price is not None:
        estimate = cost + sum(
            j.requests
            * price.cost(
                {
                    "promptTokenCount": j.input_tokens_est / j.requests,
                    "candidatesTokenCount": ASSUMED_OUTPUT_TOKENS,
                }
            )
            for j in live
            if j.requests and j.kind == "batch"
        )
    answered = succeeded + failed
    return ManifestStatus(
        name=m.name,
        status=m.status,
        table=m.table_name,
        model=m.model,
        path=m.path,
        requests=m.requests,
        jobs=dict(sorted(states.items())),
        succeeded=succeeded,
        failed=failed,
        pending=pending,
        progress=round(answered / (answered + pending), 4) if answered + pending else 0.0,
        cost_usd=cost,
        estimate_usd=estimate,
        commit=m.commit_sha,
        last_error=m.last_error,
        updated_at=m.updated_at,
    )


def files_storage(
    jobs: Sequence[JobRow], media: Sequence[tuple[str, str | None, int, str]]
) -> FilesStorage:
    inputs = [j for j in jobs if j.input_file]
    return FilesStorage(
        bytes=sum(j.bytes for j in inputs) + sum(size for _, _, size, _ in media),
        input_files=len(inputs),
        media_files=len(media),
    )


def event_view(columns: Sequence[str], row: Sequence[Any]) -> Event:
    values = dict(zip(columns, row, strict=True))
    return Event(
        id=int(values["id"]),
        at=str(values["at"]),
        manifest=values["manifest"],
        job=values["job"],
        kind=str(values["kind"]),
        message=str(values["message"]),
    )


# -- events ----------------------------------------------------------------------------------
class Events(View):
    apiVersion: Literal["gbatch/v1"] = "gbatch/v1"
    kind: Literal["Events"] = "Events"
    items: list[Event]


# -- diff ------------------------------------------------------------------------------------
class ChangedKey(View):
    key: str
    parts: list[str] = Field(
        description="What of the request changed: prompt, system, generation, schema, tools, "
        "cache, model or other."
    )


class ManifestDiff(View):
    name: str
    table: str
    status: Literal["new", "changed", "unchanged"] = Field(
        description="new: never applied; changed: its requests differ from the applied version."
    )
    previous_version: str | None
    version: str
    new: int
    changed: int
    removed: int
    unchanged: int
    new_keys: list[str] = Field(description="Up to --limit of them.")
    changed_keys: list[ChangedKey]
    removed_keys: list[str]
    parts: list[str] = Field(description="Every part that changed in the listed changed keys.")


class Diff(View):
    apiVersion: Literal["gbatch/v1"] = "gbatch/v1"
    kind: Literal["Diff"] = "Diff"
    items: list[ManifestDiff]


DOCUMENTS: tuple[type[View], ...] = (Plan, Validation, Status, Events, Diff)


def output_schema() -> dict[str, Any]:
    """The JSON Schema of every ``-o json`` document (``docs/cli-output.schema.json``)."""
    definitions: dict[str, Any] = {}
    for document in DOCUMENTS:
        schema = document.model_json_schema(ref_template="#/$defs/{model}")
        definitions.update(schema.pop("$defs", {}))
        definitions[document.__name__] = schema
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gbatch -o json documents (apiVersion gbatch/v1)",
        "description": "Every document carries apiVersion and kind; fields are only added "
        "within gbatch/v1.",
        "oneOf": [{"$ref": f"#/$defs/{d.__name__}"} for d in DOCUMENTS],
        "$defs": dict(sorted(definitions.items())),
    }
