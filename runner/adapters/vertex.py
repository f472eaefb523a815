"""The Vertex AI adapter: Gemini batch prediction jobs on Vertex AI, files in Cloud Storage.

Implements ``runner.core.ports.Backend`` with google-genai in its ``vertexai=True`` mode (auth,
project and location, base URL, API version ``v1``, a timeout on every call) and
google-cloud-storage for the staging area ``gs://bucket/prefix`` (``settings.vertex_staging``);
the only module that imports google-cloud-storage and google-auth. Constructed by
``runner.adapters.backends``; called by the engine exactly like the Gemini adapter.

What differs from the Developer API, and where it is absorbed here:
- Input goes to ``<staging>/inputs/<display name>.jsonl`` and the job reads it from there
  (``src`` must be ``gs://`` or ``bq://``; no inline requests, no Files API). Media go to
  ``<staging>/media/`` and requests name them by their ``gs://`` uri.
- Vertex lines are ``{"request": ...}`` with no ``key``, and output lines
  ``{"status", "processed_time", "request", "response"}``: the key travels inside each request
  as labels (``gbatch_key``, or base32 chunks ``gbatch_key_b32[_N]`` when the key is not a valid
  label value: lowercase letters, digits, ``_`` and ``-``, at most 63) and is read back from
  the output line's ``request``. :meth:`VertexBackend.download_results` writes the runner's
  ``{"key", "response"|"error"}`` lines, so results are joined exactly as for the Developer
  API. Output is every ``*.jsonl`` under the job's ``outputInfo.gcsOutputDirectory``
  (``<staging>/outputs/<display name>/prediction-model-<time>/predictions.jsonl``, possibly
  several files).
- Jobs are ``projects/*/locations/*/batchPredictionJobs/<id>`` with ``JOB_STATE_*`` states and
  ``completionStats``; models ``publishers/google/models/<id>``. Jobs carry the label
  ``managed_by: gbatch`` and the listing is filtered by it, so adoption by display name looks at
  gbatch's jobs only in a project that runs many.
- Explicit context caches do not exist for Vertex batch: a manifest with a ``cache`` block is
  refused at validation (:func:`refusal`); implicit caching discounts still arrive in usage.

Job calls go through the SDK's client as raw calls (as in the Gemini adapter): its BatchJob
model types ``error.details`` as strings where a google.rpc.Status carries objects, and warns
on a state it does not know. Every exception becomes a ``runner.errors`` type in
:func:`_translate`, which leaves transient vs permanent to ``runner.core.failures.classify``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import google.auth
import httpx2
import requests
from google import genai
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import Credentials
from google.cloud import storage
from google.cloud.storage import exceptions as storage_exceptions
from google.genai import errors as genai_errors
from google.genai import types
from google.oauth2.credentials import Credentials as TokenCredentials

from runner.adapters.gemini import _may_have_created, _retry_delay
from runner.adapters.sdk_calls import SdkCalls
from runner.core import failures
from runner.core.atomic import replacing
from runner.core.jobs import JobState, RemoteJob
from runner.core.manifest import Manifest
from runner.core.ports import UploadedFile
from runner.errors import (
    BackendError,
    GbatchError,
    ManifestError,
    PermanentBackendError,
    ResultsMismatchError,
    TransientBackendError,
    UnclearCreateError,
)

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
JSONL_MIME = "application/jsonl"
API_VERSION = "v1"  # batchPredictionJobs are GA in v1 (the SDK's vertex default is v1beta1)
# Labels of every job gbatch creates, and the listing filter that finds them again.
JOB_LABELS = {"managed_by": "gbatch"}
LIST_FILTER = 'labels.managed_by="gbatch"'
# The key of each request, in the request's own labels (Vertex label values: lowercase
# letters, digits, "_" and "-", at most 63 characters; at most 64 labels per request).
KEY_LABEL = "gbatch_key"
KEY_LABEL_B32 = "gbatch_key_b32"
LABEL_VALUE = re.compile(r"[a-z0-9_-]{1,63}")
LABEL_MAX = 63
KEY_MAX_LABELS = 32  # base32 chunks; keys up to ~1.2 kB, leaving room for the request's own
# GCS objects do not expire by themselves: uploads are reported as living this long (a bucket
# lifecycle rule that deletes them sooner is caught by file_exists before a create is retried).
OBJECT_LIFE = timedelta(days=3650)
CACHE_REFUSAL = (
    "explicit context caches are not available for Vertex AI batch jobs (GBATCH_BACKEND="
    "vertex): remove the cache block; Vertex applies implicit caching by itself, and its "
    "discount shows in cached_tokens"
)
JOB_NAME = re.compile(r"projects/[^/]+/locations/[^/]+/batchPredictionJobs/[A-Za-z0-9_-]+")
# Vertex states -> the runner's. QUEUED/PAUSED/UPDATING wait; CANCELLING is still running;
# PARTIALLY_SUCCEEDED is a success whose failed lines are retried like any failed line.
STATES = {
    "JOB_STATE_QUEUED": JobState.PENDING,
    "JOB_STATE_PENDING": JobState.PENDING,
    "JOB_STATE_PAUSED": JobState.PENDING,
    "JOB_STATE_UPDATING": JobState.RUNNING,
    "JOB_STATE_RUNNING": JobState.RUNNING,
    "JOB_STATE_CANCELLING": JobState.RUNNING,
    "JOB_STATE_SUCCEEDED": JobState.SUCCEEDED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": JobState.SUCCEEDED,
    "JOB_STATE_FAILED": JobState.FAILED,
    "JOB_STATE_CANCELLED": JobState.CANCELLED,
    "JOB_STATE_EXPIRED": JobState.EXPIRED,
}


def refusal(manifest: Manifest) -> ManifestError | None:
    """What of ``manifest`` Vertex AI batch cannot run (its field), or None.

    Called by ``runner.adapters.backends.refusal`` for validate, plan, apply and the daemon.
    """
    if manifest.spec.cache is not None:
        return ManifestError(CACHE_REFUSAL, field="cache")
    if manifest.spec.task == "embed":
        return ManifestError(
            "embeddings batches run on the Gemini Developer API only (the SDK refuses them in "
            "Vertex mode): use GBATCH_BACKEND=gemini for task: embed",
            field="task",
        )
    return None


@dataclass(frozen=True)
class Staging:
    """``gs://bucket/prefix``: where inputs, media and outputs live."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, text: str) -> Staging:
        match = re.fullmatch(r"gs://([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])(?:/(.*))?", text.strip())
        if not match:
            raise GbatchError(f"GBATCH_VERTEX_STAGING must be gs://bucket/prefix (got {text!r})")
        return cls(bucket=match.group(1), prefix=(match.group(2) or "").strip("/"))

    def object(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def uri(self, *parts: str) -> str:
        return f"gs://{self.bucket}/{self.object(*parts)}"


def _split_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/object`` -> (bucket, object)."""
    match = re.fullmatch(r"gs://([^/]+)/(.+)", uri)
    if not match:
        raise PermanentBackendError(
            f"not a Cloud Storage object: {uri!r} (was this state directory used with "
            "GBATCH_BACKEND=gemini?)"
        )
    return match.group(1), match.group(2)


# -- the key inside each request ----------------------------------------------------------
def key_labels(key: str) -> dict[str, str]:
    """The labels that carry ``key`` in a request: itself when it is a valid label value,
    else its UTF-8 in unpadded lowercase base32, 63 characters per label."""
    if LABEL_VALUE.fullmatch(key):
        return {KEY_LABEL: key}
    encoded = base64.b32encode(key.encode()).decode().rstrip("=").lower()
    chunks = [encoded[i : i + LABEL_MAX] for i in range(0, len(encoded), LABEL_MAX)] or [""]
    if len(chunks) > KEY_MAX_LABELS:
        raise PermanentBackendError(
            f"a request key of {len(key.encode())} bytes is too long to travel in Vertex "
            f"labels (at most {KEY_MAX_LABELS * LABEL_MAX * 5 // 8} bytes): use a shorter "
            "source.key"
        )
    return {
        (KEY_LABEL_B32 if i == 0 else f"{KEY_LABEL_B32}_{i}"): chunk
        for i, chunk in enumerate(chunks)
    }


def key_from_labels(labels: Any) -> str | None:
    """The key :func:`key_labels` put in ``labels``, or None when there is none."""
    if not isinstance(labels, dict):
        return None
    if isinstance(labels.get(KEY_LABEL), str):
        return str(labels[KEY_LABEL])
    chunks: list[str] = []
    while isinstance(
        value := labels.get(KEY_LABEL_B32 if not chunks else f"{KEY_LABEL_B32}_{len(chunks)}"),
        str,
    ):
        chunks.append(value)
    if not chunks:
        return None
    encoded = "".join(chunks).upper()
    try:
        return base64.b32decode(encoded + "=" * (-len(encoded) % 8)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def vertex_line(line: dict[str, Any]) -> dict[str, Any]:
    """A runner ``{"key", "request"}`` line as a Vertex input line, the key in its labels."""
    request = dict(line["request"])
    labels = request.get("labels")
    request["labels"] = {**(labels if isinstance(labels, dict) else {}), **key_labels(line["key"])}
    return {"request": request}


def runner_line(line: dict[str, Any]) -> dict[str, Any] | None:
    """A Vertex output line as the runner's ``{"key", "response"|"error"}``; None if keyless.

    A non-empty ``status`` is the line's failure; else ``response`` is its answer.
    """
    request = line.get("request")
    key = key_from_labels(request.get("labels") if isinstance(request, dict) else None)
    if key is None:
        return None
    status = line.get("status")
    if status:
        return {"key": key, "error": line_error(status)}
    response = line.get("response")
    if not isinstance(response, dict):
        return {"key": key, "error": {"message": "the output line has no response"}}
    return {"key": key, "response": response}


def _parsed(raw: str) -> dict[str, Any] | None:
    """``runner_line`` of one raw output line; None when it is not a JSON object either."""
    try:
        line = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return runner_line(line) if isinstance(line, dict) else None


def line_error(status: Any) -> dict[str, Any]:
    """A failed output line's ``status`` as a google.rpc.Status-like error.

    Vertex writes the status as text, which (inferred from python-aiplatform #4485; no failed
    line was recorded) may embed the API's error envelope: ``INTERNAL error occurred:
    {"error": {"code": 500, "message": ..., "status": "INTERNAL"}}``. Its code and status are
    kept so the ledger tells retryable from permanent as for any line; the message is the
    whole text. A status naming no code is retryable (``failures.classify``).
    """
    if isinstance(status, dict):
        return status
    text = str(status)
    error: dict[str, Any] = {"message": text}
    start = text.find("{")
    if start >= 0:
        try:
            embedded = json.loads(text[start:])
        except json.JSONDecodeError:
            embedded = None
        inner = embedded.get("error", embedded) if isinstance(embedded, dict) else None
        if isinstance(inner, dict):
            if isinstance(inner.get("code"), int):
                error["code"] = inner["code"]
            if isinstance(inner.get("status"), str):
                error["status"] = inner["status"]
            return error
    word = re.match(r"[A-Z][A-Z_]+\b", text)
    if word and word.group(0) in failures.PERMANENT_STATUSES | failures.TRANSIENT_STATUSES:
        error["status"] = word.group(0)
    return error


def model_path(model: str) -> str:
    """``publishers/google/models/<id>`` for a model id (as the SDK's ``t_model`` does)."""
    model = model.removeprefix("models/")
    name = model
    if not model.startswith(("publishers/", "projects/")):
        name = f"publishers/google/models/{model}"
    if not re.fullmatch(r"[A-Za-z0-9._/@-]+", name) or ".." in name:
        raise PermanentBackendError(f"not a model name: {model!r}")
    return name


def credentials_from(access_token: str | None) -> tuple[Credentials, str | None]:
    """The credentials to call Google Cloud with, and the project they name (if any).

    An access token when one is given (it is used as it is, never refreshed); else
    Application Default Credentials, as the gcloud CLI and every Google client find them
    (``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default login``, the
    metadata server).
    """
    if access_token:
        return TokenCredentials(token=access_token), None
    try:
        found, project = google.auth.default(scopes=list(SCOPES))
    except auth_exceptions.DefaultCredentialsError as exc:
        raise GbatchError(
            "no Google Cloud credentials for Vertex AI: run `gcloud auth application-default "
            "login`, set GOOGLE_APPLICATION_CREDENTIALS to a service account key, or set "
            f"GBATCH_VERTEX_ACCESS_TOKEN ({exc})"
        ) from None
    return found, project


class VertexBackend(SdkCalls):
    """Gemini batch prediction on Vertex AI. Credentials are held by the clients only."""

    def __init__(
        self,
        *,
        project: str,
        location: str,
        staging: Staging,
        credentials: Credentials,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        retry: failures.RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        options = types.HttpOptions(api_version=API_VERSION, timeout=int(timeout_s * 1000))
        if base_url:
            options.base_url = base_url
        client = genai.Client(
            vertexai=True,
            project=project,
            location=location,
            credentials=credentials,
            http_options=options,
        )
        super().__init__(client, retry=retry, sleep=sleep, translate=_translate)
        self._storage = storage.Client(project=project, credentials=credentials)
        self.staging = staging
        self._timeout_s = timeout_s

    # -- files (Cloud Storage objects) -------------------------------------------------------
    def upload_jsonl(self, path: Path, *, display_name: str) -> UploadedFile:
        """Write the runner's lines as Vertex lines to ``<staging>/inputs/<name>.jsonl``."""
        converted = path.with_name(path.name + ".vertex")
        with path.open(encoding="utf-8") as lines, converted.open("w", encoding="utf-8") as out:
            for raw in lines:
                if raw.strip():
                    out.write(json.dumps(vertex_line(json.loads(raw)), ensure_ascii=False))
                    out.write("\n")
        try:
            return self._put(
                converted,
                self.staging.object("inputs", f"{display_name}.jsonl"),
                mime_type=JSONL_MIME,
            )
        finally:
            converted.unlink(missing_ok=True)

    def upload_media(self, path: Path, *, mime_type: str, display_name: str) -> UploadedFile:
        """Put a media file under ``<staging>/media/``; requests name it by its gs:// uri."""
        return self._put(path, self.staging.object("media", display_name), mime_type=mime_type)

    def _put(self, path: Path, name: str, *, mime_type: str) -> UploadedFile:
        blob = self._storage.bucket(self.staging.bucket).blob(name)

        def put() -> UploadedFile:
            blob.upload_from_filename(
                str(path), content_type=mime_type, retry=None, timeout=self._timeout_s
            )
            uri = f"gs://{self.staging.bucket}/{name}"
            expires = datetime.now(UTC) + OBJECT_LIFE
            return UploadedFile(
                name=uri,
                uri=uri,
                expire_time=expires.isoformat(timespec="seconds"),
                size=path.stat().st_size,
            )

        return self._read(put, what=f"upload gs://{self.staging.bucket}/{name}")

    def file_exists(self, name: str) -> bool:
        bucket, key = _split_uri(name)
        blob = self._storage.bucket(bucket).blob(key)
        return self._read(
            lambda: bool(blob.exists(retry=None, timeout=self._timeout_s)), what=f"get {name}"
        )

    def delete_file(self, name: str) -> None:
        bucket, key = _split_uri(name)
        blob = self._storage.bucket(bucket).blob(key)

        def delete() -> None:
            with contextlib.suppress(api_exceptions.NotFound):  # already gone: what we wanted
                blob.delete(retry=None, timeout=self._timeout_s)

        self._read(delete, what=f"delete {name}")

    # -- batch prediction jobs ---------------------------------------------------------------
    def create_job(
        self,
        *,
        model: str,
        display_name: str,
        src_file: str | None,
        inline: Path | None,
        task: str = "generate",
    ) -> RemoteJob:
        """Create a batchPredictionJob reading ``src_file`` (a gs:// uri).

        Never retried here: an unclear outcome raises UnclearCreateError (found by listing).
        """
        if task != "generate":
            raise PermanentBackendError(
                "embeddings batches are not available on the Vertex AI backend here (the SDK "
                "refuses them in Vertex mode): run task: embed with GBATCH_BACKEND=gemini"
            )
        if src_file is None or inline is not None:
            raise PermanentBackendError(
                "Vertex AI batch jobs read their input from Cloud Storage only; leave "
                "GBATCH_INLINE_MAX_BYTES at 0 with GBATCH_BACKEND=vertex"
            )
        _split_uri(src_file)
        body = {
            "displayName": display_name,
            "model": model_path(model),
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [src_file]}},
            "outputConfig": {
                "predictionsFormat": "jsonl",
                "gcsDestination": {"outputUriPrefix": self.staging.uri("outputs", display_name)},
            },
            "labels": JOB_LABELS,
        }
        what = f"create {display_name}"
        try:
            reply = self._raw("post", "batchPredictionJobs", body)
        except Exception as exc:
            error = self._translated(exc, what)
            if _may_have_created(error):
                delay = error.delay if isinstance(error, TransientBackendError) else None
                raise UnclearCreateError(
                    str(error), code=error.code, status=error.status, delay=delay
                ) from exc
            raise error from exc
        if not reply.get("name"):
            raise UnclearCreateError(f"{what}: reply had no job name")
        return _remote_job(reply)

    def list_jobs(self, *, max_pages: int | None = None) -> Iterator[RemoteJob]:
        token: str | None = None
        pages = 0
        while True:
            query: dict[str, Any] = {"pageSize": 100, "filter": LIST_FILTER}
            if token:
                query["pageToken"] = token
            body = self._raw_get(f"batchPredictionJobs?{urlencode(query)}")
            for job in body.get("batchPredictionJobs", []):
                yield _remote_job(job)
            pages += 1
            token = body.get("nextPageToken")
            if not token or (max_pages is not None and pages >= max_pages):
                return

    def get_job(self, name: str) -> RemoteJob:
        return _remote_job(self._raw_get(_job_path(name)))

    def cancel_job(self, name: str) -> None:
        path = f"{_job_path(name)}:cancel"
        self._read(lambda: self._raw("post", path), what=f"cancel {name}")

    def download_results(
        self, job: RemoteJob, dest: Path, *, keys: Collection[str] | None = None
    ) -> None:
        """Write the job's output as the runner's result lines to ``dest``.

        Reads every ``*.jsonl`` object under the job's output directory, in name order. A
        key answered twice (a file repeated) is written once, an answer winning over an
        error. A line whose key cannot be read (or that is not JSON) is never guessed at: the
        raw lines are kept
        beside ``dest`` (``<dest>.raw.jsonl``) and :class:`ResultsMismatchError` raised.
        ``keys`` (inline jobs) does not apply: Vertex has none.
        """
        directory = job.result_file
        if not directory:
            if job.state is JobState.SUCCEEDED:
                raise TransientBackendError(
                    f"{job.name} succeeded but names no output directory yet",
                    status="TRANSPORT",
                )
            with replacing(dest) as partial:
                partial.write_bytes(b"")  # nothing produced: an empty result file
            return
        bucket, prefix = _split_uri(directory.rstrip("/") + "/")
        names = self._read(
            lambda: sorted(
                blob.name
                for blob in self._storage.list_blobs(
                    bucket, prefix=prefix, retry=None, timeout=self._timeout_s
                )
                if blob.name.endswith(".jsonl")
            ),
            what=f"list {directory}",
        )
        answered: set[str] = set()
        errors: dict[str, str] = {}
        unmatched: list[str] = []
        with replacing(dest) as partial, partial.open("w", encoding="utf-8") as out:
            for name in names:
                piece = dest.with_name(dest.name + ".piece")
                self._get(bucket, name, piece)
                try:
                    with piece.open(encoding="utf-8") as lines:
                        for raw in lines:
                            if not raw.strip():
                                continue
                            line = _parsed(raw)
                            if line is None:
                                unmatched.append(raw.rstrip("\n"))
                            elif "response" in line and line["key"] not in answered:
                                answered.add(line["key"])
                                errors.pop(line["key"], None)
                                out.write(json.dumps(line, ensure_ascii=False) + "\n")
                            elif "error" in line and line["key"] not in answered:
                                errors.setdefault(line["key"], json.dumps(line, ensure_ascii=False))
                finally:
                    piece.unlink(missing_ok=True)
            for text in errors.values():
                out.write(text + "\n")
        if unmatched:
            raw_path = dest.with_name(dest.name + ".raw.jsonl")
            with replacing(raw_path) as partial:
                partial.write_text("\n".join(unmatched) + "\n", encoding="utf-8")
            dest.unlink(missing_ok=True)
            raise ResultsMismatchError(
                f"{job.name}: {len(unmatched)} output line(s) carry no gbatch key in their "
                f"request labels; which answer is whose cannot be told; the raw lines are in "
                f"{raw_path}",
                raw_path=raw_path,
            )

    def _get(self, bucket: str, name: str, dest: Path) -> None:
        blob = self._storage.bucket(bucket).blob(name)

        def get() -> None:
            with replacing(dest) as partial:
                blob.download_to_filename(str(partial), retry=None, timeout=self._timeout_s)

        self._read(get, what=f"download gs://{bucket}/{name}")

    def count_tokens(self, *, model: str, contents: list[dict[str, Any]]) -> int:
        def count() -> int:
            reply = self._client.models.count_tokens(model=model_path(model), contents=contents)
            return int(reply.total_tokens or 0)

        return self._read(count, what="countTokens")

    # -- context caches: not for Vertex batch (manifests with a cache block are refused) ------
    def create_cache(
        self, *, model: str, body: dict[str, Any], ttl_s: float, display_name: str
    ) -> tuple[str, str]:
        raise PermanentBackendError(CACHE_REFUSAL)

    def find_cache(self, display_name: str) -> tuple[str, str] | None:
        return None  # none was ever made here

    def extend_cache(self, name: str, *, ttl_s: float) -> str:
        raise PermanentBackendError(CACHE_REFUSAL)

    def delete_cache(self, name: str) -> None:
        return None  # none was ever made here


def _translate(exc: Exception, what: str, *, base_url: str) -> BackendError:
    """The one place Vertex AI, Cloud Storage, auth and transport exceptions become gbatch
    errors: a code, a status and words here; whether to retry is ``failures.classify``'s
    call. Nothing leaves unmapped: an exception nobody foresaw is permanent (``UNEXPECTED``).
    """
    if isinstance(exc, BackendError):
        return exc
    code, status, delay = 0, "", None
    if isinstance(exc, genai_errors.APIError):
        code, status = int(exc.code or 0), exc.status or ""
        message = f"{what}: {code} {status}: {exc.message or ''}".strip()
        delay = _retry_delay(exc)
    elif isinstance(exc, api_exceptions.GoogleAPICallError):
        code = int(exc.code or 0)
        status = exc.grpc_status_code.name if exc.grpc_status_code is not None else ""
        message = f"{what}: {code} {status}: {exc.message}".strip()
    elif isinstance(exc, auth_exceptions.RefreshError | auth_exceptions.DefaultCredentialsError):
        code, status = 401, "UNAUTHENTICATED"
        message = f"{what}: the Google Cloud credentials were refused: {exc}"
    elif isinstance(exc, storage_exceptions.InvalidResponse):
        response = exc.response
        code = int(getattr(response, "status_code", 0) or 0)
        message = f"{what}: Cloud Storage answered {code}: {exc}"
    elif isinstance(exc, storage_exceptions.DataCorruption):
        status, message = "TRANSPORT", f"{what}: the download failed its checksum ({exc})"
    elif isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout | ConnectionRefusedError):
        status = "CONNECTION"  # the request never left: nothing happened at the server
        message = f"{what}: cannot reach Vertex AI at {base_url} ({exc})"
    elif isinstance(exc, httpx2.TimeoutException):
        status, message = "TIMEOUT", f"{what}: no reply from {base_url} in time"
    elif isinstance(exc, requests.exceptions.Timeout):
        status, message = "TIMEOUT", f"{what}: no reply from Cloud Storage in time"
    elif isinstance(exc, requests.exceptions.RequestException | auth_exceptions.TransportError):
        # Cloud Storage and the token endpoint talk through requests
        status, message = "TRANSPORT", f"{what}: the connection failed ({exc})"
    elif isinstance(exc, httpx2.TransportError | ConnectionError):
        status, message = "TRANSPORT", f"{what}: the connection to {base_url} failed ({exc})"
    elif isinstance(exc, json.JSONDecodeError):
        status, message = "BAD_REPLY", f"{what}: the reply is not JSON ({exc})"
    elif isinstance(exc, OSError):
        status, message = "TRANSPORT", f"{what}: {type(exc).__name__}: {exc}"
    else:
        status = "UNEXPECTED"
        message = f"{what}: unexpected {type(exc).__module__}.{type(exc).__name__}: {exc}"
    if failures.classify(code=code, status=status).retryable:
        return TransientBackendError(message, code=code, status=status, delay=delay)
    return PermanentBackendError(message, code=code, status=status)


def _job_path(name: str) -> str:
    if not JOB_NAME.fullmatch(name):
        raise PermanentBackendError(
            f"not a Vertex AI batch job name: {name!r} (was this state directory used with "
            "GBATCH_BACKEND=gemini?)"
        )
    return name


def _remote_job(job: dict[str, Any]) -> RemoteJob:
    """A RemoteJob from a BatchPredictionJob resource."""
    stats = job.get("completionStats") or {}
    error = job.get("error")
    succeeded = int(stats.get("successfulCount", 0) or 0)
    failed = int(stats.get("failedCount", 0) or 0)
    incomplete = max(int(stats.get("incompleteCount", 0) or 0), 0)  # -1: unknown
    return RemoteJob(
        name=str(job.get("name", "")),
        display_name=str(job.get("displayName", "")),
        state=STATES.get(str(job.get("state", "")), JobState.PENDING),
        result_file=(job.get("outputInfo") or {}).get("gcsOutputDirectory"),
        request_count=succeeded + failed + incomplete,
        succeeded_count=succeeded,
        failed_count=failed,
        error=(f"{error.get('code', '')} {error.get('message', '')}".strip() if error else None),
    )
