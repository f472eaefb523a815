"""The results ingest over real DuckDB files: unknown and missing keys, errors per line,
idempotence per job."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from runner.adapters import results
from runner.core.pricing import load_prices
from tests.adapters.test_ledger import results_file, write_set

OK = {
    "candidates": [{"content": {"parts": [{"text": "fine"}]}, "finishReason": "STOP"}],
    "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 4},
}


def test_unknown_keys_error_lines_and_missing_keys_are_each_accounted_for(
    tmp_path: Path,
) -> None:
    requests = write_set(tmp_path / "set.parquet", [("a", "h1"), ("b", "h2"), ("c", "h3")])
    lines = [
        json.dumps({"key": "a", "response": OK}),
        json.dumps({"key": "b", "error": {"code": 400, "message": "bad", "status": "INVALID"}}),
        json.dumps({"key": "zzz", "response": OK}),  # not among the job's requests
    ]  # c: no line at all (a truncated file)
    db = tmp_path / "results.duckdb"

    def ingest() -> results.IngestSummary:
        return results.ingest(
            results_db=db,
            table="t",
            result_file=results_file(tmp_path / "out.jsonl", lines),
            requests=requests,
            current=None,
            output_schema=None,
            price=load_prices().for_model("gemini-2.5-flash"),
            job="batches/1",
            manifest="m",
            manifest_version="v1",
            commit=None,
        )

    summary = ingest()
    assert (summary.rows, summary.succeeded, summary.failed) == (3, 1, 2)
    assert (summary.missing_keys, summary.unknown_keys) == (1, 1)
    ingest()  # the same job again changes nothing
    con = duckdb.connect(str(db), read_only=True)
    try:
        history = con.execute(
            "select key, status, error->>'message', name from t_history order by key"
        ).fetchall()
        current = con.execute("select key from t order by key").fetchall()
    finally:
        con.close()
    assert history == [
        ("a", "succeeded", None, "A"),
        ("b", "failed", "bad", "B"),
        ("zzz", "failed", "key not among the job's requests", None),
    ]
    assert current == [("a",), ("b",)]  # an unknown key never reaches the current table
