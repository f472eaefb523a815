"""The emulator's Vertex AI mode: Gemini batchPredictionJobs over a Cloud Storage emulator.

``runner.emulator.server`` routes ``/v1/projects/{p}/locations/{l}/batchPredictionJobs``
(create, get, list, cancel, delete; ``/v1beta1`` too) and ``.../publishers/google/models/
{m}:countTokens`` here. Jobs read their ``{"request": ...}`` lines from ``gs://`` inputs and
write ``{"status", "processed_time", "request", "response"}`` lines under
``<outputUriPrefix>/prediction-model-<time>/`` (``predictions.jsonl``, or
``predictions_00001.jsonl``... when ``lines_per_file`` splits them), through the Cloud Storage
JSON API of another server (``STORAGE_EMULATOR_HOST``: gcp-storage-emulator in the tests),
called with urllib: the emulator imports nothing of the runner and no Google library.

Shapes, from the Vertex AI REST reference and recorded output (a predictions.jsonl line from
a real gemini-2.5-flash job: ``status`` "" on success, ``processed_time``, the ``request`` as
sent, labels included, and the ``response``): job names carry the project *number* (derived
from the project id here) and a 19-digit id; states ``JOB_STATE_*``; ``completionStats`` with
int64 counts as strings; ``outputInfo.gcsOutputDirectory`` once the output is written; a
failed or cancelled job carries ``error`` (google.rpc.Status). Inferred, not recorded: a failed
line's ``status`` text (``<STATUS> error occurred: {"error": {...}}``, after the job message
in python-aiplatform #4485) and the names of split output files.

Job faults (``Fault`` with ``endpoint="batchPredictionJobs.create"``) work as for the
Developer API: ``job_outcome``, ``fail_lines_fraction``; call faults name the endpoints
``batchPredictionJobs.create|get|list|cancel|delete`` and ``publisherModels.countTokens``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from runner.emulator.model import LineError, answer
from runner.emulator.service import TERMINAL, ApiError, Fault, Service, stamp

HTTP_OF = {
    "CANCELLED": 499,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "NOT_FOUND": 404,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
GRPC_OF = {"CANCELLED": 1, "INVALID_ARGUMENT": 3, "NOT_FOUND": 5, "INTERNAL": 13}
JOB_ID_DIGITS = 19
FILTER_TERM = re.compile(r'(labels\.[a-z][a-z0-9_-]*|display_name|state)\s*=\s*"?([^"]*)"?')
STORAGE_TIMEOUT_S = 30.0


class StorageError(Exception):
    """A Cloud Storage call failed (``status``: its HTTP code, 0 when unreachable)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def split_uri(uri: str) -> tuple[str, str]:
    match = re.fullmatch(r"gs://([^/]+)/(.+)", uri)
    if not match:
        raise ApiError(400, "INVALID_ARGUMENT", f"not a Cloud Storage uri: {uri!r}")
    return match.group(1), match.group(2)


class Storage:
    """The few Cloud Storage JSON API calls a batch job makes, over urllib."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        if "://" not in self.base_url:  # STORAGE_EMULATOR_HOST may be host:port
            self.base_url = "http://" + self.base_url

    def _call(self, request: urllib.request.Request) -> bytes:
        try:
            with urllib.request.urlopen(request, timeout=STORAGE_TIMEOUT_S) as reply:
                return bytes(reply.read())
        except urllib.error.HTTPError as exc:
            raise StorageError(f"{request.full_url}: HTTP {exc.code}", status=exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise StorageError(f"{request.full_url}: {exc}") from None

    def _object_url(self, uri: str) -> str:
        bucket, name = split_uri(uri)
        return f"{self.base_url}/storage/v1/b/{quote(bucket)}/o/{quote(name, safe='')}"

    def read(self, uri: str) -> bytes:
        return self._call(urllib.request.Request(self._object_url(uri) + "?alt=media"))

    def exists(self, uri: str) -> bool:
        try:
            self._call(urllib.request.Request(self._object_url(uri)))
        except StorageError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def write(self, uri: str, data: bytes, *, content_type: str) -> None:
        """A multipart upload (metadata, then the bytes), as the Google clients send it."""
        bucket, name = split_uri(uri)
        boundary = "gbatch-" + secrets.token_hex(8)
        metadata = json.dumps({"name": name, "contentType": content_type})
        body = (
            (
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
                f"{metadata}\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        url = f"{self.base_url}/upload/storage/v1/b/{quote(bucket)}/o?uploadType=multipart"
        headers = {"Content-Type": f'multipart/related; boundary="{boundary}"'}
        self._call(urllib.request.Request(url, data=body, method="POST", headers=headers))


@dataclass
class PredictionJob:
    id: str
    project: str  # the project number, as the service names it
    location: str
    display_name: str
    model: str
    input_uris: list[str]
    output_prefix: str
    labels: dict[str, str]
    created: float
    state: str = "PENDING"
    started: float | None = None
    ended: float | None = None
    output_dir: str | None = None
    stats: dict[str, int] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    fault: Fault | None = None

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/batchPredictionJobs/{self.id}"


def project_number(project: str) -> str:
    """The number the service names a project by (derived from its id here)."""
    if project.isdigit():
        return project
    return str(100_000_000_000 + int(hashlib.sha256(project.encode()).hexdigest()[:8], 16))


def line_status(status: str, message: str) -> str:
    """A failed output line's ``status`` text (inferred; see the module docstring)."""
    envelope = {"error": {"code": HTTP_OF.get(status, 500), "message": message, "status": status}}
    return f"{status} error occurred: {json.dumps(envelope)}"


def _get(mapping: dict[str, Any], camel: str) -> Any:
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel)
    return mapping.get(camel, mapping.get(snake))


class VertexJobs:
    """Batch prediction jobs on the emulator's clock, faults and lock (``Service``)."""

    def __init__(self, service: Service, *, storage_url: str | None, lines_per_file: int) -> None:
        self.service = service
        self.storage = Storage(storage_url) if storage_url else None
        self.lines_per_file = lines_per_file
        self.jobs: dict[str, PredictionJob] = {}

    def _storage(self) -> Storage:
        if self.storage is None:
            raise ApiError(
                400,
                "FAILED_PRECONDITION",
                "the emulator's Vertex AI mode needs a Cloud Storage endpoint: start it with "
                "STORAGE_EMULATOR_HOST set (or EmulatorConfig.storage_url)",
            )
        return self.storage

    # -- calls -------------------------------------------------------------------------------
    def create(self, project: str, location: str, body: dict[str, Any]) -> PredictionJob:
        display_name = str(_get(body, "displayName") or "")
        model = str(body.get("model") or "")
        if not re.fullmatch(r"publishers/[a-z0-9-]+/models/[a-z0-9][a-z0-9.@-]*", model):
            raise ApiError(400, "INVALID_ARGUMENT", f"invalid model name {model!r}")
        source = _get(body, "inputConfig") or {}
        uris = (_get(source, "gcsSource") or {}).get("uris") or []
        if _get(source, "instancesFormat") != "jsonl" or not uris:
            raise ApiError(
                400, "INVALID_ARGUMENT", "inputConfig needs instancesFormat jsonl and gcsSource"
            )
        output = _get(_get(body, "outputConfig") or {}, "gcsDestination") or {}
        prefix = str(_get(output, "outputUriPrefix") or "")
        if not prefix.startswith("gs://"):
            raise ApiError(400, "INVALID_ARGUMENT", "outputConfig needs a gcsDestination")
        self._storage()  # a job needs somewhere to read and write
        for uri in uris:
            split_uri(uri)
        fault = self.service.take_fault("batchPredictionJobs.create", display_name, job=True)
        job = PredictionJob(
            id=str(secrets.randbelow(9 * 10 ** (JOB_ID_DIGITS - 1)) + 10 ** (JOB_ID_DIGITS - 1)),
            project=project_number(project),
            location=location,
            display_name=display_name,
            model=model,
            input_uris=[str(u) for u in uris],
            output_prefix=prefix.rstrip("/"),
            labels={str(k): str(v) for k, v in (body.get("labels") or {}).items()},
            created=self.service.now(),
            fault=fault,
        )
        with self.service.lock:
            self.jobs[job.id] = job
        return job

    def get(self, project: str, location: str, job_id: str) -> PredictionJob:
        with self.service.lock:
            job = self.jobs.get(job_id)
            if job is None or job.project != project_number(project) or job.location != location:
                name = f"projects/{project}/locations/{location}/batchPredictionJobs/{job_id}"
                raise ApiError(404, "NOT_FOUND", f"BatchPredictionJob {name} not found.")
            self._advance(job)
            return job

    def listing(self, project: str, location: str, filter_text: str) -> list[PredictionJob]:
        wanted = _filter(filter_text)
        with self.service.lock:
            jobs = [
                j
                for j in self.jobs.values()
                if j.project == project_number(project) and j.location == location
            ]
            jobs.sort(key=lambda j: j.created, reverse=True)  # newest first
            for job in jobs:
                self._advance(job)
            return [j for j in jobs if all(test(j) for test in wanted)]

    def cancel(self, project: str, location: str, job_id: str) -> None:
        with self.service.lock:
            job = self.get(project, location, job_id)
            if job.state not in TERMINAL:
                self._cancelled(job)

    def delete(self, project: str, location: str, job_id: str) -> None:
        with self.service.lock:
            self.get(project, location, job_id)
            del self.jobs[job_id]

    # -- progress ----------------------------------------------------------------------------
    def _cancelled(self, job: PredictionJob) -> None:
        job.state, job.ended = "CANCELLED", self.service.now()
        job.error = {"code": GRPC_OF["CANCELLED"], "message": "CANCELED"}

    def _advance(self, job: PredictionJob) -> None:
        if job.state in TERMINAL:
            return
        service = self.service
        age = service.now() - job.created
        outcome = job.fault.job_outcome if job.fault else None
        if age >= service.expire_after_s or (outcome == "EXPIRED" and age >= service.pending_s):
            job.state, job.ended = "EXPIRED", service.now()
        elif outcome == "PENDING_FOREVER" or age < service.pending_s:
            job.state = "PENDING"
        elif outcome == "FAILED":
            job.state, job.ended = "FAILED", service.now()
            job.error = {"code": GRPC_OF["INTERNAL"], "message": "Internal error (emulated)."}
        elif outcome == "CANCELLED":
            self._cancelled(job)
        elif age < service.pending_s + service.running_s:
            job.state, job.started = "RUNNING", job.started or service.now()
        else:
            job.started = job.started or service.now()
            self._process(job)

    def _process(self, job: PredictionJob) -> None:
        """Answer every input line and write the output files; FAILED if input is unreadable."""
        storage = self._storage()
        lines: list[str] = []
        try:
            for uri in job.input_uris:
                text = storage.read(uri).decode("utf-8", errors="replace")
                lines.extend(raw for raw in text.splitlines() if raw.strip())
        except StorageError as exc:
            job.state, job.ended = "FAILED", self.service.now()
            job.error = {
                "code": GRPC_OF["INVALID_ARGUMENT"],
                "message": f"Failed to read the input: {exc}",
            }
            return
        ok = failed = 0
        out: list[str] = []
        for number, raw in enumerate(lines, start=1):
            line = self._line(job, number, raw)
            ok, failed = ok + (not line["status"]), failed + bool(line["status"])
            out.append(json.dumps(line, ensure_ascii=False))
        moment = datetime.fromtimestamp(self.service.now(), UTC)
        directory = f"{job.output_prefix}/prediction-model-{moment:%Y-%m-%dT%H:%M:%S.%fZ}"
        size = self.lines_per_file if self.lines_per_file > 0 else max(len(out), 1)
        pieces = [out[i : i + size] for i in range(0, len(out), size)] or [[]]
        try:
            for index, piece in enumerate(pieces, start=1):
                name = "predictions.jsonl" if len(pieces) == 1 else f"predictions_{index:05d}.jsonl"
                data = "".join(text + "\n" for text in piece).encode()
                storage.write(f"{directory}/{name}", data, content_type="application/jsonl")
        except StorageError as exc:
            job.state, job.ended = "FAILED", self.service.now()
            job.error = {"code": GRPC_OF["INTERNAL"], "message": f"Failed to write: {exc}"}
            return
        job.output_dir = directory
        job.stats = {"successfulCount": ok, "failedCount": failed, "incompleteCount": 0}
        job.state, job.ended = "SUCCEEDED", self.service.now()

    def _line(self, job: PredictionJob, number: int, raw: str) -> dict[str, Any]:
        processed = datetime.fromtimestamp(self.service.now(), UTC).isoformat(
            timespec="microseconds"
        )
        try:
            entry = json.loads(raw)
            request = entry.get("request") if isinstance(entry, dict) else None
        except json.JSONDecodeError as exc:
            message = f"line {number} is not JSON: {exc}"
            return {"status": line_status("INVALID_ARGUMENT", message), "processed_time": processed}
        head: dict[str, Any] = {"status": "", "processed_time": processed, "request": request}
        fraction = job.fault.fail_lines_fraction if job.fault else 0.0
        if fraction and random.Random(f"{self.service.seed}:{job.id}:{number}").random() < fraction:
            head["status"] = line_status("INTERNAL", "Internal error (emulated line failure)")
            return head
        try:
            self._check_files(request)
            if isinstance(request, dict) and _get(request, "cachedContent") is not None:
                raise LineError("INVALID_ARGUMENT", "cachedContent is not supported in batch")
            model_id = job.model.rsplit("/", 1)[-1]
            head["response"] = answer(request, model=model_id, cache=None)
        except LineError as exc:
            head["status"] = line_status(exc.status, exc.message)
        return head

    def _check_files(self, request: Any) -> None:
        """Every ``fileData`` part must name an existing ``gs://`` object."""
        contents = request.get("contents", []) if isinstance(request, dict) else []
        for content in contents if isinstance(contents, list) else []:
            for part in content.get("parts", []) if isinstance(content, dict) else []:
                data = _get(part, "fileData") if isinstance(part, dict) else None
                if not isinstance(data, dict):
                    continue
                uri = str(_get(data, "fileUri") or "")
                try:
                    found = uri.startswith("gs://") and self._storage().exists(uri)
                except (StorageError, ApiError):
                    found = False
                if not found:
                    raise LineError("NOT_FOUND", f"File {uri} not found")

    # -- wire shapes -------------------------------------------------------------------------
    def job_json(self, job: PredictionJob) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": job.name,
            "displayName": job.display_name,
            "model": job.model,
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": job.input_uris}},
            "outputConfig": {
                "predictionsFormat": "jsonl",
                "gcsDestination": {"outputUriPrefix": job.output_prefix},
            },
            "state": f"JOB_STATE_{job.state}",
            "createTime": stamp(job.created),
            "updateTime": stamp(job.ended or job.started or job.created),
        }
        if job.started is not None:
            body["startTime"] = stamp(job.started)
        if job.state in TERMINAL:
            body["endTime"] = stamp(job.ended or self.service.now())
        if job.output_dir:
            body["outputInfo"] = {"gcsOutputDirectory": job.output_dir}
        if job.stats:
            body["completionStats"] = {k: str(v) for k, v in job.stats.items()}
        if job.error:
            body["error"] = job.error
        if job.labels:
            body["labels"] = job.labels
        return body


def _filter(text: str) -> list[Any]:
    """Tests for the list filter's ``AND``-ed equalities: ``labels.k="v"``,
    ``display_name="x"``, ``state="JOB_STATE_X"``; anything else is refused."""
    tests: list[Any] = []
    for term in (t.strip() for t in re.split(r"\s+AND\s+", text.strip()) if t.strip()):
        match = FILTER_TERM.fullmatch(term)
        if not match:
            raise ApiError(400, "INVALID_ARGUMENT", f"unsupported filter term {term!r}")
        name, value = match.groups()
        if name.startswith("labels."):
            label = name.removeprefix("labels.")
            tests.append(lambda j, k=label, v=value: j.labels.get(k) == v)
        elif name == "display_name":
            tests.append(lambda j, v=value: j.display_name == v)
        else:
            tests.append(lambda j, v=value: f"JOB_STATE_{j.state}" == v)
    return tests
