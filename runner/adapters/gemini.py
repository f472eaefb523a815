"""The Gemini adapter: the only module that imports google-genai.

Implements ``runner.core.ports.Backend`` over the official SDK, pinned to ``v1beta``, with a
timeout on every call. Reads (get, list, download, upload) retry 429 / 5xx / transport errors
with back-off that honours RetryInfo; creates never retry here (a failed create may have
happened: the engine resolves it by listing). Job reads go through the SDK's own client as raw
GETs, because the SDK's converters drop ``batchStats`` and the operation ``error``.
SDK and transport exceptions become ``runner.errors`` types in :func:`_translate`.
Constructed by the CLI; called by the engine.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from runner.core.jobs import JobState, RemoteJob
from runner.core.ports import UploadedFile
from runner.errors import (
    BackendError,
    PermanentBackendError,
    TransientBackendError,
    UnclearCreateError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRYABLE_CODES = frozenset({408, 429, 500, 502, 503, 504})
JSONL_MIME = "application/jsonl"


class GeminiBackend:
    """The Batch API through google-genai. ``api_key`` is held by the SDK client only."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        api_version: str = "v1beta",
        timeout_s: float = 120.0,
        read_attempts: int = 5,
        max_backoff_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        options = types.HttpOptions(api_version=api_version, timeout=int(timeout_s * 1000))
        if base_url:
            options.base_url = base_url
        self._client = genai.Client(api_key=api_key, http_options=options)
        self._read_attempts = read_attempts
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep
        self.api_errors: Counter[str] = Counter()  # read by the metrics endpoint

    # -- files -------------------------------------------------------------------------------
    def upload_jsonl(self, path: Path, *, display_name: str) -> UploadedFile:
        return self._upload(path, mime_type=JSONL_MIME, display_name=display_name)

    def upload_media(self, path: Path, *, mime_type: str, display_name: str) -> UploadedFile:
        """Upload a media file; returned once the service has it ACTIVE (videos process)."""
        return self._upload(path, mime_type=mime_type, display_name=display_name)

    def _upload(self, path: Path, *, mime_type: str, display_name: str) -> UploadedFile:
        def upload() -> UploadedFile:
            uploaded = self._client.files.upload(
                file=str(path),
                config=types.UploadFileConfig(mime_type=mime_type, display_name=display_name),
            )
            if not uploaded.name:
                raise PermanentBackendError("upload returned a file without a name")
            return UploadedFile(
                name=uploaded.name,
                uri=uploaded.uri or "",
                # the File's own expirationTime: uploads live 48 h from upload, not from use
                expire_time=_rfc3339(uploaded.expiration_time or _in_48h()),
                size=int(uploaded.size_bytes or path.stat().st_size),
            )

        return self._read(upload, what=f"upload {path.name}")

    def file_exists(self, name: str) -> bool:
        def get() -> bool:
            try:
                self._client.files.get(name=name)
            except genai_errors.APIError as exc:
                if exc.code == 404:
                    return False
                raise
            return True

        return self._read(get, what=f"get {name}")

    def delete_file(self, name: str) -> None:
        def delete() -> None:
            try:
                self._client.files.delete(name=name)
            except genai_errors.APIError as exc:
                if exc.code != 404:  # already gone is what we wanted
                    raise

        self._read(delete, what=f"delete {name}")

    # -- batches -----------------------------------------------------------------------------
    def create_job(
        self, *, model: str, display_name: str, src_file: str | None, inline: Path | None
    ) -> RemoteJob:
        src: Any
        if src_file is not None:
            src = src_file
        elif inline is not None:
            with inline.open() as lines:
                src = [_inlined_request(json.loads(line)) for line in lines if line.strip()]
        else:
            raise ValueError("create_job needs src_file or inline")
        try:
            job = self._client.batches.create(
                model=model, src=src, config=types.CreateBatchJobConfig(display_name=display_name)
            )
        except Exception as exc:
            error = self._translated(exc, f"create {display_name}")
            if isinstance(error, TransientBackendError) and error.code != 429:
                # 5xx, timeouts, dropped connections: the job may exist. 429 means it does not.
                raise UnclearCreateError(
                    str(error), code=error.code, status=error.status, delay=error.delay
                ) from exc
            raise error from exc
        if not job.name:
            raise UnclearCreateError(f"create {display_name}: reply had no job name")
        return RemoteJob(name=job.name, display_name=display_name, state=JobState.PENDING)

    def list_jobs(self, *, max_pages: int | None = None) -> Iterator[RemoteJob]:
        token: str | None = None
        pages = 0
        while True:
            query: dict[str, Any] = {"pageSize": 100}
            if token:
                query["pageToken"] = token
            body = self._raw_get(f"batches?{urlencode(query)}")
            for operation in body.get("operations", body.get("batches", [])):
                yield _remote_job(operation)
            pages += 1
            token = body.get("nextPageToken")
            if not token or (max_pages is not None and pages >= max_pages):
                return

    def get_job(self, name: str) -> RemoteJob:
        return _remote_job(self._raw_get(_batch_path(name)))

    def cancel_job(self, name: str) -> None:
        self._read(lambda: self._client.batches.cancel(name=name), what=f"cancel {name}")

    def download_results(self, job: RemoteJob, dest: Path) -> None:
        partial = dest.with_suffix(dest.suffix + ".part")
        if job.result_file:
            file_name = job.result_file

            def download() -> None:
                self._client.files.download(file=file_name, destination=str(partial))

            self._read(download, what=f"download {file_name}")
        else:
            operation = self._raw_get(_batch_path(job.name))
            output = operation.get("response") or operation.get("metadata", {}).get("output", {})
            inlined = output.get("inlinedResponses", {}).get("inlinedResponses", [])
            with partial.open("w") as out:
                for index, item in enumerate(inlined):
                    key = (item.get("metadata") or {}).get("key", f"__line_{index + 1}")
                    line = {"key": key}
                    line.update({k: item[k] for k in ("response", "error") if k in item})
                    out.write(json.dumps(line, ensure_ascii=False) + "\n")
        partial.replace(dest)

    def count_tokens(self, *, model: str, contents: list[dict[str, Any]]) -> int:
        def count() -> int:
            reply = self._client.models.count_tokens(model=model, contents=contents)
            return int(reply.total_tokens or 0)

        return self._read(count, what="countTokens")

    # -- context caches ----------------------------------------------------------------------
    def create_cache(
        self, *, model: str, body: dict[str, Any], ttl_s: float, display_name: str
    ) -> tuple[str, str]:
        """Create a cachedContents resource; its name and expire time (RFC 3339).

        Not retried (a lost reply may have created it): the engine looks for it by name.
        """
        config = types.CreateCachedContentConfig.model_validate(
            {**body, "ttl": f"{int(ttl_s)}s", "displayName": display_name}
        )
        try:
            cache = self._client.caches.create(model=model, config=config)
        except Exception as exc:
            raise self._translated(exc, f"create cache {display_name}") from exc
        if not cache.name:
            raise UnclearCreateError(f"create cache {display_name}: reply had no name")
        return cache.name, _rfc3339(cache.expire_time)

    def find_cache(self, display_name: str) -> tuple[str, str] | None:
        """A live cache with this display name: (name, expire time), or None."""

        def find() -> tuple[str, str] | None:
            for cache in self._client.caches.list(config={"page_size": 100}):
                if cache.display_name == display_name and cache.name:
                    return cache.name, _rfc3339(cache.expire_time)
            return None

        return self._read(find, what="list caches")

    def extend_cache(self, name: str, *, ttl_s: float) -> str:
        """Set a cache's TTL from now; its new expire time."""

        def extend() -> str:
            config = types.UpdateCachedContentConfig(ttl=f"{int(ttl_s)}s")
            return _rfc3339(self._client.caches.update(name=name, config=config).expire_time)

        return self._read(extend, what=f"extend {name}")

    def delete_cache(self, name: str) -> None:
        def delete() -> None:
            try:
                self._client.caches.delete(name=name)
            except genai_errors.APIError as exc:
                if exc.code != 404:  # already gone is what we wanted
                    raise

        self._read(delete, what=f"delete {name}")

    # -- plumbing ----------------------------------------------------------------------------
    def _raw_get(self, path: str) -> dict[str, Any]:
        def get() -> dict[str, Any]:
            reply = self._client._api_client.request("get", path, {})
            return json.loads(reply.body) if reply.body else {}

        return self._read(get, what=f"GET {path}")

    def _read(self, call: Callable[[], T], *, what: str) -> T:
        """Run an idempotent call, retrying transient failures with back-off."""
        for attempt in range(1, self._read_attempts + 1):
            try:
                return call()
            except Exception as exc:
                error = self._translated(exc, what)
                if not isinstance(error, TransientBackendError) or attempt == self._read_attempts:
                    raise error from exc
                delay = min(error.delay * attempt, self._max_backoff_s)
                log.warning("%s: %s; retry %d in %.1fs", what, error, attempt, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def _translated(self, exc: Exception, what: str) -> BackendError:
        """``_translate``, counted in ``api_errors`` by HTTP code (or status) for metrics."""
        error = _translate(exc, what)
        self.api_errors[str(error.code) if error.code else error.status or "transport"] += 1
        return error


def _translate(exc: Exception, what: str) -> BackendError:
    """The one place SDK and transport exceptions become gbatch errors."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, genai_errors.APIError):
        code = int(exc.code or 0)
        status = exc.status or ""
        message = f"{what}: {code} {status}: {exc.message or ''}".strip()
        if code in RETRYABLE_CODES:
            return TransientBackendError(
                message, code=code, status=status, delay=_retry_delay(exc) or 2.0
            )
        return PermanentBackendError(message, code=code, status=status)
    if isinstance(exc, httpx2.TimeoutException):
        return TransientBackendError(f"{what}: timed out", status="TIMEOUT", delay=2.0)
    if isinstance(exc, httpx2.TransportError | OSError):
        return TransientBackendError(f"{what}: {type(exc).__name__}: {exc}", delay=2.0)
    raise exc


def _in_48h() -> datetime:
    return datetime.now(UTC) + timedelta(hours=48)


def _rfc3339(moment: datetime | None) -> str:
    return (moment or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")


def _retry_delay(exc: genai_errors.APIError) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail, if the error carries one."""
    details = (exc.details or {}).get("error", {}).get("details", []) if exc.details else []
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and detail.get("@type", "").endswith("RetryInfo"):
            match = re.match(r"^([\d.]+)s$", str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def _batch_path(name: str) -> str:
    if not re.fullmatch(r"batches/[A-Za-z0-9_-]+", name):
        raise PermanentBackendError(f"not a batch name: {name!r}")
    return name


def _remote_job(operation: dict[str, Any]) -> RemoteJob:
    """A RemoteJob from the wire's Operation envelope (or a bare batch resource)."""
    meta = operation.get("metadata", operation)
    output = operation.get("response") or meta.get("output") or {}
    stats = meta.get("batchStats", {})
    error = operation.get("error")
    return RemoteJob(
        name=operation.get("name", ""),
        display_name=meta.get("displayName", ""),
        state=JobState.from_wire(meta.get("state", "")),
        result_file=output.get("responsesFile"),
        request_count=int(stats.get("requestCount", 0)),
        succeeded_count=int(stats.get("successfulRequestCount", 0)),
        failed_count=int(stats.get("failedRequestCount", 0)),
        error=(f"{error.get('code', '')} {error.get('message', '')}".strip() if error else None),
    )


def _inlined_request(line: dict[str, Any]) -> dict[str, Any]:
    """A ``{"key","request"}`` line as the SDK's InlinedRequest (config holds the rest)."""
    request = dict(line["request"])
    config: dict[str, Any] = dict(request.pop("generationConfig", {}) or {})
    for field in ("systemInstruction", "tools", "toolConfig", "safetySettings", "cachedContent"):
        if field in request:
            config[field] = request.pop(field)
    inlined: dict[str, Any] = {
        "contents": request.pop("contents"),
        "metadata": {"key": str(line["key"])},
    }
    if config:
        inlined["config"] = config
    return inlined
