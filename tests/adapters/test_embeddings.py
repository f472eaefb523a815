"""The data plane of embeddings batches over real files and HTTP: the request set DuckDB
renders (equal to the core's shape, row by row), the Gemini adapter's create and download
against the emulator and a scripted server, and the ingest of the recorded result lines into
a ``FLOAT[N]`` column with their tokens and cost."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import duckdb
import pytest

from runner.adapters import results
from runner.adapters.sources import build_requests
from runner.core.jobs import JobState, RemoteJob
from runner.core.manifest import Manifest
from runner.core.pricing import load_prices
from runner.core.requests import EMBED_DIMENSIONS_COLUMN, request_hash, request_shape
from runner.emulator import Emulator
from runner.emulator.model import embedding_values
from runner.errors import ManifestError
from tests.adapters.test_gemini import Scripted, backend, finished, inline_file, result_lines

RECORDED = Path(__file__).parents[1] / "fixtures" / "recorded"
MODEL = "gemini-embedding-001"


def manifest(source: dict[str, Any], **embedding: Any) -> Manifest:
    spec: dict[str, Any] = {
        "task": "embed",
        "model": MODEL,
        "source": source,
        "embedding": {"dimensions": 4, **embedding},
    }
    if "requests" not in source:
        spec["prompt"] = {"template": "Q: {{ question }}"}
    return Manifest.model_validate({"metadata": {"name": "m"}, "spec": spec})


def rows_of(path: Path) -> dict[str, dict[str, Any]]:
    con = duckdb.connect()
    try:
        cursor = con.execute(f"select * from read_parquet('{path}')")
        names = [d[0] for d in cursor.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()}
    finally:
        con.close()


# -- the request set ------------------------------------------------------------------------
def test_every_row_is_rendered_as_the_core_shapes_it_title_and_size_included(
    tmp_path: Path,
) -> None:
    data = tmp_path / "faq.csv"
    data.write_text('id,question,embedding\n1,"Wie geht\'s? ""quoted""",x\n2,,y\n3,Ünïcödé ✓,z\n')
    m = manifest(
        {"path": "faq.csv", "key": "id"},
        task_type="RETRIEVAL_DOCUMENT",
        title_column="QUESTION",  # columns are matched as the template matches them
    )
    built = build_requests(m, base_dir=tmp_path, root=tmp_path, out=tmp_path / "set.parquet")
    assert built.count == 3
    assert ("source_embedding", "VARCHAR") in built.columns  # ours is the vector's column
    shape = request_shape(m)
    for key, row in rows_of(built.path).items():
        question = row["question"]
        expected = shape.render(f"Q: {question or ''}", question)
        assert row["request"] == expected, key
        assert row["request_hash"] == request_hash(shape.salt, expected)
        assert row[EMBED_DIMENSIONS_COLUMN] == 4
    assert "title" not in json.loads(rows_of(built.path)["2"]["request"])  # a NULL title


def test_a_missing_title_column_is_a_located_manifest_error(tmp_path: Path) -> None:
    m = manifest(
        {"rows": [{"id": 1, "question": "q"}], "key": "id"},
        task_type="RETRIEVAL_DOCUMENT",
        title_column="heading",
    )
    with pytest.raises(ManifestError) as refused:
        build_requests(m, base_dir=tmp_path, root=tmp_path, out=tmp_path / "set.parquet")
    assert refused.value.field == "embedding.title_column"
    assert "no column 'heading'" in str(refused.value)


def test_ready_made_embedding_lines_carry_the_size_too(tmp_path: Path) -> None:
    (tmp_path / "lines.jsonl").write_text((RECORDED / "file_content.jsonl").read_text())
    m = manifest({"requests": "lines.jsonl"}, dimensions=3)
    built = build_requests(m, base_dir=tmp_path, root=tmp_path, out=tmp_path / "set.parquet")
    rows = rows_of(built.path)
    assert sorted(rows) == ["request_1", "request_2"]
    assert {row[EMBED_DIMENSIONS_COLUMN] for row in rows.values()} == {3}


# -- the adapter ------------------------------------------------------------------------------
def test_an_embeddings_job_is_created_by_async_batch_embed_content_file_or_inline(
    emulator: Emulator, tmp_path: Path
) -> None:
    b = backend(emulator.base_url)
    lines = {
        "b": {"content": {"parts": [{"text": "two"}]}},
        "a": {"content": {"parts": [{"text": "one"}]}, "outputDimensionality": 8},
    }
    path = inline_file(tmp_path / "in.jsonl", lines)
    inline = b.create_job(
        model=MODEL, display_name="inline", src_file=None, inline=path, task="embed"
    )
    uploaded = b.upload_jsonl(path, display_name="file")
    by_file = b.create_job(
        model=MODEL, display_name="file", src_file=uploaded.name, inline=None, task="embed"
    )
    creates = [c.path for c in emulator.calls if c.endpoint == "batches.create"]
    assert creates == [f"/v1beta/models/{MODEL}:asyncBatchEmbedContent"] * 2
    with emulator.service.lock:
        sent = emulator.service.batches[inline.name.removeprefix("batches/")]
    assert sent.embed and sent.inline == [
        {"request": lines["a"], "metadata": {"key": "a"}},
        {"request": lines["b"], "metadata": {"key": "b"}},
    ]
    for remote in (inline, by_file):
        dest = tmp_path / f"{remote.display_name}.jsonl"
        b.download_results(finished(b, remote.name), dest, keys=["a", "b"])
        got = result_lines(dest)
        assert got["a"]["response"]["embedding"]["values"] == embedding_values("one", 8)
        assert len(got["b"]["response"]["embedding"]["values"]) == 3072  # the model's size
        assert got["a"]["response"]["tokenCount"] == "1"


def test_an_unknown_task_is_refused_before_anything_is_sent(emulator: Emulator) -> None:
    with pytest.raises(ValueError, match="unknown task 'rerank'"):
        backend(emulator.base_url).create_job(
            model=MODEL, display_name="x", src_file="files/f", inline=None, task="rerank"
        )
    assert emulator.count("batches.create") == 0


@pytest.mark.parametrize("spelling", ["inlinedResponses", "inlinedEmbedContentResponses"])
def test_inline_embeddings_are_read_under_either_spelling(tmp_path: Path, spelling: str) -> None:
    """EmbedContentBatchOutput names them ``inlinedResponses`` (the API's discovery
    document); the SDK also reads ``inlinedEmbedContentResponses``: both are accepted."""
    vector = {"tokenCount": "2", "embedding": {"values": [0.6, 0.8]}}
    refused = {"code": 3, "message": "The text content is empty."}
    answers = [
        {"response": vector, "metadata": {"key": "k1"}},
        {"error": refused, "metadata": {"key": "k2"}},
    ]
    operation = {
        "name": "batches/e1",
        "metadata": {"state": "BATCH_STATE_SUCCEEDED", "displayName": "d"},
        "done": True,
        "response": {spelling: {"inlinedResponses": answers}},
    }

    def answer(method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "application/json"}, json.dumps(operation).encode()

    with Scripted(answer) as double:
        job = RemoteJob(name="batches/e1", display_name="d", state=JobState.SUCCEEDED)
        backend(double.base_url).download_results(job, tmp_path / "out.jsonl", keys=["k1", "k2"])
    assert result_lines(tmp_path / "out.jsonl") == {
        "k1": {"response": vector},
        "k2": {"error": refused},
    }


# -- the ingest of recorded lines -------------------------------------------------------------
def test_recorded_embedding_lines_land_as_a_float_array_with_tokens_and_cost(
    tmp_path: Path,
) -> None:
    """Cookbook Batch_mode.ipynb cells 40-48: two requests asking for 3 and 4 dimensions. In
    a column of 3, the first lands as recorded; the second's 4 values fail its line, saying
    why (a vector never lands in a column of another size)."""
    lines = (RECORDED / "embed_result_lines.jsonl").read_text()
    (tmp_path / "lines.jsonl").write_text((RECORDED / "file_content.jsonl").read_text())
    m = manifest({"requests": "lines.jsonl"}, dimensions=3)
    requests = build_requests(
        m, base_dir=tmp_path, root=tmp_path, out=tmp_path / "set.parquet"
    ).path
    result_file = tmp_path / "results.jsonl"
    result_file.write_text(lines)
    price = load_prices().for_model(MODEL)
    assert price is not None
    summary = results.ingest(
        results_db=tmp_path / "results.duckdb",
        table="recorded",
        result_file=result_file,
        requests=requests,
        current=requests,
        output_schema=None,
        price=price,
        job="batches/2icf9ky95pieco1jwucta7drijo5k8hjllzj",
        manifest="recorded",
        manifest_version="v1",
        commit=None,
    )
    assert (summary.rows, summary.succeeded, summary.failed) == (2, 1, 1)
    con = duckdb.connect(str(tmp_path / "results.duckdb"), read_only=True)
    try:
        rows = con.execute(
            "select key, status, typeof(embedding), embedding, text, prompt_tokens, "
            "total_tokens, output_tokens, cost_usd, response::varchar, error->>'message' "
            "from recorded order by key"
        ).fetchall()
    finally:
        con.close()
    first, second = rows
    recorded = [-0.034119852, 0.0025719088, 0.017325249]
    assert first[:3] == ("request_1", "succeeded", "FLOAT[3]")
    assert all(math.isclose(g, w, rel_tol=1e-6) for g, w in zip(first[3], recorded, strict=True))
    assert first[4:8] == ("1", 1, 1, None)  # the text embedded was "1": one token
    assert first[8] == pytest.approx(1 * 0.075 / 1_000_000)  # input tokens at the batch rate
    assert json.loads(first[9]) == {"tokenCount": "1", "embedding": {}}
    assert second[:2] == ("request_2", "failed") and second[3] is None
    assert second[10] == "the embedding has 4 values, not the 3 of its column"
