"""The emulator's embeddings batches, driven by the unmodified SDK's
``client.batches.create_embeddings`` (file and inline) over HTTP: result lines in the recorded
shape (tests/fixtures/recorded/embed_result_lines.jsonl), deterministic vectors of the asked
size, usage counts, the same job and line faults as generation, and refusals as the service
words them."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.genai import errors, types
from google.genai._common import ExperimentalWarning

from runner.emulator import Emulator, EmulatorConfig, Fault
from runner.emulator.model import count_tokens, embedding_values
from tests.conftest import API_KEY
from tests.emulator.test_recorded_shapes import (
    RECORDED,
    assert_same_shape,
    raw_get,
    recorded,
    recorded_lines,
    requests_file,
)

MODEL = "gemini-embedding-001"
_CLIENTS: dict[int, genai.Client] = {}


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(
        EmulatorConfig(data_dir=tmp_path / "data", pending_seconds=10, running_seconds=10)
    ) as emulator:
        yield emulator
        _CLIENTS.pop(id(emulator), None)


def client(emu: Emulator) -> genai.Client:
    """One SDK client per emulator (a dropped Client closes its HTTP client under its parts)."""
    if id(emu) not in _CLIENTS:
        options = types.HttpOptions(base_url=emu.base_url, api_version="v1beta")
        _CLIENTS[id(emu)] = genai.Client(api_key=API_KEY, http_options=options)
    return _CLIENTS[id(emu)]


def result_lines(emu: Emulator, job: dict[str, Any]) -> list[dict[str, Any]]:
    content = client(emu).files.download(file=job["metadata"]["output"]["responsesFile"])
    return [json.loads(line) for line in content.decode().splitlines()]


def embed_request(text: str, **config: Any) -> dict[str, Any]:
    return {"content": {"parts": [{"text": text}]}, **config}


def create_embeddings(emu: Emulator, **kwargs: Any) -> str:
    with pytest.warns(ExperimentalWarning):  # the SDK marks create_embeddings experimental
        job = client(emu).batches.create_embeddings(model=MODEL, **kwargs)
    assert job.name
    return job.name


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # unit vectors


def test_the_recorded_embeddings_upload_gets_lines_of_the_recorded_shape(
    emu: Emulator, tmp_path: Path
) -> None:
    path = tmp_path / "embeddings_batch_requests.jsonl"
    path.write_text((RECORDED / "file_content.jsonl").read_text())  # Batch_mode.ipynb cell 40
    uploaded = client(emu).files.upload(file=str(path), config={"mime_type": "jsonl"})
    name = create_embeddings(emu, src=types.EmbeddingsBatchJobSource(file_name=uploaded.name))
    pending = raw_get(emu, name)
    assert_same_shape(recorded("job_pending.json"), pending)
    assert pending["metadata"]["model"] == f"models/{MODEL}"  # as the recorded job printed it
    emu.advance(21)
    job = raw_get(emu, name)
    assert_same_shape(recorded("job_succeeded.json"), job)
    assert job["metadata"]["@type"].endswith(".EmbedContentBatch")
    lines = result_lines(emu, job)
    real = recorded_lines("embed_result_lines.jsonl")
    for line in [*real, *lines]:
        assert_same_shape(real[0], line)
        assert list(line) == ["response", "key"] and list(line["response"]) == [
            "tokenCount",
            "embedding",
        ]  # as recorded
    by_key = {line["key"]: line["response"] for line in lines}
    assert [len(by_key[k]["embedding"]["values"]) for k in ("request_1", "request_2")] == [3, 4]
    assert by_key["request_1"]["tokenCount"] == "1"  # as recorded for the text "1"
    # the SDK reads the finished job's result file as it did in the recording
    done = client(emu).batches.get(name=name)
    assert done.dest is not None and done.dest.file_name == f"files/batch-{name[8:]}"


def test_inline_embeddings_come_back_in_order_and_the_sdk_reads_them(emu: Emulator) -> None:
    texts = ["the cat sat on the mat", "a cat sat on a mat", "quarterly tax returns are due"]
    inlined = types.EmbedContentBatch(
        contents=texts,
        config=types.EmbedContentConfig(output_dimensionality=64, task_type="CLUSTERING"),
    )
    name = create_embeddings(emu, src=types.EmbeddingsBatchJobSource(inlined_requests=inlined))
    emu.advance(21)
    job = raw_get(emu, name)
    answers = job["response"]["inlinedResponses"]["inlinedResponses"]  # EmbedContentBatchOutput
    assert [a["response"]["embedding"]["values"] for a in answers] == [
        embedding_values(t, 64) for t in texts
    ]  # the same text always gets the same vector
    assert [a["response"]["tokenCount"] for a in answers] == [str(count_tokens(t)) for t in texts]
    done = client(emu).batches.get(name=name)
    assert done.dest is not None and done.dest.inlined_embed_content_responses
    vectors = [
        r.response.embedding.values
        for r in done.dest.inlined_embed_content_responses
        if r.response and r.response.embedding and r.response.embedding.values
    ]
    assert len(vectors) == 3 and all(math.isclose(cosine(v, v), 1.0, rel_tol=1e-6) for v in vectors)
    near, far = cosine(vectors[0], vectors[1]), cosine(vectors[0], vectors[2])
    assert near > far  # texts sharing words lie closer than texts sharing none


def test_embedding_lines_take_the_line_and_job_faults(emu: Emulator, tmp_path: Path) -> None:
    prompts = {f"k{i}": embed_request(f"text {i}") for i in range(40)}
    emu.add_fault(Fault(endpoint="batches.create", match="lines", fail_lines_fraction=0.5))
    emu.add_fault(Fault(endpoint="batches.create", match="failing", job_outcome="FAILED"))
    jobs = {}
    for display in ("lines", "failing"):
        uploaded = client(emu).files.upload(
            file=str(requests_file(tmp_path / f"{display}.jsonl", prompts)),
            config={"mime_type": "application/jsonl"},
        )
        jobs[display] = create_embeddings(
            emu,
            src={"file_name": uploaded.name},
            config={"display_name": display},
        )
    emu.advance(21)
    lines = result_lines(emu, raw_get(emu, jobs["lines"]))
    failed = [line for line in lines if "error" in line]
    assert 0 < len(failed) < 40
    assert {line["error"]["code"] for line in failed} == {13}  # a google.rpc.Status
    failing = raw_get(emu, jobs["failing"])
    assert failing["metadata"]["state"] == "BATCH_STATE_FAILED" and failing["error"]["code"] == 13


def test_bad_embedding_lines_fail_alone_with_invalid_argument(
    emu: Emulator, tmp_path: Path
) -> None:
    prompts = {
        "good": embed_request("fine"),
        "empty": embed_request("  "),
        "generate": {"contents": [{"parts": [{"text": "hi"}]}]},
        "huge": embed_request("x", outputDimensionality=10_000),
        "task": embed_request("x", taskType="SUMMARIZE"),
    }
    uploaded = client(emu).files.upload(
        file=str(requests_file(tmp_path / "bad.jsonl", prompts)),
        config={"mime_type": "application/jsonl"},
    )
    name = create_embeddings(emu, src={"file_name": uploaded.name})
    emu.advance(21)
    lines = {line["key"]: line for line in result_lines(emu, raw_get(emu, name))}
    assert "response" in lines["good"]
    for key in ("empty", "generate", "huge", "task"):
        assert lines[key]["error"]["code"] == 3, key  # gRPC INVALID_ARGUMENT, no status
        assert "status" not in lines[key]["error"]


def test_a_model_of_the_other_kind_is_refused_at_create(emu: Emulator, tmp_path: Path) -> None:
    uploaded = client(emu).files.upload(
        file=str(requests_file(tmp_path / "x.jsonl", {"k": embed_request("x")})),
        config={"mime_type": "application/jsonl"},
    )
    with pytest.warns(ExperimentalWarning), pytest.raises(errors.ClientError) as refused:
        client(emu).batches.create_embeddings(
            model="gemini-2.5-flash", src={"file_name": uploaded.name}
        )
    assert refused.value.code == 400 and "asyncBatchEmbedContent" in str(refused.value.message)
    with pytest.raises(errors.ClientError) as generating:
        client(emu).batches.create(model=MODEL, src=uploaded.name)  # type: ignore[arg-type]
    assert generating.value.code == 400
