"""The emulator's state: files on disk, batch jobs, caches, faults, a movable clock.

Pure Python, no HTTP: ``runner.emulator.server`` turns requests into calls here. Jobs move
PENDING -> RUNNING -> SUCCEEDED lazily when looked at, by the clock; processing streams the
input file line by line into a result file. Thread-safe behind one lock.

Wire shapes follow the recorded replies in tests/fixtures/recorded/: batch ids are 36
lowercase alphanumerics, file ids 12, cache ids 40; a job's result file is
``files/batch-<batch id>``; the Operation's metadata repeats its ``name`` and carries
``batchStats`` from creation on (no ``inputConfig``); a cancelled job ends with the
Operation ``error`` {code 1, CANCELLED}; ``sha256Hash`` is the base64 of the hex digest.
An embeddings batch (``asyncBatchEmbedContent``) is the same job with EmbedContent lines: its
result lines are ``{"response": {"tokenCount", "embedding"}, "key"}`` as recorded, its inline
answers sit under ``inlinedResponses`` as the API's EmbedContentBatchOutput has them, and its
Operation's types name EmbedContentBatch (inferred: no embedding job was recorded whole).
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.emulator.model import (
    CacheView,
    LineError,
    answer,
    contents_text,
    count_tokens,
    embed,
    line_error,
)

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED")
FILE_TTL_S = 48 * 3600
INLINE_LIMIT = 20 * 1024 * 1024
# Lengths of the ids the real service hands out (recorded: batches/o08hk76gv328ihxcssjsgwt3g6
# omtfysxi46, files/p1mds9fl15bs, cachedContents/0c5j38gpopx49ok6x7kedvbpy65d1bzkq8i5vldr).
BATCH_ID_LENGTH, FILE_ID_LENGTH, CACHE_ID_LENGTH = 36, 12, 40
# The upload's final reply seen as HTTP 200 with this body and no ``file``
# (python-genai #1547, #1590); the message names the MIME type the upload declared.
UPLOAD_ERROR = "Unsupported MIME type: {mime_type}"
CANCELLED_MESSAGE = "The batch was cancelled."


class ApiError(Exception):
    """An error reply: HTTP status, Google status name, message."""

    def __init__(
        self, code: int, status: str, message: str, *, retry_delay: float | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message
        self.retry_delay = retry_delay


# Call-fault kinds that act only on the last call of a resumable upload (the finalize chunk).
FINALIZE_KINDS = ("error_body",)


@dataclass
class Fault:
    """Misbehaviour to inject (the package docstring lists every kind).

    Call faults: ``status`` or ``kind`` (hang, drop, truncate, error_body) on calls to
    ``endpoint`` whose path contains ``match``, for the first ``times`` of them (None:
    always). Job faults, attached at batches.create to a job whose display name contains
    ``match``: ``job_outcome`` (FAILED, EXPIRED, CANCELLED, PENDING_FOREVER),
    ``fail_lines_fraction``, ``drop_inline_metadata``, ``inline_out_of_order``."""

    endpoint: str = "*"
    status: int | None = None
    kind: str | None = None
    times: int | None = 1
    match: str | None = None
    retry_delay_s: float = 1.0
    job_outcome: str | None = None
    fail_lines_fraction: float = 0.0
    drop_inline_metadata: bool = False
    inline_out_of_order: bool = False

    @property
    def is_job_fault(self) -> bool:
        return (
            self.job_outcome is not None
            or self.fail_lines_fraction > 0
            or self.drop_inline_metadata
            or self.inline_out_of_order
        )


def fault_from(spec: Any) -> Fault:
    """A Fault from its fields as decoded JSON; ValueError names what is wrong."""
    if not isinstance(spec, dict):
        raise ValueError("fault must be a JSON object")
    known = {f.name for f in fields(Fault)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"unknown fault fields {unknown}; known: {sorted(known)}")
    return Fault(**spec)


@dataclass
class StoredFile:
    id: str
    display_name: str
    mime_type: str
    size: int
    path: Path
    created: float
    source: str = "UPLOADED"
    sha256: str = ""


@dataclass
class Upload:
    id: str
    display_name: str
    mime_type: str
    size: int
    path: Path
    received: int = 0


@dataclass
class Batch:
    id: str
    model: str
    display_name: str
    created: float
    input_file: str | None
    inline: list[dict[str, Any]] | None
    request_count: int = 0
    state: str = "PENDING"
    ended: float | None = None
    output_file: str | None = None
    inline_responses: list[dict[str, Any]] | None = None
    stats: dict[str, int] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    fault: Fault | None = None
    embed: bool = False  # an embeddings batch (asyncBatchEmbedContent)


@dataclass
class Cache:
    id: str
    model: str
    display_name: str
    body: dict[str, Any]
    created: float
    expires: float
    tokens: int


def stamp(seconds: float) -> str:
    return (
        datetime.fromtimestamp(seconds, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


ID_ALPHABET = string.ascii_lowercase + string.digits


def _id(length: int) -> str:
    """A fresh id like the service's: lowercase letters and digits."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(length))


class Service:
    def __init__(
        self,
        *,
        data_dir: Path,
        pending_s: float,
        running_s: float,
        expire_after_s: float,
        seed: int,
        clock: Callable[[], float],
    ) -> None:
        self.data_dir = data_dir
        self.pending_s, self.running_s, self.expire_after_s = pending_s, running_s, expire_after_s
        self.seed = seed
        self._clock = clock
        self.offset = 0.0
        self.lock = threading.RLock()
        self.files: dict[str, StoredFile] = {}
        # Files the client deleted, kept (content included) so tests can see what was sent.
        self.deleted: dict[str, StoredFile] = {}
        self.uploads: dict[str, Upload] = {}
        self.batches: dict[str, Batch] = {}
        self.caches: dict[str, Cache] = {}
        self.faults: list[Fault] = []

    def now(self) -> float:
        return self._clock() + self.offset

    # -- faults ------------------------------------------------------------------------------
    def take_fault(
        self, endpoint: str, haystack: str, *, job: bool, finalize: bool = False
    ) -> Fault | None:
        """The first matching fault of the given family, consuming one of its ``times``.

        ``finalize``: whether this call is the chunk that ends a resumable upload; faults of
        FINALIZE_KINDS match no other call.
        """
        with self.lock:
            for fault in self.faults:
                if fault.is_job_fault != job or fault.endpoint not in ("*", endpoint):
                    continue
                if fault.match and fault.match not in haystack:
                    continue
                if fault.kind in FINALIZE_KINDS and not finalize:
                    continue
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                return fault
        return None

    # -- files -------------------------------------------------------------------------------
    def start_upload(self, *, display_name: str, mime_type: str, size: int) -> Upload:
        upload = Upload(
            id=uuid.uuid4().hex,
            display_name=display_name,
            mime_type=mime_type,
            size=size,
            path=self.data_dir / f"upload-{uuid.uuid4().hex}",
        )
        upload.path.touch()
        with self.lock:
            self.uploads[upload.id] = upload
        return upload

    def finish_upload(self, upload: Upload) -> StoredFile:
        digest = hashlib.sha256()
        with upload.path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        stored = StoredFile(
            id=_id(FILE_ID_LENGTH),
            display_name=upload.display_name,
            mime_type=upload.mime_type,
            size=upload.received,
            path=upload.path,
            created=self.now(),
            # the service's sha256Hash is the base64 of the hex digest, not of the raw digest
            # (recorded: Batch_mode.ipynb, the File of its embeddings upload)
            sha256=base64.b64encode(digest.hexdigest().encode()).decode(),
        )
        with self.lock:
            self.uploads.pop(upload.id, None)
            self.files[stored.id] = stored
        return stored

    def fail_upload(self, upload: Upload) -> dict[str, Any]:
        """Drop an upload the service refused at its end; the body its final reply carries."""
        with self.lock:
            self.uploads.pop(upload.id, None)
        upload.path.unlink(missing_ok=True)
        message = UPLOAD_ERROR.format(mime_type=upload.mime_type)
        return {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}

    def file(self, file_id: str) -> StoredFile:
        with self.lock:
            stored = self.files.get(file_id)
        if stored is None or self.now() > stored.created + FILE_TTL_S:
            raise ApiError(404, "NOT_FOUND", f"File files/{file_id} not found.")
        return stored

    def file_json(self, stored: StoredFile, base_url: str, version: str) -> dict[str, Any]:
        result: dict[str, Any] = {"name": f"files/{stored.id}"}
        if stored.display_name:  # absent, not empty, when the upload named none (recorded)
            result["displayName"] = stored.display_name
        result.update(
            {
                "mimeType": stored.mime_type,
                "sizeBytes": str(stored.size),
                "createTime": stamp(stored.created),
                "updateTime": stamp(stored.created),
                "expirationTime": stamp(stored.created + FILE_TTL_S),
                "uri": f"{base_url}/{version}/files/{stored.id}",
                "state": "ACTIVE",
                "source": stored.source,
            }
        )
        if stored.sha256:
            result["sha256Hash"] = stored.sha256
        if stored.source == "GENERATED":
            result["downloadUri"] = (
                f"{base_url}/download/{version}/files/{stored.id}:download?alt=media"
            )
        return result

    # -- batches -----------------------------------------------------------------------------
    def create_batch(
        self,
        *,
        model: str,
        display_name: str,
        input_file: str | None,
        inline: list[dict[str, Any]] | None,
        fault: Fault | None,
        embed: bool = False,
    ) -> Batch:
        if input_file is not None:
            count = _count_lines(self.file(input_file.removeprefix("files/")).path)
        else:
            count = len(inline or [])
        batch = Batch(
            id=_id(BATCH_ID_LENGTH),
            model=model,
            display_name=display_name,
            created=self.now(),
            input_file=input_file,
            inline=inline,
            request_count=count,
            fault=fault,
            embed=embed,
        )
        with self.lock:
            self.batches[batch.id] = batch
        return batch

    def batch(self, batch_id: str) -> Batch:
        with self.lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                raise ApiError(404, "NOT_FOUND", f"Batch batches/{batch_id} not found.")
            self._advance(batch)
            return batch

    def all_batches(self) -> list[Batch]:
        with self.lock:
            batches = sorted(  # newest first; ties (same clock tick) by creation order
                reversed(self.batches.values()), key=lambda b: b.created, reverse=True
            )
            for batch in batches:
                self._advance(batch)
            return batches

    def cancel(self, batch_id: str) -> None:
        with self.lock:
            batch = self.batch(batch_id)
            if batch.state not in TERMINAL:
                self._cancelled(batch)

    def _cancelled(self, batch: Batch) -> None:
        """End ``batch`` as CANCELLED: a long-running operation cancelled ends with the
        ``error`` google.rpc.Status code 1 (the generativelanguage operations.cancel docs)."""
        batch.state, batch.ended = "CANCELLED", self.now()
        batch.error = line_error("CANCELLED", CANCELLED_MESSAGE)

    def delete_batch(self, batch_id: str) -> None:
        with self.lock:
            self.batch(batch_id)
            del self.batches[batch_id]

    def _advance(self, batch: Batch) -> None:
        if batch.state in TERMINAL:
            return
        age = self.now() - batch.created
        outcome = batch.fault.job_outcome if batch.fault else None
        if age >= self.expire_after_s or (outcome == "EXPIRED" and age >= self.pending_s):
            batch.state, batch.ended = "EXPIRED", self.now()
        elif outcome == "PENDING_FOREVER" or age < self.pending_s:
            batch.state = "PENDING"
        elif outcome == "FAILED":
            batch.state, batch.ended = "FAILED", self.now()
            batch.error = line_error("INTERNAL", "Batch job failed: internal error (emulated)")
        elif outcome == "CANCELLED":
            self._cancelled(batch)
        elif age < self.pending_s + self.running_s:
            batch.state = "RUNNING"
        else:
            self._process(batch)
            batch.state, batch.ended = "SUCCEEDED", self.now()

    def _cache_view(self, name: Any) -> CacheView | None:
        if name is None:
            return None
        cache = self.caches.get(str(name).removeprefix("cachedContents/"))
        if cache is None or self.now() >= cache.expires:
            raise LineError("NOT_FOUND", f"CachedContent {name} not found (or expired)")
        text = contents_text(cache.body.get("contents", []))
        tools = tuple(cache.body.get("tools") or ())
        return CacheView(name=str(name), text=text, tokens=cache.tokens, tools=tools)

    def _line(self, batch: Batch, key: str, request: Any) -> dict[str, Any]:
        fraction = batch.fault.fail_lines_fraction if batch.fault else 0.0
        if fraction and random.Random(f"{self.seed}:{batch.id}:{key}").random() < fraction:
            return {"error": line_error("INTERNAL", "Internal error (emulated line failure)")}
        if batch.embed:
            try:
                return {"response": embed(request, model=batch.model)}
            except LineError as exc:
                return {"error": exc.as_json()}
        try:
            cache = self._cache_view(
                request.get("cachedContent") if isinstance(request, dict) else None
            )
            self._check_files(request)
            return {"response": answer(request, model=batch.model, cache=cache)}
        except LineError as exc:
            return {"error": exc.as_json()}

    def _check_files(self, request: Any) -> None:
        """Every ``fileData`` part must name a live uploaded file (by its uri or name)."""
        contents = request.get("contents", []) if isinstance(request, dict) else []
        for content in contents if isinstance(contents, list) else []:
            for part in content.get("parts", []) if isinstance(content, dict) else []:
                data = part.get("fileData") if isinstance(part, dict) else None
                if not isinstance(data, dict):
                    continue
                uri = str(data.get("fileUri", ""))
                file_id = uri.rsplit("/files/", 1)[-1] if "/files/" in uri else ""
                with self.lock:
                    stored = self.files.get(file_id)
                if stored is None or self.now() > stored.created + FILE_TTL_S:
                    raise LineError("NOT_FOUND", f"File {uri} not found or expired")

    def _process(self, batch: Batch) -> None:
        ok = failed = 0
        fault = batch.fault
        if batch.inline is not None:
            responses = []
            for index, item in enumerate(batch.inline):
                metadata = item.get("metadata") or {}
                line = self._line(batch, str(metadata.get("key", index)), item.get("request"))
                ok, failed = ok + ("response" in line), failed + ("error" in line)
                keep = metadata and not (fault and fault.drop_inline_metadata)
                responses.append({**line, "metadata": metadata} if keep else line)
            if fault and fault.inline_out_of_order:  # out of input order, always (not by chance)
                responses.reverse()
            batch.inline_responses = responses
        else:
            assert batch.input_file is not None
            source = self.file(batch.input_file.removeprefix("files/"))
            out_id = f"batch-{batch.id}"  # recorded: files/batch-<the batch's own id>
            out_path = self.data_dir / f"result-{out_id}"
            lines: list[str] = []
            with (
                source.path.open(encoding="utf-8", errors="replace") as handle,
                out_path.open("w", encoding="utf-8") as out,
            ):
                for number, raw in enumerate(handle, start=1):
                    if not raw.strip():
                        continue
                    try:
                        entry = json.loads(raw)
                        key = str(entry.get("key", f"line-{number}"))
                        # recorded lines put ``key`` after the answer
                        line = {**self._line(batch, key, entry.get("request")), "key": key}
                    except (json.JSONDecodeError, AttributeError) as exc:
                        message = f"line {number} is not a JSON object: {exc}"
                        line = {
                            "error": line_error("INVALID_ARGUMENT", message),
                            "key": f"line-{number}",
                        }
                    ok, failed = ok + ("response" in line), failed + ("error" in line)
                    lines.append(json.dumps(line, ensure_ascii=False))
                    if len(lines) >= 256:  # bounded shuffle window keeps memory flat
                        self._flush(lines, out, batch)
                self._flush(lines, out, batch)
            stored = StoredFile(
                id=out_id,
                display_name=f"{batch.display_name}-results",
                mime_type="application/jsonl",
                size=out_path.stat().st_size,
                path=out_path,
                created=self.now(),
                source="GENERATED",
            )
            self.files[out_id] = stored
            batch.output_file = f"files/{out_id}"
        batch.stats = {
            "requestCount": ok + failed,
            "successfulRequestCount": ok,
            "failedRequestCount": failed,
        }

    def _flush(self, lines: list[str], out: Any, batch: Batch) -> None:
        random.Random(f"{self.seed}:{batch.id}:{len(lines)}").shuffle(lines)
        out.write("".join(line + "\n" for line in lines))
        lines.clear()

    def batch_json(self, batch: Batch) -> dict[str, Any]:
        output: dict[str, Any] = {}
        if batch.output_file:
            output = {"responsesFile": batch.output_file}
        elif batch.inline_responses is not None:
            output = {"inlinedResponses": {"inlinedResponses": batch.inline_responses}}
        # Counted from creation on (recorded pending jobs carry requestCount and
        # pendingRequestCount); zero counts are left out, as recorded.
        stats = dict(batch.stats) or (
            {"requestCount": batch.request_count}
            if batch.state in TERMINAL
            else {"requestCount": batch.request_count, "pendingRequestCount": batch.request_count}
        )
        name = f"batches/{batch.id}"
        kind = "EmbedContentBatch" if batch.embed else "GenerateContentBatch"
        metadata: dict[str, Any] = {
            "@type": f"type.googleapis.com/google.ai.generativelanguage.v1main.{kind}",
            "model": batch.model,
            "displayName": batch.display_name,
            "createTime": stamp(batch.created),
            "updateTime": stamp(batch.ended or batch.created),
            "batchStats": {k: str(v) for k, v in stats.items() if v},
            "state": f"BATCH_STATE_{batch.state}",
            "name": name,
        }
        body: dict[str, Any] = {"name": name, "metadata": metadata}
        if batch.state in TERMINAL:
            metadata["endTime"] = stamp(batch.ended or self.now())
            body["done"] = True
            if output:
                metadata["output"] = output
                body["response"] = {
                    "@type": f"type.googleapis.com/google.ai.generativelanguage.v1main.{kind}"
                    "Output",
                    **output,
                }
            if batch.error:
                body["error"] = batch.error
        return body

    # -- caches ------------------------------------------------------------------------------
    def create_cache(self, body: dict[str, Any], ttl_s: float) -> Cache:
        model = body.get("model")
        if not model:
            raise ApiError(400, "INVALID_ARGUMENT", "model is required")
        text = contents_text(body.get("contents", [])) + contents_text(
            [body.get("systemInstruction") or body.get("system_instruction") or {}]
        )
        tokens = count_tokens(text)
        minimum = 4096 if "-pro" in str(model) else 1024
        if tokens < minimum:
            raise ApiError(
                400,
                "INVALID_ARGUMENT",
                f"Cached content is too small. total_token_count={tokens}, "
                f"min_total_token_count={minimum}",
            )
        cache = Cache(
            id=_id(CACHE_ID_LENGTH),
            model=str(model),
            display_name=body.get("displayName", ""),
            body=body,
            created=self.now(),
            expires=self.now() + ttl_s,
            tokens=tokens,
        )
        with self.lock:
            self.caches[cache.id] = cache
        return cache

    def cache(self, cache_id: str) -> Cache:
        with self.lock:
            cache = self.caches.get(cache_id)
        if cache is None or self.now() >= cache.expires:
            raise ApiError(404, "NOT_FOUND", f"CachedContent cachedContents/{cache_id} not found")
        return cache

    def cache_json(self, cache: Cache) -> dict[str, Any]:
        return {
            "name": f"cachedContents/{cache.id}",
            "model": cache.model,
            "displayName": cache.display_name,
            "createTime": stamp(cache.created),
            "updateTime": stamp(cache.created),
            "expireTime": stamp(cache.expires),
            "usageMetadata": {"totalTokenCount": cache.tokens},
        }


def _count_lines(path: Path) -> int:
    """Requests in an input file: its non-blank lines."""
    with path.open("rb") as handle:
        return sum(1 for raw in handle if raw.strip())


def default_clock() -> float:
    return time.time()
