"""The Gemini adapter with the real SDK over HTTP: against the emulator, and against a tiny
scripted server for replies the emulator does not make (an upload finalized with an error
body, a reply that is not JSON)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from runner.adapters.gemini import GeminiBackend
from runner.core.failures import RetryPolicy
from runner.core.jobs import INLINE_MAX_REQUESTS, JobState, RemoteJob
from runner.emulator import Emulator, Fault
from runner.errors import (
    PermanentBackendError,
    ResultsMismatchError,
    TransientBackendError,
    UnclearCreateError,
)
from tests.conftest import API_KEY

MODEL = "gemini-2.5-flash"


def backend(
    base_url: str, sleeps: list[float] | None = None, *, read_attempts: int = 5
) -> GeminiBackend:
    record = sleeps if sleeps is not None else []
    return GeminiBackend(
        api_key=API_KEY,
        base_url=base_url,
        timeout_s=5,
        sleep=record.append,
        retry=RetryPolicy(attempts=read_attempts, first_delay_s=2.0, max_delay_s=60.0),
    )


def inline_file(path: Path, requests: dict[str, dict[str, Any]]) -> Path:
    path.write_text(
        "".join(json.dumps({"key": k, "request": r}) + "\n" for k, r in requests.items())
    )
    return path


def prompt(text: str) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def finished(b: GeminiBackend, name: str) -> RemoteJob:
    job = b.get_job(name)  # the emulator's jobs take no time: the first look sees the end
    assert job.state is JobState.SUCCEEDED
    return job


def result_lines(path: Path) -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return {line.pop("key"): line for line in lines}


def text_of(line: dict[str, Any]) -> str:
    return str(line["response"]["candidates"][0]["content"]["parts"][0]["text"])


def served(emulator: Emulator, endpoint: str) -> int:
    """Calls of ``endpoint`` the emulator recorded (it records just after replying)."""
    deadline = time.monotonic() + 5
    while emulator.count(endpoint) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    return emulator.count(endpoint)


def inline_answers(emulator: Emulator, name: str) -> list[dict[str, Any]]:
    """The emulator's stored answers of an inline job, to make them as the service may."""
    with emulator.service.lock:
        responses = emulator.service.batches[name.removeprefix("batches/")].inline_responses
    assert responses is not None
    return responses


# -- inline requests: every field reaches the wire ---------------------------------------------
def test_inline_requests_reach_the_wire_with_every_field(
    emulator: Emulator, tmp_path: Path
) -> None:
    full = {
        **prompt("hello"),
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "generationConfig": {"temperature": 0.2, "thinkingConfig": {"thinkingBudget": 0}},
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        "labels": {"team": "catalog"},
        "serviceTier": "flex",
        "store": False,
        "aFieldOfTomorrow": {"nested": [1, 2]},
    }
    plain = prompt("bye")
    path = inline_file(tmp_path / "in.jsonl", {"b": plain, "a": full})
    remote = backend(emulator.base_url).create_job(
        model=MODEL, display_name="fidelity", src_file=None, inline=path
    )
    with emulator.service.lock:
        sent = emulator.service.batches[remote.name.removeprefix("batches/")].inline
    assert sent is not None
    assert {item["metadata"]["key"]: item["request"] for item in sent} == {"a": full, "b": plain}
    assert [item["metadata"] for item in sent] == [{"key": "a"}, {"key": "b"}]  # in key order


def test_an_inline_job_over_the_cap_is_refused_before_anything_is_sent(
    emulator: Emulator, tmp_path: Path
) -> None:
    many = {f"k{i}": prompt(str(i)) for i in range(INLINE_MAX_REQUESTS + 1)}
    path = inline_file(tmp_path / "in.jsonl", many)
    with pytest.raises(PermanentBackendError, match="too many to send inline"):
        backend(emulator.base_url).create_job(
            model=MODEL, display_name="big", src_file=None, inline=path
        )
    assert not emulator.service.batches and emulator.count("batches.create") == 0


# -- inline answers without metadata ----------------------------------------------------------
def test_inline_answers_without_metadata_are_matched_by_position(
    emulator: Emulator, tmp_path: Path
) -> None:
    b = backend(emulator.base_url)
    path = inline_file(tmp_path / "in.jsonl", {k: prompt(f"about {k}") for k in ("c", "a", "b")})
    remote = b.create_job(model=MODEL, display_name="nometa", src_file=None, inline=path)
    job = finished(b, remote.name)
    for answer in inline_answers(emulator, remote.name):
        del answer["metadata"]  # as python-genai #2008 and js-genai #1191 report
    b.download_results(job, tmp_path / "out.jsonl", keys=["b", "c", "a"])
    lines = result_lines(tmp_path / "out.jsonl")
    assert {key: text_of(line) for key, line in lines.items()} == {
        "a": "echo: about a",
        "b": "echo: about b",
        "c": "echo: about c",
    }


def test_inline_answers_with_metadata_keep_their_keys(emulator: Emulator, tmp_path: Path) -> None:
    b = backend(emulator.base_url)
    path = inline_file(tmp_path / "in.jsonl", {k: prompt(f"about {k}") for k in ("x", "y")})
    remote = b.create_job(model=MODEL, display_name="meta", src_file=None, inline=path)
    b.download_results(finished(b, remote.name), tmp_path / "out.jsonl")
    lines = result_lines(tmp_path / "out.jsonl")
    assert {key: text_of(line) for key, line in lines.items()} == {
        "x": "echo: about x",
        "y": "echo: about y",
    }


def _drop_one(answers: list[dict[str, Any]]) -> list[str] | None:
    for answer in answers:
        del answer["metadata"]
    answers.pop()
    return ["a", "b", "c"]


def _strip_some(answers: list[dict[str, Any]]) -> list[str] | None:
    del answers[0]["metadata"]
    return ["a", "b", "c"]


def _no_keys_known(answers: list[dict[str, Any]]) -> list[str] | None:
    for answer in answers:
        del answer["metadata"]
    return None


@pytest.mark.parametrize("spoil", [_drop_one, _strip_some, _no_keys_known])
def test_inline_answers_that_cannot_be_matched_are_kept_raw_and_fail_the_download(
    emulator: Emulator,
    tmp_path: Path,
    spoil: Callable[[list[dict[str, Any]]], list[str] | None],
) -> None:
    b = backend(emulator.base_url)
    path = inline_file(tmp_path / "in.jsonl", {k: prompt(f"about {k}") for k in ("a", "b", "c")})
    remote = b.create_job(model=MODEL, display_name="spoilt", src_file=None, inline=path)
    job = finished(b, remote.name)
    keys = spoil(inline_answers(emulator, remote.name))
    dest = tmp_path / "out.jsonl"
    with pytest.raises(ResultsMismatchError) as caught:
        b.download_results(job, dest, keys=keys)
    error = caught.value
    assert isinstance(error, PermanentBackendError) and error.status == "RESULTS_MISMATCH"
    assert error.raw_path == tmp_path / "out.jsonl.raw.json" and str(error.raw_path) in str(error)
    raw = json.loads(error.raw_path.read_text())
    kept = raw["response"]["inlinedResponses"]["inlinedResponses"]
    assert [text_of(a) for a in kept] == [text_of(a) for a in inline_answers(emulator, remote.name)]
    assert not dest.exists()


# -- uploads ----------------------------------------------------------------------------------
def test_an_upload_lands_with_its_name_type_and_bytes(emulator: Emulator, tmp_path: Path) -> None:
    path = inline_file(tmp_path / "in.jsonl", {"a": prompt("one")})
    b = backend(emulator.base_url)
    uploaded = b.upload_jsonl(path, display_name="requests-1")
    name = uploaded.name
    with emulator.service.lock:
        stored = emulator.service.files[name.removeprefix("files/")]
    assert (stored.display_name, stored.mime_type) == ("requests-1", "application/jsonl")
    # the File's own expirationTime (48 h after upload), which the lifecycle judges by
    expires_at = datetime.fromisoformat(uploaded.expire_time).timestamp()
    assert abs(expires_at - (stored.created + 48 * 3600)) < 2
    assert stored.path.read_bytes() == path.read_bytes()
    media_upload = b.upload_media(path, mime_type="text/plain", display_name="media-1")
    uri, expires = media_upload.uri, media_upload.expire_time
    with emulator.service.lock:
        (media,) = [f for f in emulator.service.files.values() if f.display_name == "media-1"]
    assert uri.endswith(f"/files/{media.id}") and media.mime_type == "text/plain"
    assert datetime.fromisoformat(expires) > datetime.now(UTC)


class Scripted:
    """A loopback HTTP server whose every reply comes from ``answer(method, path)``:
    (status, headers, body). Records the paths it was asked for."""

    def __init__(self, answer: Callable[[str, str], tuple[int, dict[str, str], bytes]]) -> None:
        self.paths: list[str] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                self._reply("GET")

            def do_POST(self) -> None:
                self._reply("POST")

            def _reply(self, method: str) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                scripted.paths.append(self.path)
                status, headers, body = answer(method, self.path)
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Scripted:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def upload_finalized_with(request: pytest.FixtureRequest) -> Iterator[Scripted]:
    """The resumable upload's start as the API answers it; the last chunk as ``param`` says:
    (x-goog-upload-status, body)."""
    status, body = request.param

    def answer(method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        if "upload_id=" in path:
            return 200, {"x-goog-upload-status": status}, json.dumps(body).encode()
        url = f"{double.base_url}/upload/v1beta/files?upload_id=u1"
        return 200, {"x-goog-upload-url": url, "x-goog-upload-status": "active"}, b"{}"

    with Scripted(answer) as double:
        yield double


MIME_REFUSED = {
    "error": {"code": 400, "message": "Unsupported MIME type: jsonl", "status": "INVALID_ARGUMENT"}
}


@pytest.mark.parametrize("upload_finalized_with", [("final", MIME_REFUSED)], indirect=True)
def test_an_upload_finalized_with_an_error_body_is_a_retryable_failure_with_the_servers_words(
    upload_finalized_with: Scripted, tmp_path: Path
) -> None:
    """python-genai #1547 / #1590: HTTP 200, x-goog-upload-status final, no ``file``."""
    sleeps: list[float] = []
    b = backend(upload_finalized_with.base_url, sleeps, read_attempts=3)
    with pytest.raises(TransientBackendError) as caught:
        b.upload_jsonl(inline_file(tmp_path / "in.jsonl", {"a": prompt("x")}), display_name="d")
    assert "Unsupported MIME type: jsonl" in str(caught.value)
    assert caught.value.status == "UPLOAD_FAILED"
    starts = [p for p in upload_finalized_with.paths if "upload_id=" not in p]
    assert len(starts) == 3 and len(sleeps) == 2  # retried as a read, then given up


@pytest.mark.parametrize("upload_finalized_with", [("active", {})], indirect=True)
def test_an_upload_never_finalized_is_a_retryable_failure(
    upload_finalized_with: Scripted, tmp_path: Path
) -> None:
    """The SDK's own ValueError('... upload status is not finalized.') is mapped too."""
    media = tmp_path / "m.txt"
    media.write_text("some media")
    b = backend(upload_finalized_with.base_url, read_attempts=1)
    with pytest.raises(TransientBackendError, match="not finalized") as caught:
        b.upload_media(media, mime_type="text/plain", display_name="m")
    assert caught.value.status == "UPLOAD_FAILED"


# -- replies nobody foresaw, refused connections ----------------------------------------------
def test_a_reply_that_is_not_json_is_transient_and_an_unreadable_create_may_have_happened(
    tmp_path: Path,
) -> None:
    def answer(method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "text/html"}, b"<html>captive portal</html>"

    with Scripted(answer) as double:
        b = backend(double.base_url, read_attempts=2)
        with pytest.raises(TransientBackendError) as read:
            b.get_job("batches/abc")
        with pytest.raises(UnclearCreateError) as create:
            b.create_job(model=MODEL, display_name="d", src_file="files/f", inline=None)
    assert read.value.status == create.value.status == "BAD_REPLY"
    assert f"the reply from {double.base_url} is not JSON" in str(read.value)


def test_an_exception_nobody_foresaw_is_a_permanent_backend_error(emulator: Emulator) -> None:
    with pytest.raises(PermanentBackendError) as caught:
        backend(emulator.base_url).create_cache(
            model=MODEL, body={"contents": 5}, ttl_s=60, display_name="c"
        )
    assert caught.value.status == "UNEXPECTED" and "ValidationError" in str(caught.value)


def test_a_refused_connection_names_the_base_url_and_is_no_429(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        base_url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    sleeps: list[float] = []
    b = backend(base_url, sleeps, read_attempts=2)
    with pytest.raises(TransientBackendError) as read:
        b.get_job("batches/abc")
    assert f"cannot reach the Gemini API at {base_url} (connection refused)" in str(read.value)
    assert (read.value.code, read.value.status) == (0, "CONNECTION") and len(sleeps) == 1
    with pytest.raises(TransientBackendError) as create:
        b.create_job(model=MODEL, display_name="d", src_file="files/f", inline=None)
    assert not isinstance(create.value, UnclearCreateError)  # never sent: nothing to look for


# -- API errors: one classifier ---------------------------------------------------------------
def test_a_permanent_error_is_not_retried_and_a_429_waits_as_retry_info_says(
    emulator: Emulator, tmp_path: Path
) -> None:
    sleeps: list[float] = []
    b = backend(emulator.base_url, sleeps)
    with pytest.raises(PermanentBackendError) as missing:
        b.get_job("batches/doesnotexist")
    assert (missing.value.code, missing.value.status) == (404, "NOT_FOUND")
    assert sleeps == [] and served(emulator, "batches.get") == 1  # no retry
    remote = b.create_job(
        model=MODEL,
        display_name="d",
        src_file=None,
        inline=inline_file(tmp_path / "in.jsonl", {"a": prompt("x")}),
    )
    emulator.add_fault(Fault(endpoint="batches.get", status=429, times=2, retry_delay_s=7))
    assert b.get_job(remote.name).state is JobState.SUCCEEDED
    assert sleeps == [7.0, 7.0]  # what RetryInfo names, each time (the policy caps it)


@pytest.mark.parametrize(
    ("status", "raised"),
    [(400, PermanentBackendError), (429, TransientBackendError), (503, UnclearCreateError)],
)
def test_a_failed_create_is_unclear_only_when_it_may_have_happened(
    emulator: Emulator, status: int, raised: type[Exception]
) -> None:
    emulator.add_fault(Fault(endpoint="batches.create", status=status))
    with pytest.raises(raised) as caught:
        backend(emulator.base_url).create_job(
            model=MODEL, display_name="d", src_file="files/f", inline=None
        )
    assert type(caught.value) is raised


def test_a_cache_is_created_found_by_name_extended_and_deleted(emulator: Emulator) -> None:
    """The calls behind the TTL rule (timed in tests/engine/test_time_rules.py)."""
    b = backend(emulator.base_url)
    body = {"contents": [{"role": "user", "parts": [{"text": "guide " * 800}]}]}
    name, expire = b.create_cache(model=MODEL, body=body, ttl_s=60, display_name="gbatch-c-1")
    assert b.find_cache("gbatch-c-1") == (name, expire)
    extended = b.extend_cache(name, ttl_s=7200)
    lived = datetime.fromisoformat(extended) - datetime.fromisoformat(expire)
    assert 7000 < lived.total_seconds() < 7200  # now + 2 h, where it was now + 1 min
    b.delete_cache(name)
    b.delete_cache(name)  # already gone is what was wanted
    assert b.find_cache("gbatch-c-1") is None
