"""Embeddings batches (``task: embed``) through the CLI against the emulator, as for
generation: the requests go to ``asyncBatchEmbedContent`` as EmbedContentRequests, every
vector lands in a ``FLOAT[N]`` column, a re-apply sends only what changed, failed lines are
retried alone, inline jobs work, the cost of a row is its tokens at the embedding price, and
a cosine search in plain SQL finds the nearest row. Counts are taken at the emulator."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from runner.emulator import Emulator, Fault
from runner.emulator.model import embedding_values
from tests.conftest import Gbatch, uploads

MODEL = "gemini-embedding-001"
DOCS = {
    "apple": "Red apples are a sweet crunchy fruit",
    "ocean": "The blue ocean holds deep salty water",
    "forest": "Green pine trees grow in the quiet forest",
    "engine": "A diesel engine burns fuel to turn the crankshaft",
}


def embed_manifest(
    gbatch: Gbatch,
    name: str,
    rows: dict[str, str],
    *,
    dimensions: int = 16,
    task_type: str = "RETRIEVAL_DOCUMENT",
    title: bool = False,
    extra: str = "",
) -> Path:
    """A short-form embeddings manifest over inline rows ``{id, body, title}``."""
    body = "".join(
        f"    - {{id: {key}, body: {json.dumps(text)}, title: {json.dumps(key.title())}}}\n"
        for key, text in rows.items()
    )
    title_column = ", title_column: title" if title else ""
    return gbatch.write(
        f"{name}.yaml",
        f"name: {name}\ntask: embed\nmodel: {MODEL}\nsource:\n  key: id\n  rows:\n{body}"
        "prompt: {template: '{{ body }}'}\n"
        f"embedding: {{dimensions: {dimensions}, task_type: {task_type}{title_column}}}\n" + extra,
    )


def batches(emulator: Emulator) -> list[tuple[bool, int]]:
    """(embeddings batch?, requests) per job the emulator ran, in creation order."""
    with emulator.service.lock:
        made = sorted(emulator.service.batches.values(), key=lambda b: b.created)
        return [(b.embed, b.request_count) for b in made]


def vectors(gbatch: Gbatch, table: str) -> dict[str, tuple[float, ...]]:
    """Each key's vector (DuckDB returns a FLOAT[N] as a tuple)."""
    found = {}
    for key, vector in gbatch.sql(f"select key, embedding from {table}"):
        assert isinstance(vector, tuple)
        found[str(key)] = vector
    return found


def close(got: tuple[float, ...], want: list[float]) -> bool:
    """Equal at float32 precision (the column is FLOAT)."""
    return len(got) == len(want) and all(
        math.isclose(g, w, rel_tol=1e-6, abs_tol=1e-7) for g, w in zip(got, want, strict=True)
    )


def column_type(gbatch: Gbatch, table: str, column: str = "embedding") -> str:
    rows = gbatch.sql(f"select column_type from (describe {table}) where column_name = '{column}'")
    return str(rows[0][0])


def test_a_first_apply_sends_embedcontent_requests_and_fills_a_float_array_column(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    embed_manifest(gbatch, "docs", DOCS, title=True)
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    creates = [c.path for c in emulator.calls if c.endpoint == "batches.create"]
    assert creates == [f"/v1beta/models/{MODEL}:asyncBatchEmbedContent"]
    assert batches(emulator) == [(True, 4)]
    (upload,) = uploads(emulator)
    sent = {
        line["key"]: line["request"]
        for line in map(json.loads, upload.path.read_text().splitlines())
    }
    assert sent["apple"] == {
        "content": {"parts": [{"text": DOCS["apple"]}]},
        "title": "Apple",
        "taskType": "RETRIEVAL_DOCUMENT",
        "outputDimensionality": 16,
    }
    assert column_type(gbatch, "docs") == "FLOAT[16]"
    assert column_type(gbatch, "docs_history") == "FLOAT[16]"
    assert gbatch.sql(
        "select key, status, text, len(embedding), error is null, title from docs order by key"
    ) == [(k, "succeeded", DOCS[k], 16, True, k.title()) for k in sorted(DOCS)]
    # the emulator's vector of the text (and title) as sent, at float precision
    got = vectors(gbatch, "docs")["ocean"]
    want = embedding_values(f"Ocean\n{DOCS['ocean']}", 16)
    assert close(got, want)
    assert gbatch.sql("select count(*) from docs where response::varchar like '%values%'") == [
        (0,)
    ]  # the vector is in `embedding`, not kept twice in `response`
    jobs = gbatch("query", "select manifest, task, phase from gbatch_jobs", "--format", "csv")
    assert jobs.out.split() == ["manifest,task,phase", "docs,embed,ingested"]


def test_a_re_apply_sends_only_changed_rows_and_history_keeps_both_vectors(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    embed_manifest(gbatch, "docs", DOCS)
    assert gbatch("apply", "manifests", "--wait").code == 0
    before = vectors(gbatch, "docs")
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert batches(emulator) == [(True, 4)]  # unchanged: nothing sent
    embed_manifest(gbatch, "docs", {**DOCS, "ocean": "The grey sea is cold"})
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert "4 total, 0 new, 1 changed" in result.out
    assert batches(emulator) == [(True, 4), (True, 1)]
    after = vectors(gbatch, "docs")
    assert after["ocean"] != before["ocean"]
    assert {k: v for k, v in after.items() if k != "ocean"} == {
        k: v for k, v in before.items() if k != "ocean"
    }
    assert gbatch.sql("select count(*), count(distinct key) from docs_history") == [(5, 4)]
    # another task type is another request (hash), yet the same text gets the same vector
    embed_manifest(
        gbatch, "docs", {**DOCS, "ocean": "The grey sea is cold"}, task_type="CLUSTERING"
    )
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert batches(emulator)[-1] == (True, 4)
    assert vectors(gbatch, "docs") == after


def test_a_cosine_search_in_sql_finds_the_nearest_row(gbatch: Gbatch, emulator: Emulator) -> None:
    embed_manifest(gbatch, "docs", {**DOCS, "apples": "Red apples are a sweet and crunchy fruit"})
    embed_manifest(
        gbatch,
        "questions",
        {"q1": "Which fruit is sweet and crunchy?", "q2": "Where do pine trees grow?"},
        task_type="RETRIEVAL_QUERY",
    )
    assert gbatch("apply", "manifests", "--wait").code == 0
    # a query vector from a second manifest: the best document per question
    nearest = (
        "select q.key, d.key from questions q, docs d qualify row_number() over "
        "(partition by q.key order by array_cosine_similarity(q.embedding, d.embedding) desc) = 1 "
        "order by q.key"
    )
    assert gbatch.sql(nearest) == [("q1", "apples"), ("q2", "forest")]
    # a query vector taken from another row of the same table
    like_apple = (
        "select key from docs where key != 'apple' order by array_cosine_similarity(embedding, "
        "(select embedding from docs where key = 'apple')) desc limit 1"
    )
    assert gbatch.sql(like_apple) == [("apples",)]
    shown = gbatch("query", like_apple, "--format", "csv")  # read-only, while nothing else runs
    assert shown.code == 0 and shown.out.split() == ["key", "apples"]


def test_failed_lines_are_retried_alone_then_all_succeed(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    rows = {f"r{i:02}": f"row number {i} of the set" for i in range(30)}
    embed_manifest(gbatch, "many", rows)
    emulator.add_fault(Fault(endpoint="batches.create", fail_lines_fraction=0.3, times=1))
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    ((_, first), (_, second)) = batches(emulator)
    failed = gbatch.sql(
        "select count(*) from many_history where status = 'failed' and job = "
        "(select job from many_history order by ingested_at limit 1)"
    )[0][0]
    assert first == 30 and 0 < failed < 30 and second == failed  # only the failures went again
    assert gbatch.sql(
        "select distinct error->>'code' from many_history where status = 'failed'"
    ) == [("13",)]  # a google.rpc.Status, as generation lines carry
    assert gbatch.sql(
        "select count(*) filter (status = 'succeeded'), count(embedding), "
        "min(len(embedding)) from many"
    ) == [(30, 30, 16)]


def test_a_line_the_service_refuses_fails_for_good_and_is_not_resent(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    embed_manifest(gbatch, "docs", {**DOCS, "blank": "   "})
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert gbatch.sql(
        "select status, error->>'code', embedding is null from docs where key = 'blank'"
    ) == [("failed", "3", True)]  # INVALID_ARGUMENT: permanent
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert batches(emulator) == [(True, 5)]
    assert "out of retries" in gbatch("plan", "manifests").out


@pytest.mark.parametrize("outcome", ["FAILED", "EXPIRED"])
def test_a_failed_or_expired_embeddings_job_is_resubmitted(
    gbatch: Gbatch, emulator: Emulator, outcome: str
) -> None:
    embed_manifest(gbatch, "docs", DOCS)
    emulator.add_fault(Fault(endpoint="batches.create", job_outcome=outcome, times=1))
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert batches(emulator) == [(True, 4), (True, 4)]
    assert gbatch.sql("select count(*) filter (status = 'succeeded') from docs") == [(4,)]


@pytest.mark.parametrize("drop_metadata", [False, True])
def test_an_inline_job_lands_its_vectors_by_key(
    gbatch: Gbatch, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, drop_metadata: bool
) -> None:
    monkeypatch.setenv("GBATCH_INLINE_MAX_BYTES", "1000000")
    embed_manifest(gbatch, "docs", DOCS)
    if drop_metadata:  # python-genai #2008: answers matched by position instead
        emulator.add_fault(Fault(endpoint="batches.create", drop_inline_metadata=True))
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert uploads(emulator) == []  # sent inline, not uploaded
    with emulator.service.lock:
        (batch,) = emulator.service.batches.values()
    assert batch.embed and batch.inline is not None
    assert [item["metadata"] for item in batch.inline] == [{"key": k} for k in sorted(DOCS)]
    assert batch.inline[0]["request"]["content"] == {"parts": [{"text": DOCS["apple"]}]}
    assert column_type(gbatch, "docs") == "FLOAT[16]"
    for key, got in vectors(gbatch, "docs").items():
        want = embedding_values(DOCS[key], 16)
        assert close(got, want), key


def test_the_cost_of_a_row_is_its_tokens_at_the_embedding_price_and_plan_estimates_it(
    gbatch: Gbatch, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a made-up price large enough for plan's four decimals to show it
    prices = tmp_path / "prices.toml"
    prices.write_text(f'[models."{MODEL}"]\ninput = 1000.0\noutput = 0.0\n')
    monkeypatch.setenv("GBATCH_PRICES_FILE", str(prices))
    forty = "a" * 40  # the emulator's tokenizer: 40 characters are 10 tokens
    embed_manifest(gbatch, "docs", {"forty": forty, **DOCS})
    plan = gbatch("plan", "manifests")
    assert plan.code == 0, plan.err
    line = next(x for x in plan.out.splitlines() if "estimated:" in x)
    tokens = int(line.split("estimated: ")[1].split(" input tokens")[0].replace(",", ""))
    assert "0 output tokens" in line
    assert f"cost ${tokens * 1000.0 / 1e6:.4f} at batch price" in line
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert gbatch.sql(
        "select prompt_tokens, total_tokens, output_tokens, cost_usd from docs where key = 'forty'"
    ) == [(10, 10, None, 10 * 1000.0 / 1_000_000)]
    rows = gbatch.sql("select prompt_tokens, cost_usd from docs")
    assert all(math.isclose(cost, tokens * 1000.0 / 1e6) for tokens, cost in rows)
    status = gbatch("status")
    total = sum(cost for _, cost in rows)
    assert f"${total:.4f}" in status.out


def test_identical_embeddings_in_two_manifests_are_paid_for_once(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    embed_manifest(gbatch, "first", DOCS)
    embed_manifest(gbatch, "second", {"ocean": DOCS["ocean"], "other": "Something else entirely"})
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert sorted(n for _, n in batches(emulator)) == [1, 4]
    assert gbatch.sql("select key, cost_usd = 0 from second order by key") == [
        ("ocean", True),
        ("other", False),
    ]
    assert vectors(gbatch, "second")["ocean"] == vectors(gbatch, "first")["ocean"]


def test_a_new_vector_size_re_embeds_every_row_and_moves_the_old_vectors_aside(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    embed_manifest(gbatch, "docs", DOCS, dimensions=16)
    assert gbatch("apply", "manifests", "--wait").code == 0
    embed_manifest(gbatch, "docs", DOCS, dimensions=8)
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert batches(emulator) == [(True, 4), (True, 4)]
    assert column_type(gbatch, "docs") == "FLOAT[8]"
    (aside,) = gbatch.sql(
        "select table_name from information_schema.tables "
        "where table_name like 'docs_history_until_%'"
    )
    assert column_type(gbatch, str(aside[0])) == "FLOAT[16]"  # kept, never widened to text
    assert gbatch.sql("select count(*), min(len(embedding)) from docs") == [(4, 8)]


def test_a_deleted_results_file_comes_back_with_its_vectors_and_nothing_sent(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    embed_manifest(gbatch, "docs", DOCS)
    emulator.add_fault(Fault(endpoint="batches.create", fail_lines_fraction=0.5, times=1))
    assert gbatch("apply", "manifests", "--wait").code == 0
    before = gbatch.sql("select * from docs_history order by job, key")
    gbatch.db.unlink()
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert len(batches(emulator)) == 2  # the first job and the retry of its failures; no more
    assert column_type(gbatch, "docs") == "FLOAT[16]"
    assert column_type(gbatch, "docs_history") == "FLOAT[16]"
    after = gbatch.sql("select * from docs_history order by job, key")
    assert after == before


def test_embedding_manifests_are_refused_with_the_field_and_line(gbatch: Gbatch) -> None:
    embed_manifest(gbatch, "system", DOCS, extra="")
    path = gbatch.manifests / "system.yaml"
    path.write_text(path.read_text().replace("prompt: {", "prompt: {system: 'Be brief', "))
    gbatch.write(
        "generate.yaml",
        f"model: {MODEL}\nsource: {{rows: [{{a: 1}}]}}\nprompt: {{template: '{{{{ a }}}}'}}\n",
    )
    embed_manifest(gbatch, "titled", DOCS)
    titled = gbatch.manifests / "titled.yaml"
    titled.write_text(
        titled.read_text().replace(
            "RETRIEVAL_DOCUMENT}", "RETRIEVAL_DOCUMENT, title_column: heading}"
        )
    )
    result = gbatch("validate", "manifests")
    assert result.code == 2
    out = result.out + result.err
    assert "system.yaml:" in out and "prompt: system does not apply to task: embed" in out
    assert f"generate.yaml:1:8: model: {MODEL} is an embedding model: add task: embed" in out
    assert "titled.yaml:" in out and "embedding.title_column: no column 'heading'" in out
