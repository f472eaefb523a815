"""Result lines recorded from the real service (tests/fixtures/recorded) through the results
ingest, on a real DuckDB file: the tokens, cost and status of each row are the recording's.

The lines: two with thinking tokens (Batch_mode.ipynb), one answered from a 322,698-token
cache (Caching.ipynb) and a failed line as a google.rpc.Status with gRPC code 3. The expected
cost is worked out here by hand from the loaded price of the recorded model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from runner.adapters import results
from runner.core.pricing import load_prices
from tests.adapters.test_ledger import write_set

RECORDED = Path(__file__).parents[1] / "fixtures" / "recorded"
FILES = ("result_lines.jsonl", "result_line_cached.jsonl", "error_line.jsonl")
MODEL = "gemini-2.5-flash"  # the recorded lines' modelVersion


def recorded_lines() -> list[dict[str, Any]]:
    return [
        json.loads(line) for name in FILES for line in (RECORDED / name).read_text().splitlines()
    ]


@pytest.fixture
def ingested(tmp_path: Path) -> tuple[results.IngestSummary, dict[str, dict[str, Any]]]:
    """The recorded lines ingested as one job; its summary and its rows by key."""
    lines = recorded_lines()
    result_file = tmp_path / "recorded.jsonl"
    result_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    requests = write_set(
        tmp_path / "set.parquet", [(line["key"], f"h{i}") for i, line in enumerate(lines)]
    )
    db = tmp_path / "results.duckdb"
    summary = results.ingest(
        results_db=db,
        table="recorded",
        result_file=result_file,
        requests=requests,
        current=None,
        output_schema=None,
        price=load_prices().for_model(MODEL),
        job="batches/o08hk76gv328ihxcssjsgwt3g6omtfysxi46",
        manifest="recorded",
        manifest_version="v1",
        commit=None,
    )
    con = duckdb.connect(str(db), read_only=True)
    try:
        cursor = con.execute(
            "select key, status, text, prompt_tokens, cached_tokens, output_tokens, "
            "thoughts_tokens, total_tokens, cost_usd, model_version, finish_reason, "
            "error->>'$.code' as error_code, error->>'$.message' as error_message from recorded"
        )
        names = [d[0] for d in cursor.description]
        rows = {row[0]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()}
    finally:
        con.close()
    return summary, rows


def hand_cost(*, prompt: int, cached: int, output: int, thoughts: int) -> float:
    """USD at batch price: uncached prompt at the input rate, cache hits at the cached rate,
    answer and thoughts at the output rate."""
    price = load_prices().for_model(MODEL)
    assert price is not None
    return (
        (prompt - cached) * price.input
        + cached * price.cached_input
        + (output + thoughts) * price.output
    ) / 1_000_000


def test_recorded_answers_with_thinking_tokens_are_ingested_as_recorded(
    ingested: tuple[results.IngestSummary, dict[str, dict[str, Any]]],
) -> None:
    _, rows = ingested
    expected = {  # Batch_mode.ipynb cell 25: prompt, output, thoughts, total
        "request_1": (8, 11, 829, 848),
        "request_2": (9, 63, 1180, 1252),
    }
    for key, (prompt, output, thoughts, total) in expected.items():
        row = rows[key]
        assert row["status"] == "succeeded" and row["error_code"] is None
        assert (row["prompt_tokens"], row["cached_tokens"]) == (prompt, None)
        assert (row["output_tokens"], row["thoughts_tokens"], row["total_tokens"]) == (
            output,
            thoughts,
            total,
        )
        assert row["cost_usd"] == pytest.approx(
            hand_cost(prompt=prompt, cached=0, output=output, thoughts=thoughts), rel=1e-12
        )
        assert (row["model_version"], row["finish_reason"]) == (MODEL, "STOP")
    assert (
        rows["request_1"]["text"]
        == "AI learns patterns from data to make decisions or predictions."
    )


def test_a_recorded_cache_hit_is_charged_at_the_cached_rate(
    ingested: tuple[results.IngestSummary, dict[str, dict[str, Any]]],
) -> None:
    _, rows = ingested
    row = rows["apollo_lighthearted"]  # Caching.ipynb cell 20
    assert row["status"] == "succeeded"
    assert (row["prompt_tokens"], row["cached_tokens"]) == (322707, 322698)
    assert (row["output_tokens"], row["thoughts_tokens"], row["total_tokens"]) == (
        282,
        4049,
        327038,
    )
    assert row["cost_usd"] == pytest.approx(
        hand_cost(prompt=322707, cached=322698, output=282, thoughts=4049), rel=1e-12
    )


def test_a_failed_line_with_a_grpc_code_is_failed_and_keeps_its_status(
    ingested: tuple[results.IngestSummary, dict[str, dict[str, Any]]],
) -> None:
    summary, rows = ingested
    row = rows["request_3"]
    assert row["status"] == "failed"
    assert (row["error_code"], row["error_message"]) == (
        "3",
        "Request contains an invalid argument.",
    )
    assert row["prompt_tokens"] is None and row["text"] is None
    assert (summary.rows, summary.succeeded, summary.failed) == (4, 3, 1)
    assert (summary.missing_keys, summary.unknown_keys) == (0, 0)
    assert summary.prompt_tokens == 8 + 9 + 322707
    assert summary.cost_usd == pytest.approx(
        sum(r["cost_usd"] or 0 for r in rows.values()), rel=1e-12
    )
