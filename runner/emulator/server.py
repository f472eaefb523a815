"""The emulator's HTTP surface: the Gemini REST paths the SDK calls, over ``http.server``.

Routes ``/v1beta/...`` and ``/v1/...`` (files, resumable upload, download, batches, caches,
countTokens) to ``runner.emulator.service``; answers in the Google error envelope; applies
injected faults (status codes, hangs, dropped connections, truncated downloads, an upload
refused in a 200 body); records every call. ``/_emulator/...`` lets another process inject
faults and read the record.

A call is recorded before the first byte of its reply goes out, so a client that has its
reply always finds the call in the record (``Emulator.count`` right after a call is exact).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from runner.emulator.model import contents_text, count_tokens, is_embedding_model
from runner.emulator.service import INLINE_LIMIT, ApiError, Fault, Service, Upload, fault_from

CHUNK = 1 << 20
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
MODEL = r"(?:models/)?([a-z0-9][a-z0-9.\-]*)"
ROUTES: list[tuple[str, str, str]] = [
    ("POST", r"/upload/(v1beta|v1)/files", "files.upload"),
    ("GET", r"/(v1beta|v1)/files/([^/:]+)", "files.get"),
    ("GET", r"/(v1beta|v1)/files", "files.list"),
    ("DELETE", r"/(v1beta|v1)/files/([^/:]+)", "files.delete"),
    ("GET", r"/(v1beta|v1)/files/([^/:]+):download", "files.download"),
    ("GET", r"/download/(v1beta|v1)/files/([^/:]+):download", "files.download"),
    ("POST", rf"/(v1beta|v1)/{MODEL}:batchGenerateContent", "batches.create"),
    # the same logical call (and the same faults) for an embeddings batch; the path tells
    ("POST", rf"/(v1beta|v1)/{MODEL}:asyncBatchEmbedContent", "batches.create"),
    ("POST", rf"/(v1beta|v1)/{MODEL}:countTokens", "models.countTokens"),
    ("GET", r"/(v1beta|v1)/batches/([^/:]+)", "batches.get"),
    ("GET", r"/(v1beta|v1)/batches", "batches.list"),
    ("POST", r"/(v1beta|v1)/batches/([^/:]+):cancel", "batches.cancel"),
    ("DELETE", r"/(v1beta|v1)/batches/([^/:]+)", "batches.delete"),
    ("POST", r"/(v1beta|v1)/cachedContents", "caches.create"),
    ("GET", r"/(v1beta|v1)/cachedContents/([^/:]+)", "caches.get"),
    ("GET", r"/(v1beta|v1)/cachedContents", "caches.list"),
    ("PATCH", r"/(v1beta|v1)/cachedContents/([^/:]+)", "caches.update"),
    ("DELETE", r"/(v1beta|v1)/cachedContents/([^/:]+)", "caches.delete"),
    ("GET", r"/_emulator/calls", "admin.calls"),
    ("POST", r"/_emulator/faults", "admin.faults"),
    ("POST", r"/_emulator/advance", "admin.advance"),
    ("POST", r"/_emulator/reset", "admin.reset"),
]
VALID_ID = re.compile(r"^[a-z0-9-]{1,40}$")


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    endpoint: str
    status: int
    at: float


class _Dropped(Exception):
    """Close the connection without a reply."""


def _get(body: dict[str, Any], camel: str) -> Any:
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel)
    return body.get(camel, body.get(snake))


def _duration(text: Any) -> float:
    match = re.fullmatch(r"([\d.]+)s", str(text or ""))
    if not match:
        raise ApiError(400, "INVALID_ARGUMENT", f"invalid duration {text!r}")
    return float(match.group(1))


def _page(items: list[Any], query: dict[str, list[str]], key: str) -> dict[str, Any]:
    size = max(1, min(int(query.get("pageSize", ["50"])[0] or 50), 1000))
    start = int(query.get("pageToken", ["0"])[0] or 0)
    body: dict[str, Any] = {key: items[start : start + size]} if items[start : start + size] else {}
    if start + size < len(items):
        body["nextPageToken"] = str(start + size)
    return body


class Handler(BaseHTTPRequestHandler):
    server: EmulatorHTTPServer
    _call: tuple[str, str, str] | None = None  # (method, path, endpoint) until recorded
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def log_message(self, format: str, *args: Any) -> None:  # quiet: calls are recorded
        return

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    # -- plumbing ----------------------------------------------------------------------------
    def send_response(self, code: int, message: str | None = None) -> None:
        """Every reply starts here, before any of its bytes are written: record the call."""
        self._record(code)
        super().send_response(code, message)

    def _record(self, status: int) -> None:
        """Record the call being served, once (status 0: no reply)."""
        call = self._call
        if call is not None:
            self._call = None
            self.server.record(Call(*call, status, time.time()))

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        parsed = urlparse(self.path)
        query = parse_qs(parsed.query)
        groups: tuple[str, ...] = ()
        if method == "POST" and "upload_id" in query:
            endpoint = "files.upload"
        else:
            endpoint, groups = self._route(method, parsed.path)
        self._call = (method, parsed.path, endpoint)
        try:
            fault = None
            if not endpoint.startswith("admin."):
                key = self.headers.get("x-goog-api-key")
                if not key and "upload_id" not in query:  # the upload URL is the credential
                    raise ApiError(403, "PERMISSION_DENIED", "API key missing")
                finalize = "upload_id" in query and "finalize" in self.headers.get(
                    "X-Goog-Upload-Command", ""
                )
                fault = self.server.service.take_fault(
                    endpoint, self.path, job=False, finalize=finalize
                )
                if fault and fault.status and fault.kind is None:
                    self._drain_body()
                    raise self._fault_error(fault)
                if fault and fault.kind == "drop":
                    raise _Dropped
            handler: Callable[..., Any] = getattr(self, "_" + endpoint.replace(".", "_"))
            result = handler(*groups, query=query, fault=fault)
            if fault and fault.kind == "hang":  # it acted; the reply never comes
                self._record(0)
                self.server.stopping.wait()
                raise _Dropped
            if result is not None:
                self._send_json(200, result)
        except ApiError as exc:
            if not self._body_read:
                self._drain_body()  # keep-alive: the next request must start clean
            self._send_error(exc)
        except _Dropped:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self._record(0)  # no reply went out (dropped, hung, or the client went away)

    def _route(self, method: str, path: str) -> tuple[str, tuple[str, ...]]:
        for verb, pattern, endpoint in ROUTES:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                groups = match.groups()
                return endpoint, groups[1:] if groups and groups[0] in ("v1", "v1beta") else groups
        return "unknown", ()

    def _unknown(self, **_: Any) -> None:
        if re.search(r"/models/[^/]*:\w+$", urlparse(self.path).path):
            raise ApiError(400, "INVALID_ARGUMENT", f"invalid model name in {self.path}")
        raise ApiError(404, "NOT_FOUND", f"no route for {self.command} {self.path}")

    def _fault_error(self, fault: Fault) -> ApiError:
        code = fault.status or 500
        delay = fault.retry_delay_s if code == 429 else None
        return ApiError(
            code, STATUS_NAMES.get(code, "UNKNOWN"), "emulated fault", retry_delay=delay
        )

    def _drain_body(self) -> None:
        self._body_read = True
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            remaining -= len(self.rfile.read(min(CHUNK, remaining)))

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > INLINE_LIMIT + (1 << 20):
            self._drain_body()
            raise ApiError(400, "INVALID_ARGUMENT", "request payload exceeds the size limit")
        self._body_read = True
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError as exc:
            raise ApiError(400, "INVALID_ARGUMENT", f"invalid JSON payload: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "INVALID_ARGUMENT", "payload must be an object")
        return body

    def _send_json(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, exc: ApiError) -> None:
        details = []
        delay = getattr(exc, "retry_delay", None)
        if delay is not None:
            details.append(
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay:g}s"}
            )
        self._send_json(
            exc.code,
            {
                "error": {
                    "code": exc.code,
                    "message": exc.message,
                    "status": exc.status,
                    "details": details,
                }
            },
        )

    @property
    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _check_id(self, kind: str, value: str) -> str:
        if not VALID_ID.match(value):
            raise ApiError(400, "INVALID_ARGUMENT", f"invalid {kind} name: {value!r}")
        return value

    # -- files -------------------------------------------------------------------------------
    def _files_upload(self, *_: str, query: dict[str, list[str]], fault: Fault | None) -> Any:
        """Start a resumable upload, or take one of its chunks (``upload_id`` in the query).

        Fault ``kind="error_body"`` on the finalize chunk: HTTP 200, ``x-goog-upload-status:
        final``, and an error body with no ``file`` (the SDK then raises ``KeyError('file')``).
        """
        service = self.server.service
        if "upload_id" not in query:
            body = self._body()
            info = body.get("file") or {}
            size = int(
                self.headers.get("X-Goog-Upload-Header-Content-Length")
                or _get(info, "sizeBytes")
                or 0
            )
            upload = service.start_upload(
                display_name=_get(info, "displayName") or "",
                mime_type=self.headers.get("X-Goog-Upload-Header-Content-Type")
                or _get(info, "mimeType")
                or "application/octet-stream",
                size=size,
            )
            url = f"{self._base}/upload/v1beta/files?upload_id={upload.id}"
            self._send_json(200, {}, {"x-goog-upload-url": url, "x-goog-upload-status": "active"})
            return None
        session = service.uploads.get(query["upload_id"][0])
        if session is None:
            self._drain_body()
            raise ApiError(404, "NOT_FOUND", "unknown upload session")
        upload = session
        offset = int(self.headers.get("X-Goog-Upload-Offset") or 0)
        if offset != upload.received:
            self._drain_body()
            raise ApiError(400, "INVALID_ARGUMENT", f"offset {offset} != {upload.received}")
        self._stream_into(upload)
        command = self.headers.get("X-Goog-Upload-Command", "")
        if "finalize" not in command:
            self._send_json(200, {}, {"x-goog-upload-status": "active"})
            return None
        if fault is not None and fault.kind == "error_body":
            self._send_json(200, service.fail_upload(upload), {"x-goog-upload-status": "final"})
            return None
        stored = service.finish_upload(upload)
        version = "v1beta"
        self._send_json(
            200,
            {"file": service.file_json(stored, self._base, version)},
            {"x-goog-upload-status": "final"},
        )
        return None

    def _stream_into(self, upload: Upload) -> None:
        self._body_read = True
        remaining = int(self.headers.get("Content-Length") or 0)
        with upload.path.open("ab") as out:
            while remaining > 0:
                block = self.rfile.read(min(CHUNK, remaining))
                if not block:
                    break
                out.write(block)
                remaining -= len(block)
                upload.received += len(block)

    def _files_get(self, file_id: str, **_: Any) -> Any:
        self._check_id("file", file_id)
        return self.server.service.file_json(
            self.server.service.file(file_id), self._base, "v1beta"
        )

    def _files_list(self, *, query: dict[str, list[str]], **_: Any) -> Any:
        service = self.server.service
        files = [
            service.file_json(f, self._base, "v1beta")
            for f in sorted(service.files.values(), key=lambda f: -f.created)
        ]
        return _page(files, query, "files")

    def _files_delete(self, file_id: str, **_: Any) -> Any:
        self._check_id("file", file_id)
        service = self.server.service
        stored = service.file(file_id)
        with service.lock:
            service.files.pop(stored.id, None)
            service.deleted[stored.id] = stored
        return {}

    def _files_download(self, file_id: str, *, fault: Fault | None, **_: Any) -> Any:
        stored = self.server.service.file(file_id)
        size = stored.path.stat().st_size
        truncate = fault is not None and fault.kind == "truncate"
        self.send_response(200)
        self.send_header("Content-Type", stored.mime_type)
        if truncate:
            self.send_header("Connection", "close")  # body ends at close, cut short
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        limit = size // 2 if truncate else size
        with stored.path.open("rb") as handle:
            while limit > 0:
                block = handle.read(min(CHUNK, limit))
                if not block:
                    break
                self.wfile.write(block)
                limit -= len(block)
        return None

    # -- batches -----------------------------------------------------------------------------
    def _batches_create(self, model: str, *, fault: Fault | None, **_: Any) -> Any:
        """batchGenerateContent, or asyncBatchEmbedContent (``client.batches.create_embeddings``:
        the same body, EmbedContent requests); a model of the other kind is refused."""
        embed = urlparse(self.path).path.endswith(":asyncBatchEmbedContent")
        body = self._body()
        if embed != is_embedding_model(model):
            method = "asyncBatchEmbedContent" if embed else "batchGenerateContent"
            raise ApiError(
                400,
                "INVALID_ARGUMENT",
                f"models/{model} is not found for API version v1beta, or is not supported "
                f"for {method}",
            )
        batch = body.get("batch") or {}
        display_name = str(_get(batch, "displayName") or "")
        config = _get(batch, "inputConfig") or {}
        file_name = _get(config, "fileName")
        requests = (
            (config.get("requests") or {}).get("requests")
            if isinstance(config.get("requests"), dict)
            else None
        )
        if file_name is None and requests is None:
            raise ApiError(400, "INVALID_ARGUMENT", "inputConfig needs fileName or requests")
        if requests is not None and len(json.dumps(requests)) > INLINE_LIMIT:
            raise ApiError(400, "INVALID_ARGUMENT", "inline requests exceed 20 MB")
        service = self.server.service
        job_fault = service.take_fault("batches.create", display_name, job=True)
        created = service.create_batch(
            model=f"models/{model}",
            display_name=display_name,
            input_file=file_name,
            inline=requests,
            fault=job_fault,
            embed=embed,
        )
        return service.batch_json(created)

    def _batches_get(self, batch_id: str, **_: Any) -> Any:
        self._check_id("batch", batch_id)
        return self.server.service.batch_json(self.server.service.batch(batch_id))

    def _batches_list(self, *, query: dict[str, list[str]], **_: Any) -> Any:
        service = self.server.service
        return _page([service.batch_json(b) for b in service.all_batches()], query, "operations")

    def _batches_cancel(self, batch_id: str, **_: Any) -> Any:
        self.server.service.cancel(self._check_id("batch", batch_id))
        return {}

    def _batches_delete(self, batch_id: str, **_: Any) -> Any:
        self.server.service.delete_batch(self._check_id("batch", batch_id))
        return {}

    def _models_countTokens(self, model: str, **_: Any) -> Any:
        body = self._body()
        request = _get(body, "generateContentRequest") or body
        return {"totalTokens": count_tokens(contents_text(request.get("contents", [])))}

    # -- caches ------------------------------------------------------------------------------
    def _caches_create(self, **_: Any) -> Any:
        body = self._body()
        service = self.server.service
        if body.get("expireTime") or body.get("expire_time"):
            raise ApiError(400, "INVALID_ARGUMENT", "use ttl with the emulator")
        ttl = _duration(body.get("ttl")) if body.get("ttl") else 3600.0
        return service.cache_json(service.create_cache(body, ttl))

    def _caches_get(self, cache_id: str, **_: Any) -> Any:
        return self.server.service.cache_json(self.server.service.cache(cache_id))

    def _caches_list(self, *, query: dict[str, list[str]], **_: Any) -> Any:
        service = self.server.service
        live = [
            service.cache_json(c)
            for c in list(service.caches.values())
            if c.expires > service.now()
        ]
        return _page(live, query, "cachedContents")

    def _caches_update(self, cache_id: str, **_: Any) -> Any:
        body = self._body()
        service = self.server.service
        cache = service.cache(cache_id)
        cache.expires = service.now() + _duration(body.get("ttl"))
        return service.cache_json(cache)

    def _caches_delete(self, cache_id: str, **_: Any) -> Any:
        service = self.server.service
        service.cache(cache_id)
        with service.lock:
            service.caches.pop(cache_id, None)
        return {}

    # -- admin -------------------------------------------------------------------------------
    def _admin_calls(self, **_: Any) -> Any:
        return [asdict(c) for c in self.server.calls_snapshot()]

    def _admin_faults(self, **_: Any) -> Any:
        try:
            fault = fault_from(self._body())
        except ValueError as exc:
            raise ApiError(400, "INVALID_ARGUMENT", str(exc)) from None
        with self.server.service.lock:
            self.server.service.faults.append(fault)
        return {}

    def _admin_advance(self, **_: Any) -> Any:
        self.server.service.offset += float(self._body().get("seconds", 0))
        return {}

    def _admin_reset(self, **_: Any) -> Any:
        self.server.service.faults.clear()
        return {}


class EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: Service) -> None:
        super().__init__(address, Handler)
        self.service = service
        self.stopping = threading.Event()
        self._calls: list[Call] = []
        self._calls_lock = threading.Lock()

    def record(self, call: Call) -> None:
        with self._calls_lock:
            self._calls.append(call)

    def calls_snapshot(self) -> list[Call]:
        with self._calls_lock:
            return list(self._calls)
