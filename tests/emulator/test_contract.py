"""The unmodified google-genai SDK against the emulator over real HTTP, call by call."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx2
import jsonschema
import pytest
from google import genai
from google.genai import errors, types

from runner.emulator import Call, Emulator, EmulatorConfig, Fault, parse_fault
from runner.emulator.server import Handler


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(
        EmulatorConfig(data_dir=tmp_path / "data", pending_seconds=10, running_seconds=10)
    ) as emulator:
        yield emulator


def client(
    emu: Emulator, *, version: str = "v1beta", timeout_ms: int | None = None
) -> genai.Client:
    options = types.HttpOptions(base_url=emu.base_url, api_version=version, timeout=timeout_ms)
    return genai.Client(api_key="contract-test", http_options=options)


def seed_file(path: Path, n: int = 3) -> Path:
    with path.open("w") as out:
        for i in range(n):
            out.write(
                json.dumps(
                    {
                        "key": f"request_{i}",
                        "request": {"contents": [{"parts": [{"text": f"Explain topic {i}"}]}]},
                    }
                )
                + "\n"
            )
    return path


def test_the_seed_workflow_verbatim(emu: Emulator, tmp_path: Path) -> None:
    c = client(emu)
    uploaded = c.files.upload(
        file=str(seed_file(tmp_path / "batch_requests.jsonl")),
        config={"display_name": "my-batch-requests", "mime_type": "application/jsonl"},
    )
    assert uploaded.name and uploaded.name.startswith("files/")
    assert uploaded.state and uploaded.state.name == "ACTIVE"
    job = c.batches.create(
        model="gemini-2.5-flash", src=uploaded.name, config={"display_name": "file-upload-job-1"}
    )
    assert job.name and job.state and job.state.name == "JOB_STATE_PENDING" and not job.done
    emu.advance(11)
    assert c.batches.get(name=job.name).state.name == "JOB_STATE_RUNNING"  # type: ignore[union-attr]
    emu.advance(10)
    done = c.batches.get(name=job.name)
    assert done.state and done.state.name == "JOB_STATE_SUCCEEDED" and done.done
    assert done.dest and done.dest.file_name and done.dest.file_name.startswith("files/batch-")
    content = c.files.download(file=done.dest.file_name).decode()
    answers = {line["key"]: line for line in map(json.loads, content.splitlines())}
    assert set(answers) == {"request_0", "request_1", "request_2"}
    text = answers["request_1"]["response"]["candidates"][0]["content"]["parts"][0]["text"]
    assert text == "echo: Explain topic 1"
    usage = answers["request_1"]["response"]["usageMetadata"]
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage[
        "candidatesTokenCount"
    ] + usage.get("thoughtsTokenCount", 0)
    with pytest.raises(errors.ClientError) as failure:
        c.files.get(name=done.dest.file_name)  # result names are over the 40-char id limit
    assert failure.value.code == 400


def test_inline_requests_answer_in_order_with_metadata(emu: Emulator) -> None:
    c = client(emu, version="v1")
    job = c.batches.create(
        model="models/gemini-2.5-flash",
        src=[
            {"contents": [{"parts": [{"text": "one"}], "role": "user"}], "metadata": {"key": "a"}},
            {
                "contents": [{"parts": [{"text": "two"}], "role": "user"}],
                "metadata": {"key": "b"},
                "config": {
                    "response_mime_type": "application/json",
                    "response_json_schema": {
                        "type": "object",
                        "properties": {"n": {"type": "integer"}},
                        "required": ["n"],
                    },
                },
            },
        ],
        config={"display_name": "inline"},
    )
    emu.advance(30)
    done = c.batches.get(name=job.name)  # type: ignore[arg-type]
    responses = done.dest.inlined_responses  # type: ignore[union-attr]
    assert responses is not None and [r.metadata for r in responses] == [{"key": "a"}, {"key": "b"}]
    assert responses[0].response and responses[0].response.text == "echo: one"
    assert responses[1].response and isinstance(
        json.loads(responses[1].response.text or "")["n"], int
    )


def test_list_pages_cancel_and_delete(emu: Emulator, tmp_path: Path) -> None:
    c = client(emu)
    name = c.files.upload(
        file=str(seed_file(tmp_path / "r.jsonl")), config={"mime_type": "application/jsonl"}
    ).name
    jobs = [
        c.batches.create(
            model="gemini-2.5-flash",
            src=name,  # type: ignore[arg-type]
            config={"display_name": f"job-{i}"},
        )
        for i in range(5)
    ]
    listed = list(c.batches.list(config={"page_size": 2}))
    assert [j.display_name for j in listed] == [f"job-{i}" for i in reversed(range(5))]
    assert emu.count("batches.list") == 3
    c.batches.cancel(name=jobs[0].name)  # type: ignore[arg-type]
    assert c.batches.get(name=jobs[0].name).state.name == "JOB_STATE_CANCELLED"  # type: ignore[arg-type,union-attr]
    c.batches.delete(name=jobs[1].name)  # type: ignore[arg-type]
    with pytest.raises(errors.ClientError) as missing:
        c.batches.get(name=jobs[1].name)  # type: ignore[arg-type]
    assert (missing.value.code, missing.value.status) == (404, "NOT_FOUND")


def test_every_call_is_recorded_before_its_reply_goes_out(
    emu: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that has its reply finds its call counted (#15: the list test above saw 2 of
    its 3 pages counted under load).

    A reply's first bytes leave with its headers (``end_headers``); a call recorded after
    that, by the same handler thread within the same request, was recorded too late.
    """
    replying: set[int] = set()  # handler threads whose current reply has started
    late: list[str] = []
    parse_request, end_headers = Handler.parse_request, Handler.end_headers
    record = emu._server.record

    def new_request(self: Handler) -> bool:
        replying.discard(threading.get_ident())
        return parse_request(self)

    def headers_out(self: Handler) -> None:
        replying.add(threading.get_ident())
        end_headers(self)

    def counted(call: Call) -> None:
        if threading.get_ident() in replying:
            late.append(f"{call.endpoint} {call.status}")
        record(call)

    monkeypatch.setattr(Handler, "parse_request", new_request)
    monkeypatch.setattr(Handler, "end_headers", headers_out)
    monkeypatch.setattr(emu._server, "record", counted)
    c = client(emu)
    name = c.files.upload(  # start, then the finalize chunk
        file=str(seed_file(tmp_path / "r.jsonl")), config={"mime_type": "application/jsonl"}
    ).name
    job = c.batches.create(model="gemini-2.5-flash", src=name, config={"display_name": "n"})  # type: ignore[arg-type]
    assert [j.name for j in c.batches.list(config={"page_size": 1})] == [job.name]
    with pytest.raises(errors.ClientError):  # an error reply
        c.batches.get(name="batches/" + "x" * 36)
    emu.advance(21)
    done = c.batches.get(name=job.name)  # type: ignore[arg-type]
    assert len(c.files.download(file=done.dest.file_name).splitlines()) == 3  # type: ignore[arg-type,union-attr]
    assert late == []
    assert [(call.endpoint, call.status) for call in emu.calls] == [
        ("files.upload", 200),
        ("files.upload", 200),
        ("batches.create", 200),
        ("batches.list", 200),
        ("batches.get", 404),
        ("batches.get", 200),
        ("files.download", 200),
    ]


def test_a_multi_chunk_upload_round_trips_byte_for_byte(emu: Emulator, tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    line = json.dumps({"key": "k", "request": {"contents": [{"parts": [{"text": "x" * 1000}]}]}})
    with big.open("w") as out:
        for i in range(9_000):  # about 9.1 MB: two chunks of 8 MiB
            out.write(line.replace('"k"', f'"k{i}"') + "\n")
    assert big.stat().st_size > 8 * 1024 * 1024
    c = client(emu)
    uploaded = c.files.upload(file=str(big), config={"mime_type": "application/jsonl"})
    assert int(uploaded.size_bytes or 0) == big.stat().st_size
    assert emu.count("files.upload") == 3  # start + two chunks
    stored = emu.service.files[uploaded.name.removeprefix("files/")]  # type: ignore[union-attr]
    assert (
        hashlib.sha256(stored.path.read_bytes()).digest()
        == hashlib.sha256(big.read_bytes()).digest()
    )


def test_caches_crud_expiry_and_a_line_that_names_an_expired_cache(
    emu: Emulator, tmp_path: Path
) -> None:
    c = client(emu)
    with pytest.raises(errors.ClientError, match="Cached content is too small"):
        c.caches.create(
            model="gemini-2.5-flash",
            config={"contents": [{"role": "user", "parts": [{"text": "tiny"}]}], "ttl": "60s"},
        )
    cache = c.caches.create(
        model="gemini-2.5-flash",
        config={
            "contents": [{"role": "user", "parts": [{"text": "context " * 600}]}],
            "ttl": "60s",
            "display_name": "ctx",
        },
    )
    assert cache.name and cache.usage_metadata and cache.usage_metadata.total_token_count
    c.caches.update(name=cache.name, config={"ttl": "7200s"})
    assert [x.name for x in c.caches.list(config={"page_size": 10})] == [cache.name]
    lines = tmp_path / "cached.jsonl"
    lines.write_text(
        json.dumps(
            {
                "key": "k",
                "request": {"contents": [{"parts": [{"text": "q"}]}], "cachedContent": cache.name},
            }
        )
        + "\n"
        + json.dumps(
            {
                "key": "both",
                "request": {
                    "contents": [{"parts": [{"text": "q"}]}],
                    "cachedContent": cache.name,
                    "systemInstruction": {"parts": [{"text": "no"}]},
                },
            }
        )
        + "\n"
    )
    name = c.files.upload(file=str(lines), config={"mime_type": "application/jsonl"}).name
    first = c.batches.create(model="gemini-2.5-flash", src=name, config={"display_name": "c1"})  # type: ignore[arg-type]
    emu.advance(21)
    out = {
        x["key"]: x
        for x in map(
            json.loads,
            c.files.download(file=c.batches.get(name=first.name).dest.file_name)
            .decode()
            .splitlines(),
        )
    }  # type: ignore[arg-type,union-attr]
    assert out["k"]["response"]["usageMetadata"]["cachedContentTokenCount"] > 0
    assert out["both"]["error"] == {"code": 3, "message": out["both"]["error"]["message"]}
    emu.advance(7200)
    with pytest.raises(errors.ClientError):
        c.caches.get(name=cache.name)
    second = c.batches.create(model="gemini-2.5-flash", src=name, config={"display_name": "c2"})  # type: ignore[arg-type]
    emu.advance(21)
    out = {
        x["key"]: x
        for x in map(
            json.loads,
            c.files.download(file=c.batches.get(name=second.name).dest.file_name)
            .decode()
            .splitlines(),
        )
    }  # type: ignore[arg-type,union-attr]
    assert out["k"]["error"]["code"] == 5  # google.rpc.Code NOT_FOUND


def test_count_tokens_agrees_with_usage(emu: Emulator) -> None:
    c = client(emu)
    reply = c.models.count_tokens(model="gemini-2.5-flash", contents="12345678")
    assert reply.total_tokens == 2


def test_errors_surface_as_the_sdk_exceptions(emu: Emulator) -> None:
    c = client(emu)
    with pytest.raises(errors.ClientError) as bad:
        c.batches.create(model="Not A Model!", src="files/x", config={"display_name": "x"})
    assert bad.value.code in (400, 404)
    with pytest.raises(errors.ClientError) as missing_file:
        c.batches.create(
            model="gemini-2.5-flash", src="files/nothere", config={"display_name": "x"}
        )
    assert missing_file.value.code == 404
    emu.add_fault(Fault(endpoint="batches.list", status=429, retry_delay_s=23))
    with pytest.raises(errors.ClientError) as limited:
        list(c.batches.list(config={"page_size": 5}))
    assert (limited.value.code, limited.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert limited.value.details["error"]["details"][0]["retryDelay"] == "23s"
    emu.add_fault(Fault(endpoint="batches.list", status=503))
    with pytest.raises(errors.ServerError) as down:
        list(c.batches.list(config={"page_size": 5}))
    assert down.value.code == 503


def test_a_hung_create_times_out_client_side_yet_the_job_exists(
    emu: Emulator, tmp_path: Path
) -> None:
    c = client(emu, timeout_ms=500)
    name = c.files.upload(
        file=str(seed_file(tmp_path / "r.jsonl")), config={"mime_type": "application/jsonl"}
    ).name
    emu.add_fault(Fault(endpoint="batches.create", kind="hang"))
    with pytest.raises(httpx2.TimeoutException):
        c.batches.create(model="gemini-2.5-flash", src=name, config={"display_name": "lost"})  # type: ignore[arg-type]
    assert [j.display_name for j in c.batches.list(config={"page_size": 10})] == ["lost"]


def test_job_faults_failed_expired_and_failing_lines(emu: Emulator, tmp_path: Path) -> None:
    c = client(emu)
    name = c.files.upload(
        file=str(seed_file(tmp_path / "r.jsonl", n=200)), config={"mime_type": "application/jsonl"}
    ).name
    emu.add_fault(Fault(endpoint="batches.create", match="fails", job_outcome="FAILED"))
    emu.add_fault(Fault(endpoint="batches.create", match="expires", job_outcome="EXPIRED"))
    emu.add_fault(Fault(endpoint="batches.create", match="flaky", fail_lines_fraction=0.1))
    jobs = {
        d: c.batches.create(model="gemini-2.5-flash", src=name, config={"display_name": d})  # type: ignore[arg-type]
        for d in ("fails", "expires", "flaky")
    }
    emu.advance(30)
    states = {d: c.batches.get(name=j.name).state.name for d, j in jobs.items()}  # type: ignore[arg-type,union-attr]
    assert states == {
        "fails": "JOB_STATE_FAILED",
        "expires": "JOB_STATE_EXPIRED",
        "flaky": "JOB_STATE_SUCCEEDED",
    }
    flaky = c.batches.get(name=jobs["flaky"].name)  # type: ignore[arg-type]
    lines = [
        json.loads(x) for x in c.files.download(file=flaky.dest.file_name).decode().splitlines()
    ]  # type: ignore[arg-type,union-attr]
    failed = sum(1 for x in lines if "error" in x)
    assert len(lines) == 200 and 5 <= failed <= 40


def test_answers_validate_against_the_schema_and_search_grounds(
    emu: Emulator, tmp_path: Path
) -> None:
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "score": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
            "meta": {
                "type": "object",
                "properties": {"ok": {"type": "boolean"}},
                "required": ["ok"],
            },
        },
        "required": ["title", "score", "tags", "meta"],
    }
    lines = tmp_path / "s.jsonl"
    lines.write_text(
        json.dumps(
            {
                "key": "s",
                "request": {
                    "contents": [{"parts": [{"text": "Describe a tent"}]}],
                    "tools": [{"googleSearch": {}}],
                    "generationConfig": {
                        "responseMimeType": "application/json",
                        "responseJsonSchema": schema,
                    },
                },
            }
        )
        + "\n"
    )
    c = client(emu)
    name = c.files.upload(file=str(lines), config={"mime_type": "application/jsonl"}).name
    job = c.batches.create(model="gemini-2.5-flash", src=name, config={"display_name": "s"})  # type: ignore[arg-type]
    emu.advance(30)
    (line,) = map(
        json.loads,
        c.files.download(file=c.batches.get(name=job.name).dest.file_name).decode().splitlines(),
    )  # type: ignore[arg-type,union-attr]
    candidate = line["response"]["candidates"][0]
    jsonschema.validate(json.loads(candidate["content"]["parts"][0]["text"]), schema)
    grounding = candidate["groundingMetadata"]
    assert grounding["webSearchQueries"] and grounding["groundingChunks"][0]["web"]["uri"]


def test_a_truncated_download_is_cut_short(emu: Emulator, tmp_path: Path) -> None:
    c = client(emu)
    name = c.files.upload(
        file=str(seed_file(tmp_path / "r.jsonl", n=50)), config={"mime_type": "application/jsonl"}
    ).name
    job = c.batches.create(model="gemini-2.5-flash", src=name, config={"display_name": "t"})  # type: ignore[arg-type]
    emu.advance(30)
    result = c.batches.get(name=job.name).dest.file_name  # type: ignore[arg-type,union-attr]
    full = c.files.download(file=result)  # type: ignore[arg-type]
    emu.add_fault(Fault(endpoint="files.download", kind="truncate"))
    target = tmp_path / "cut.jsonl"
    c.files.download(file=result, destination=str(target))  # type: ignore[arg-type]
    assert 0 < target.stat().st_size < len(full)
    assert os.path.getsize(target) == len(full) // 2


def test_a_malformed_line_fails_alone(emu: Emulator, tmp_path: Path) -> None:
    lines = tmp_path / "m.jsonl"
    lines.write_text(
        '{"key": "ok", "request": {"contents": [{"parts": [{"text": "hi"}]}]}}\n'
        '{"key": "broken", "request": {"contents": [\n'
        '{"key": "empty", "request": {}}\n'
    )
    c = client(emu)
    name = c.files.upload(file=str(lines), config={"mime_type": "application/jsonl"}).name
    job = c.batches.create(model="gemini-2.5-flash", src=name, config={"display_name": "m"})  # type: ignore[arg-type]
    emu.advance(30)
    done = c.batches.get(name=job.name)  # type: ignore[arg-type]
    assert done.state and done.state.name == "JOB_STATE_SUCCEEDED"
    out = {
        x["key"]: x
        for x in map(json.loads, c.files.download(file=done.dest.file_name).decode().splitlines())
    }  # type: ignore[arg-type,union-attr]
    assert "response" in out["ok"]
    assert out["line-2"]["error"]["code"] == 3 and out["empty"]["error"]["code"] == 3


def test_faults_given_in_the_config_are_in_force_from_the_start(tmp_path: Path) -> None:
    spec = '{"endpoint": "batches.list", "status": 503, "times": 2}'
    fault = parse_fault(spec)  # as ``gbatch emulator --fault`` would take it
    assert fault == Fault(endpoint="batches.list", status=503, times=2)
    with Emulator(EmulatorConfig(data_dir=tmp_path / "data", faults=(fault,))) as emu:
        c = client(emu)
        for _ in range(2):
            with pytest.raises(errors.ServerError):
                list(c.batches.list(config={"page_size": 5}))
        assert list(c.batches.list(config={"page_size": 5})) == []
    assert fault.times == 2  # the config's own fault is left as given
    with pytest.raises(ValueError, match="unknown fault fields"):
        parse_fault('{"endpoint": "files.upload", "kinds": "drop"}')


def test_another_process_adds_faults_over_http_and_a_bad_one_is_refused(emu: Emulator) -> None:
    def post(spec: str) -> int:
        request = urllib.request.Request(f"{emu.base_url}/_emulator/faults", data=spec.encode())
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as refused:
            refused.close()
            return int(refused.code)

    assert post('{"endpoint": "batches.list", "kinds": "drop"}') == 400
    assert post('{"endpoint": "batches.list", "status": 503}') == 200
    c = client(emu)
    with pytest.raises(errors.ServerError):
        list(c.batches.list(config={"page_size": 5}))
