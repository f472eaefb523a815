"""The Gemini adapter: the only module that imports google-genai.

Implements ``runner.core.ports.Backend`` over the official SDK, pinned to ``v1beta``, with a
timeout on every call; a job is a generation batch (batchGenerateContent) or an embeddings
batch (asyncBatchEmbedContent, ``client.batches.create_embeddings`` on the wire). Reads
(get, list, download, upload) retry transient errors with back-off that honours RetryInfo;
creates never retry here (a failed create may have happened: the engine resolves it by
listing). Job reads and creates go through the SDK's own client as raw calls: its
converters drop ``batchStats`` and the operation ``error`` from replies, and every request
field they do not know (``labels``, ``serviceTier``, ``store``...) from inline requests.
Every exception becomes a ``runner.errors`` type in :func:`_translate`, which leaves
transient vs permanent to ``runner.core.failures.classify``.
Constructed by the CLI; called by the engine.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from runner.adapters.sdk_calls import SdkCalls
from runner.core import failures
from runner.core.atomic import replacing
from runner.core.jobs import INLINE_MAX_REQUESTS, JobState, RemoteJob
from runner.core.ports import UploadedFile
from runner.errors import (
    BackendError,
    PermanentBackendError,
    ResultsMismatchError,
    TransientBackendError,
    UnclearCreateError,
)

JSONL_MIME = "application/jsonl"
PROCESSING_WAIT_S = 600.0  # how long an upload may stay PROCESSING (video) before we retry
PROCESSING_POLL_S = 2.0
# The create call of each task (the job's requests are GenerateContent or EmbedContent ones).
CREATE_METHODS = {"generate": "batchGenerateContent", "embed": "asyncBatchEmbedContent"}


class GeminiBackend(SdkCalls):
    """The Batch API through google-genai. ``api_key`` is held by the SDK client only."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        api_version: str = "v1beta",
        timeout_s: float = 120.0,
        retry: failures.RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        options = types.HttpOptions(api_version=api_version, timeout=int(timeout_s * 1000))
        if base_url:
            options.base_url = base_url
        client = genai.Client(api_key=api_key, http_options=options)
        super().__init__(client, retry=retry, sleep=sleep, translate=_translate)

    # -- files -------------------------------------------------------------------------------
    def upload_jsonl(self, path: Path, *, display_name: str) -> UploadedFile:
        return self._uploaded(path, mime_type=JSONL_MIME, display_name=display_name)

    def upload_media(self, path: Path, *, mime_type: str, display_name: str) -> UploadedFile:
        """Upload a media file; returned once the service has it ACTIVE (videos process)."""
        return self._uploaded(path, mime_type=mime_type, display_name=display_name)

    def _uploaded(self, path: Path, *, mime_type: str, display_name: str) -> UploadedFile:
        def upload() -> UploadedFile:
            uploaded = self._active(
                self._upload(path, mime_type=mime_type, display_name=display_name)
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

    def _active(self, uploaded: types.File) -> types.File:
        """Wait (bounded) while the service processes an upload (videos): a file is used
        only once it is ACTIVE."""
        waited = 0.0
        while uploaded.state == types.FileState.PROCESSING and uploaded.name:
            if waited >= PROCESSING_WAIT_S:
                raise TransientBackendError(
                    f"{uploaded.name} is still processing after {waited:.0f}s",
                    status="PROCESSING",
                )
            self._sleep(PROCESSING_POLL_S)
            waited += PROCESSING_POLL_S
            uploaded = self._client.files.get(name=uploaded.name)
        if uploaded.state == types.FileState.FAILED:
            raise PermanentBackendError(f"the service could not process {uploaded.name}")
        return uploaded

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
        self._read(
            _gone_is_fine(lambda: self._client.files.delete(name=name)), what=f"delete {name}"
        )

    def _upload(self, path: Path, *, mime_type: str, display_name: str) -> types.File:
        """``files.upload`` in its two steps, so that the final reply's body can be read.

        The final reply can be HTTP 200 with an error body and no ``file`` (python-genai
        #1547, #1590: "Unsupported MIME type: jsonl", now and then for a type accepted the
        moment before); ``files.upload`` then raises a bare ``KeyError('file')`` and the
        server's words are lost. Here it is a failed upload with those words, worth a retry.
        """
        size = path.stat().st_size
        start = self._client.files._create(
            file=types.File(display_name=display_name, mime_type=mime_type, size_bytes=size),
            config=types.CreateFileConfig(
                http_options=types.HttpOptions(
                    headers={
                        "Content-Type": "application/json",
                        "X-Goog-Upload-Protocol": "resumable",
                        "X-Goog-Upload-Command": "start",
                        "X-Goog-Upload-Header-Content-Length": str(size),
                        "X-Goog-Upload-Header-Content-Type": mime_type,
                    }
                ),
                should_return_http_response=True,
            ),
        )
        headers = (start.sdk_http_response.headers if start.sdk_http_response else None) or {}
        url = headers.get("x-goog-upload-url")
        if not url:
            raise TransientBackendError(
                "the upload was not started: no upload URL in the reply",
                status="UPLOAD_FAILED",
            )
        reply = self._client._api_client.upload_file(str(path), url, size).json
        body: dict[str, Any] = reply if isinstance(reply, dict) else {}
        if not isinstance(body.get("file"), dict):
            error = body.get("error")
            said = (
                " ".join(str(error.get(k, "")) for k in ("code", "status", "message")).strip()
                if isinstance(error, dict)
                else ""
            )
            raise TransientBackendError(
                f"the upload's final reply was an error: {said or str(reply)[:200] or 'empty'}",
                status="UPLOAD_FAILED",
            )
        return types.File._from_response(response=body["file"], kwargs={})

    # -- batches -----------------------------------------------------------------------------
    def create_job(
        self,
        *,
        model: str,
        display_name: str,
        src_file: str | None,
        inline: Path | None,
        task: str = "generate",
    ) -> RemoteJob:
        """Create a batch job; the body is written here, so inline requests go as they are.

        ``task``: ``generate`` (``models/{m}:batchGenerateContent``) or ``embed``
        (``models/{m}:asyncBatchEmbedContent``, ``client.batches.create_embeddings`` on the
        wire: the same ``{"batch": {"displayName", "inputConfig"}}`` body, its inline items
        EmbedContentRequests with their metadata). Inline requests go sorted by key: when
        their answers come back without metadata, :meth:`download_results` matches them by
        that order.
        """
        if task not in CREATE_METHODS:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(CREATE_METHODS)}")
        source: dict[str, Any]
        if src_file is not None:
            source = {"fileName": src_file}
        elif inline is not None:
            source = {"requests": {"requests": _inlined_requests(inline)}}
        else:
            raise ValueError("create_job needs src_file or inline")
        body = {"batch": {"displayName": display_name, "inputConfig": source}}
        what = f"create {display_name}"
        path = f"{_model_path(model)}:{CREATE_METHODS[task]}"
        try:
            reply = self._raw("post", path, body)
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
        return RemoteJob(name=str(reply["name"]), display_name=display_name, state=JobState.PENDING)

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

    def download_results(
        self, job: RemoteJob, dest: Path, *, keys: Collection[str] | None = None
    ) -> None:
        """Write the job's result lines to ``dest``.

        Inline answers are keyed by their metadata. When none has metadata (python-genai
        #2008, js-genai #1191) and there are as many as ``keys`` (the job's keys, in any
        order), they are matched by position in the order :meth:`create_job` sent them.
        Otherwise no key is invented: the raw operation is kept beside ``dest``
        (``<dest>.raw.json``) and :class:`ResultsMismatchError` raised.
        """
        if job.result_file:
            file_name = job.result_file

            def download() -> None:
                with replacing(dest) as partial:
                    self._client.files.download(file=file_name, destination=str(partial))

            self._read(download, what=f"download {file_name}")
            return
        operation = self._raw_get(_batch_path(job.name))
        output = operation.get("response") or operation.get("metadata", {}).get("output", {})
        inlined = _inlined(output)
        matched = _match_inline(inlined, keys)
        if matched is None:
            raw = dest.with_name(dest.name + ".raw.json")
            with replacing(raw) as partial:
                partial.write_text(json.dumps(operation, ensure_ascii=False))
            labelled = sum(1 for item in inlined if _inline_key(item) is not None)
            raise ResultsMismatchError(
                f"{job.name}: {len(inlined)} inline answers ({labelled} with a key) for "
                f"{'an unknown number of' if keys is None else len(keys)} requests: "
                f"which answer is whose cannot be told; the raw output is in {raw}",
                raw_path=raw,
            )
        with replacing(dest) as partial, partial.open("w") as out:
            for key, item in matched:
                line = {"key": key}
                line.update({k: item[k] for k in ("response", "error") if k in item})
                out.write(json.dumps(line, ensure_ascii=False) + "\n")

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
        try:
            config = types.CreateCachedContentConfig.model_validate(
                {**body, "ttl": f"{int(ttl_s)}s", "displayName": display_name}
            )
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
        delete = _gone_is_fine(lambda: self._client.caches.delete(name=name))
        self._read(delete, what=f"delete {name}")


def _translate(exc: Exception, what: str, *, base_url: str) -> BackendError:
    """The one place SDK and transport exceptions become gbatch errors.

    Each exception gets a code, a status and words here; whether it is worth retrying is
    ``failures.classify``'s call. Nothing leaves unmapped: an exception nobody foresaw is
    permanent (``UNEXPECTED``), so that a bug or a changed SDK shows instead of looping.
    """
    if isinstance(exc, BackendError):
        return exc
    code, status, delay = 0, "", None
    if isinstance(exc, genai_errors.APIError):
        code, status = int(exc.code or 0), exc.status or ""
        message = f"{what}: {code} {status}: {exc.message or ''}".strip()
        delay = _retry_delay(exc)
    elif isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout | ConnectionRefusedError):
        status = "CONNECTION"  # the request never left: nothing happened at the server
        message = f"{what}: cannot reach the Gemini API at {base_url} ({_words(exc)})"
    elif isinstance(exc, httpx2.TimeoutException):
        status, message = "TIMEOUT", f"{what}: no reply from {base_url} in time"
    elif isinstance(exc, httpx2.TransportError | ConnectionError):
        status = "TRANSPORT"
        message = f"{what}: the connection to {base_url} failed ({_words(exc)})"
    elif isinstance(exc, json.JSONDecodeError):
        status, message = "BAD_REPLY", f"{what}: the reply from {base_url} is not JSON ({exc})"
    elif isinstance(exc, ValueError) and "not finalized" in str(exc):
        # The SDK's upload: the last chunk's reply did not say "final".
        status, message = "UPLOAD_FAILED", f"{what}: the upload was not finalized ({exc})"
    elif isinstance(exc, OSError):
        status, message = "TRANSPORT", f"{what}: {type(exc).__name__}: {exc}"
    else:
        status = "UNEXPECTED"
        message = f"{what}: unexpected {type(exc).__module__}.{type(exc).__name__}: {exc}"
    if failures.classify(code=code, status=status).retryable:
        return TransientBackendError(message, code=code, status=status, delay=delay)
    return PermanentBackendError(message, code=code, status=status)


def _gone_is_fine(delete: Callable[[], object]) -> Callable[[], None]:
    """A delete for which 404 is success: already gone is what was wanted."""

    def call() -> None:
        try:
            delete()
        except genai_errors.APIError as exc:
            if exc.code != 404:
                raise

    return call


def _words(exc: Exception) -> str:
    """An exception's message without the errno prefix: 'connection refused'."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc)).strip() or type(exc).__name__
    return text[:1].lower() + text[1:]


def _may_have_created(error: BackendError) -> bool:
    """Whether a failed create may have made the job anyway (then: find it by listing).

    Not when the server answered 4xx (429 included: refused) or the connection was never
    made; a 5xx, a timeout, a dropped connection or a reply nobody could read all may
    follow a create that happened.
    """
    return not (400 <= error.code < 500 or error.status == "CONNECTION")


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


def _model_path(model: str) -> str:
    """``models/<id>`` for a model id (as the SDK's ``t_model`` does)."""
    name = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
    if not re.fullmatch(r"(models|tunedModels)/[A-Za-z0-9._-]+", name):
        raise PermanentBackendError(f"not a model name: {model!r}")
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


def _sent_order(keys: Iterable[str]) -> list[str]:
    """The order inline requests are sent in, and so the order of answers without keys."""
    return sorted(keys)


def _inlined_requests(inline: Path) -> list[dict[str, Any]]:
    """``{"key","request"}`` JSONL lines as the wire's inlined requests, every field kept.

    The request goes as it is: the SDK's InlinedRequest carries ``contents`` and a
    GenerateContentConfig only, so fields it does not know would be dropped on the way.
    """
    with inline.open() as handle:
        entries = [json.loads(line) for line in handle if line.strip()]
    lines = {str(entry["key"]): entry for entry in entries}
    if len(lines) != len(entries):
        raise PermanentBackendError(f"{inline}: a key occurs twice; answers could be mixed up")
    if len(lines) > INLINE_MAX_REQUESTS:
        raise PermanentBackendError(
            f"{len(lines)} requests is too many to send inline "
            f"(at most {INLINE_MAX_REQUESTS}); upload them as a file"
        )
    return [
        {"request": lines[key]["request"], "metadata": {"key": key}} for key in _sent_order(lines)
    ]


def _inlined(output: dict[str, Any]) -> list[dict[str, Any]]:
    """A finished inline job's answers. An embedding job's are EmbedContentResponses under
    the same ``inlinedResponses`` (EmbedContentBatchOutput in the API's discovery document);
    the SDK reads ``inlinedEmbedContentResponses`` too (its _BatchJobDestination_from_mldev),
    so both spellings are accepted. Lines come out as ``{"key", "response"|"error"}`` either
    way: an embedding's response as it is (``{"embedding": {"values"}, "tokenCount"}``),
    like the lines of a result file."""
    for name in ("inlinedResponses", "inlinedEmbedContentResponses"):
        found = output.get(name, {}).get("inlinedResponses")
        if found:
            return list(found)
    return []


def _inline_key(item: dict[str, Any]) -> str | None:
    metadata = item.get("metadata")
    key = metadata.get("key") if isinstance(metadata, dict) else None
    return None if key is None else str(key)


def _match_inline(
    items: list[dict[str, Any]], keys: Collection[str] | None
) -> list[tuple[str, dict[str, Any]]] | None:
    """Each inline answer with its key: from its metadata, else by position; None if unsure."""
    labels = [_inline_key(item) for item in items]
    if all(label is not None for label in labels):
        return [(str(label), item) for label, item in zip(labels, items, strict=True)]
    if keys is not None and len(keys) == len(items) and all(label is None for label in labels):
        return list(zip(_sent_order(keys), items, strict=True))
    return None
