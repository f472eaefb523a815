"""The emulator answers in the shapes the real service was recorded in (tests/fixtures/recorded).

Each test drives the emulator over HTTP, with the unmodified SDK for the calls and raw GETs to
see the wire JSON (the SDK's converters would drop fields), and compares a reply with its
recording: the same keys and the same JSON types, recursively (``assert_same_shape``). Values
are compared where the recording fixes them: id lengths, the result file's name,
``modelVersion``, error codes, ``sha256Hash``. The README beside the fixtures names the source
of each.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.genai import errors, types

from runner.emulator import Emulator, EmulatorConfig, Fault

RECORDED = Path(__file__).parents[1] / "fixtures" / "recorded"
# Maps whose keys depend on the job's progress: zero counts are left out (as recorded), so
# only their values' types are compared.
COUNT_MAPS = ("batchStats",)
KEY = "recorded-shapes"


def recorded(name: str) -> Any:
    return json.loads((RECORDED / name).read_text())


def recorded_lines(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (RECORDED / name).read_text().splitlines()]


def kind(value: Any) -> str:
    """The JSON type of a decoded value (a bool is not a number)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {dict: "object", list: "array", str: "string", float: "number"}.get(type(value), "null")


def assert_same_shape(real: Any, emulated: Any, path: str = "$") -> None:
    """``emulated`` has the keys and JSON types of ``real``, at every depth.

    Every element of an emulated array is held to the shape of the recorded array's first
    element (recorded arrays are homogeneous); COUNT_MAPS compare value types only.
    """
    assert kind(emulated) == kind(real), f"{path}: {kind(emulated)}, recorded {kind(real)}"
    if isinstance(real, dict):
        if path.rsplit(".", 1)[-1] in COUNT_MAPS:
            for name, value in emulated.items():
                assert kind(value) == "string", f"{path}.{name}: counts travel as strings"
            return
        assert sorted(emulated) == sorted(real), (
            f"{path}: keys {sorted(emulated)} != {sorted(real)}"
        )
        for name in real:
            assert_same_shape(real[name], emulated[name], f"{path}.{name}")
    elif isinstance(real, list) and real:
        assert emulated, f"{path}: empty, recorded non-empty"
        for index, item in enumerate(emulated):
            assert_same_shape(real[0], item, f"{path}[{index}]")


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(
        EmulatorConfig(data_dir=tmp_path / "data", pending_seconds=10, running_seconds=10)
    ) as emulator:
        yield emulator
        _CLIENTS.pop(id(emulator), None)


_CLIENTS: dict[int, genai.Client] = {}


def client(emu: Emulator) -> genai.Client:
    """The SDK client of this emulator (one per emulator: a dropped Client closes its HTTP
    client under calls still made through its parts)."""
    if id(emu) not in _CLIENTS:
        options = types.HttpOptions(base_url=emu.base_url, api_version="v1beta")
        _CLIENTS[id(emu)] = genai.Client(api_key=KEY, http_options=options)
    return _CLIENTS[id(emu)]


def raw_get(emu: Emulator, path: str) -> Any:
    """The reply's JSON exactly as it travelled (what the SDK would convert)."""
    request = urllib.request.Request(
        f"{emu.base_url}/v1beta/{path}", headers={"x-goog-api-key": KEY}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def requests_file(path: Path, prompts: dict[str, dict[str, Any]]) -> Path:
    path.write_text(
        "".join(json.dumps({"key": k, "request": r}) + "\n" for k, r in prompts.items())
    )
    return path


def text_request(text: str) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def file_job(emu: Emulator, tmp_path: Path, prompts: dict[str, dict[str, Any]], name: str) -> str:
    c = client(emu)
    uploaded = c.files.upload(
        file=str(requests_file(tmp_path / f"{name}.jsonl", prompts)),
        config={"mime_type": "application/jsonl"},
    )
    job = c.batches.create(
        model="gemini-2.5-flash",
        src=uploaded.name,  # type: ignore[arg-type]
        config={"display_name": name},
    )
    assert job.name
    return job.name


def result_lines(emu: Emulator, job: dict[str, Any]) -> list[dict[str, Any]]:
    content = client(emu).files.download(file=job["metadata"]["output"]["responsesFile"])
    return [json.loads(line) for line in content.decode().splitlines()]


THREE = {f"request_{i}": text_request(f"Explain topic {i}") for i in range(3)}


def test_a_pending_file_job_has_the_recorded_shape_and_counts_its_requests(
    emu: Emulator, tmp_path: Path
) -> None:
    name = file_job(emu, tmp_path, THREE, "pending")
    job = raw_get(emu, name)
    assert_same_shape(recorded("job_pending.json"), job)
    assert re.fullmatch(r"batches/[a-z0-9]{36}", name)  # recorded ids: 36 lowercase alnums
    assert job["metadata"]["name"] == name
    assert job["metadata"]["batchStats"] == {"requestCount": "3", "pendingRequestCount": "3"}


def test_a_succeeded_file_job_names_its_result_file_after_itself(
    emu: Emulator, tmp_path: Path
) -> None:
    name = file_job(emu, tmp_path, THREE, "done")
    emu.advance(21)
    job = raw_get(emu, name)
    assert_same_shape(recorded("job_succeeded.json"), job)
    result = f"files/batch-{name.removeprefix('batches/')}"  # as recorded
    assert job["metadata"]["output"] == {"responsesFile": result}
    assert job["response"]["responsesFile"] == result
    assert job["metadata"]["batchStats"] == {"requestCount": "3", "successfulRequestCount": "3"}
    assert len(result_lines(emu, job)) == 3  # download works by the plain name
    with pytest.raises(errors.ClientError) as refused:  # its id is over the 40-char limit
        client(emu).files.get(name=result)
    assert refused.value.code == 400


def test_a_list_page_has_the_recorded_shape(emu: Emulator, tmp_path: Path) -> None:
    name = file_job(emu, tmp_path, THREE, "listed")
    emu.advance(11)  # running
    page = raw_get(emu, "batches?pageSize=10")
    assert_same_shape(recorded("list_page.json"), page)
    assert [op["name"] for op in page["operations"]] == [name]
    assert page["operations"][0]["metadata"]["state"] == "BATCH_STATE_RUNNING"


def test_result_lines_have_the_recorded_shape_usage_and_model_version(
    emu: Emulator, tmp_path: Path
) -> None:
    name = file_job(emu, tmp_path, THREE, "lines")
    emu.advance(21)
    lines = result_lines(emu, raw_get(emu, name))
    real = recorded_lines("result_lines.jsonl")
    for line in [*real, *lines]:
        assert_same_shape(real[0], line)
        assert list(line)[-1] == "key"  # recorded lines put the key last
        assert line["response"]["modelVersion"] == "gemini-2.5-flash"  # as recorded, no -001
        usage = line["response"]["usageMetadata"]
        assert usage["promptTokensDetails"] == [
            {"modality": "TEXT", "tokenCount": usage["promptTokenCount"]}
        ]
        assert usage["totalTokenCount"] == (
            usage["promptTokenCount"] + usage["candidatesTokenCount"] + usage["thoughtsTokenCount"]
        )
        assert len(line["response"]["responseId"]) == len(real[0]["response"]["responseId"])


def test_a_cache_hit_has_the_recorded_usage_and_the_cache_its_recorded_shape(
    emu: Emulator, tmp_path: Path
) -> None:
    c = client(emu)
    cache = c.caches.create(
        model="gemini-2.5-flash",
        config={"contents": [{"role": "user", "parts": [{"text": "transcript " * 600}]}]},
    )
    assert cache.name and re.fullmatch(r"cachedContents/[a-z0-9]{40}", cache.name)
    assert_same_shape(recorded("cached_content.json"), raw_get(emu, cache.name))
    prompts = {
        "apollo": {**text_request("Find a lighthearted moment"), "cachedContent": cache.name}
    }
    name = file_job(emu, tmp_path, prompts, "cached")
    emu.advance(21)
    (line,) = result_lines(emu, raw_get(emu, name))
    real = recorded_lines("result_line_cached.jsonl")[0]
    assert_same_shape(real, line)
    for usage in (real["response"]["usageMetadata"], line["response"]["usageMetadata"]):
        cached = usage["cachedContentTokenCount"]
        assert usage["cacheTokensDetails"] == [{"modality": "TEXT", "tokenCount": cached}]
        assert usage["promptTokenCount"] > cached  # the prompt count includes the cache


def test_a_failed_line_is_a_google_rpc_status_with_a_grpc_code(
    emu: Emulator, tmp_path: Path
) -> None:
    prompts = {"bad": {"contents": []}, "ok": text_request("fine")}
    name = file_job(emu, tmp_path, prompts, "bad-line")
    emu.add_fault(Fault(endpoint="batches.create", fail_lines_fraction=1.0))
    failing = file_job(emu, tmp_path, {"ok": text_request("fine")}, "all-lines-fail")
    emu.advance(21)
    lines = {line["key"]: line for line in result_lines(emu, raw_get(emu, name))}
    real = recorded_lines("error_line.jsonl")[0]
    assert_same_shape(real, lines["bad"])
    assert lines["bad"]["error"]["code"] == 3  # INVALID_ARGUMENT, not HTTP 400
    (internal,) = result_lines(emu, raw_get(emu, failing))
    assert_same_shape(real, internal)
    assert internal["error"]["code"] == 13  # INTERNAL, not HTTP 500


def test_a_cancelled_job_carries_the_operation_error(emu: Emulator, tmp_path: Path) -> None:
    name = file_job(emu, tmp_path, THREE, "cancel-me")
    client(emu).batches.cancel(name=name)
    emu.add_fault(Fault(endpoint="batches.create", job_outcome="CANCELLED"))
    ended = file_job(emu, tmp_path, THREE, "cancelled-by-fault")
    emu.advance(11)
    for job in (raw_get(emu, name), raw_get(emu, ended)):
        assert_same_shape(recorded("job_cancelled.json"), job)
        assert job["metadata"]["state"] == "BATCH_STATE_CANCELLED" and job["done"] is True
        assert job["error"]["code"] == 1  # google.rpc.Code CANCELLED
        assert job["metadata"]["batchStats"] == {"requestCount": "3"}


def test_an_uploaded_file_has_the_recorded_shape_and_hash(emu: Emulator) -> None:
    real = recorded("file.json")
    uploaded = client(emu).files.upload(
        file=str(RECORDED / "file_content.jsonl"), config={"mime_type": "jsonl"}
    )
    assert uploaded.name and re.fullmatch(r"files/[a-z0-9]{12}", uploaded.name)
    wire = raw_get(emu, uploaded.name)
    assert_same_shape(real, wire)
    # the same 202 bytes the notebook uploaded: the same size and the same hash encoding
    assert (wire["sizeBytes"], wire["sha256Hash"]) == (real["sizeBytes"], real["sha256Hash"])
    assert uploaded.sha256_hash == real["sha256Hash"]


def _upload_by_hand(emu: Emulator, data: bytes, *, mime_type: str) -> tuple[int, str, Any]:
    """A resumable upload in two raw calls; the final reply's status, upload status, body."""
    start = urllib.request.Request(
        f"{emu.base_url}/upload/v1beta/files",
        data=json.dumps({"file": {"mime_type": mime_type}}).encode(),
        headers={
            "x-goog-api-key": KEY,
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(len(data)),
            "X-Goog-Upload-Header-Content-Type": mime_type,
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(start, timeout=10) as reply:
        url = reply.headers["x-goog-upload-url"]
    chunk = urllib.request.Request(
        url,
        data=data,
        headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
    )
    with urllib.request.urlopen(chunk, timeout=10) as reply:
        return reply.status, reply.headers["x-goog-upload-status"], json.loads(reply.read())


def test_an_upload_refused_in_its_final_reply_is_a_fault(emu: Emulator) -> None:
    data = (RECORDED / "file_content.jsonl").read_bytes()
    emu.add_fault(Fault(endpoint="files.upload", kind="error_body", times=2))
    with pytest.raises(KeyError, match="file"):  # what the SDK does with it (python-genai #1590)
        client(emu).files.upload(
            file=str(RECORDED / "file_content.jsonl"), config={"mime_type": "jsonl"}
        )
    assert _upload_by_hand(emu, data, mime_type="jsonl") == (
        200,
        "final",
        recorded("upload_error.json"),
    )
    assert emu.count("files.upload") == 4  # each start went through; each finalize was refused
    assert raw_get(emu, "files?pageSize=10") == {}  # and nothing was stored
    assert _upload_by_hand(emu, data, mime_type="jsonl")[2]["file"]["sizeBytes"] == "202"


def test_inline_responses_can_lose_their_metadata_or_their_order(emu: Emulator) -> None:
    c = client(emu)
    src: list[Any] = [
        {"contents": [{"parts": [{"text": f"p{i}"}], "role": "user"}], "metadata": {"key": f"k{i}"}}
        for i in range(4)
    ]
    emu.add_fault(Fault(endpoint="batches.create", match="bare", drop_inline_metadata=True))
    emu.add_fault(Fault(endpoint="batches.create", match="shuffled", inline_out_of_order=True))
    jobs = {
        d: c.batches.create(model="gemini-2.5-flash", src=src, config={"display_name": d})
        for d in ("bare", "shuffled", "plain")
    }
    emu.advance(21)
    answers = {}
    for display, job in jobs.items():
        done = c.batches.get(name=job.name)  # type: ignore[arg-type]
        assert done.dest and done.dest.inlined_responses
        answers[display] = [
            (r.metadata, r.response.text if r.response else None)
            for r in done.dest.inlined_responses
        ]
    in_order = [({"key": f"k{i}"}, f"echo: p{i}") for i in range(4)]
    assert answers["plain"] == in_order
    assert answers["bare"] == [(None, text) for _, text in in_order]  # python-genai #2008
    assert answers["shuffled"] != in_order and sorted(answers["shuffled"], key=str) == sorted(
        in_order, key=str
    )  # python-genai #1909
