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


def _ingest(tmp_path: Path, job: str, lines: list[str], requests: Path) -> results.IngestSummary:
    return results.ingest(
        results_db=tmp_path / "gbatch.duckdb",  # the default name: its catalog is "gbatch"
        table="t",
        result_file=results_file(tmp_path / f"{job.replace('/', '_')}.jsonl", lines),
        requests=requests,
        current=None,
        output_schema=None,
        price=load_prices().for_model("gemini-2.5-flash"),
        job=job,
        manifest="m",
        manifest_version="v1",
        commit=None,
    )


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_a_key_twice_in_one_file_is_stored_once_preferring_its_answer(tmp_path: Path) -> None:
    requests = write_set(tmp_path / "set.parquet", [("a", "h1"), ("b", "h2")])
    error = {"code": 500, "message": "internal", "status": "INTERNAL"}
    lines = [
        json.dumps({"key": "a", "error": error}),
        json.dumps({"key": "b", "response": OK}),
        json.dumps({"key": "a", "response": OK}),
    ]
    summary = _ingest(tmp_path, "batches/1", lines, requests)
    assert (summary.rows, summary.succeeded, summary.missing_keys) == (2, 2, 0)
    db = tmp_path / "gbatch.duckdb"
    assert _rows(db, "select key, status from t_history order by key") == [
        ("a", "succeeded"),
        ("b", "succeeded"),
    ]


def test_the_current_table_is_a_view_naming_one_history_row_per_key(tmp_path: Path) -> None:
    requests = write_set(tmp_path / "set.parquet", [("a", "h1"), ("b", "h2")])
    failed = {"code": 500, "message": "internal", "status": "INTERNAL"}
    _ingest(
        tmp_path, "batches/1", [json.dumps({"key": k, "error": failed}) for k in "ab"], requests
    )
    _ingest(tmp_path, "batches/2", [json.dumps({"key": "a", "response": OK})], requests)
    db = tmp_path / "gbatch.duckdb"
    assert _rows(db, "select key, status, job from t order by key") == [
        ("a", "succeeded", "batches/2"),  # the retry's answer replaced the failure
        ("b", "failed", "batches/1"),
    ]
    assert _rows(db, "select count(*) from t_history") == [(3,)]
    kinds = _rows(
        db,
        "select table_name, table_type from information_schema.tables "
        "where table_schema = 'main' order by 1",
    )
    assert kinds == [("t", "VIEW"), ("t_current_keys", "BASE TABLE"), ("t_history", "BASE TABLE")]
    con = duckdb.connect()  # a reader attaching the file under a name of its own
    try:
        con.execute(f"attach '{db}' as elsewhere (read_only)")
        assert con.execute("select count(*) from elsewhere.t").fetchone() == (2,)
    finally:
        con.close()


def test_a_current_table_from_an_older_release_becomes_the_view_without_losing_rows(
    tmp_path: Path,
) -> None:
    requests = write_set(tmp_path / "set.parquet", [("a", "h1"), ("b", "h2")])
    _ingest(tmp_path, "batches/1", [json.dumps({"key": "a", "response": OK})], requests)
    db = tmp_path / "gbatch.duckdb"
    con = duckdb.connect(str(db))  # the layout before pointers: t was a table of its own
    con.execute("drop view t")
    con.execute("drop table t_current_keys")
    con.execute("create table t as select * from t_history")
    con.close()
    _ingest(tmp_path, "batches/2", [json.dumps({"key": "b", "response": OK})], requests)
    assert _rows(db, "select key, job from t order by key") == [
        ("a", "batches/1"),
        ("b", "batches/2"),
    ]
    assert _rows(db, "select table_type from information_schema.tables where table_name = 't'") == [
        ("VIEW",)
    ]


def test_show_current_points_at_the_newest_answer_of_each_current_request(tmp_path: Path) -> None:
    old = write_set(tmp_path / "old.parquet", [("a", "h1"), ("b", "h2")])
    _ingest(tmp_path, "batches/1", [json.dumps({"key": k, "response": OK}) for k in "ab"], old)
    new = write_set(tmp_path / "new.parquet", [("a", "h1"), ("b", "h9")])  # b's request changed
    db = tmp_path / "gbatch.duckdb"
    results.show_current(results_db=db, table="t", current=new)
    assert _rows(db, "select key from t") == [("a",)]  # b has no answer for its new request yet
    assert _rows(db, "select count(*) from t_history") == [(2,)]  # nothing paid for is lost


def test_an_answer_that_calls_a_function_succeeds_with_no_text(tmp_path: Path) -> None:
    requests = write_set(tmp_path / "set.parquet", [("a", "h1"), ("b", "h2")])
    call = {"functionCall": {"name": "lookup", "args": {"sku": "A-1"}}}
    calls = {
        "candidates": [{"content": {"parts": [call]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 4},
    }
    quoted = {  # text that merely mentions the key is still an answer without a call
        "candidates": [{"content": {"parts": []}, "finishReason": "STOP"}],
        "note": 'said "functionCall" here',
    }
    lines = [
        json.dumps({"key": "a", "response": calls}),
        json.dumps({"key": "b", "response": quoted}),
    ]
    summary = _ingest(tmp_path, "batches/1", lines, requests)
    assert (summary.succeeded, summary.failed) == (1, 1)
    db = tmp_path / "gbatch.duckdb"
    rows = _rows(
        db,
        "select key, status, text, error->>'message', "
        "response->>'$.candidates[0].content.parts[0].functionCall.name' from t order by key",
    )
    assert rows == [
        ("a", "succeeded", None, None, "lookup"),
        ("b", "failed", None, "the answer has no text", None),
    ]
