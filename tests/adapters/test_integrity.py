"""The results file's own guards over real DuckDB files (gbatch#13): no table is dropped before
its rows are verified elsewhere, one state writes the file, kept rows restore a table exactly,
and a file DuckDB cannot open is told apart from a busy one."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from runner.adapters import results
from runner.core.pricing import load_prices
from runner.errors import LockedError
from tests.adapters.test_ledger import results_file, write_set

OK = {
    "candidates": [{"content": {"parts": [{"text": "fine"}]}, "finishReason": "STOP"}],
    "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 4},
}


def owners() -> tuple[results.Owner, results.Owner]:
    return results.Owner("a" * 32, "/state/a"), results.Owner("b" * 32, "/state/b")


def ingest(
    tmp_path: Path,
    *,
    table: str = "t",
    job: str = "batches/1",
    owner: results.Owner | None = None,
    keep: Path | None = None,
) -> results.IngestSummary:
    requests = write_set(tmp_path / "set.parquet", [("a", "h1"), ("b", "h2")])
    lines = [
        json.dumps({"key": "a", "response": OK}),
        json.dumps({"key": "b", "error": {"code": 500, "message": "boom", "status": "INTERNAL"}}),
    ]
    extra: dict[str, object] = {"owner": owner} if owner else {}
    extra |= {"keep": keep} if keep else {}
    return results.ingest(
        results_db=tmp_path / "results.duckdb",
        table=table,
        result_file=results_file(tmp_path / f"{job.replace('/', '-')}.jsonl", lines),
        requests=requests,
        current=requests,
        output_schema=None,
        price=load_prices().for_model("gemini-2.5-flash"),
        job=job,
        manifest="m",
        manifest_version="v1",
        commit=None,
        **extra,  # type: ignore[arg-type]
    )


def sql(db: Path, query: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def tables_like(db: Path, prefix: str) -> list[str]:
    names = [str(r[0]) for r in sql(db, "select table_name from information_schema.tables")]
    return [n for n in names if n.startswith(prefix)]


def test_a_table_under_the_views_name_is_moved_aside_not_dropped(tmp_path: Path) -> None:
    """Such a table was taken for a current table from before views and dropped, though
    none of its rows were in history (another manifest's history table, say)."""
    db = tmp_path / "results.duckdb"
    con = duckdb.connect(str(db))
    con.execute("create table t (key varchar, job varchar, note varchar)")
    con.execute("insert into t values ('x', 'batches/0', 'not in any history')")
    con.close()
    ingest(tmp_path)
    (aside,) = tables_like(db, "t_until_")
    assert sql(db, f"select note from {aside}") == [("not in any history",)]
    assert sql(db, "select key from t order by key") == [("a",), ("b",)]


def test_a_table_under_the_pointers_name_is_moved_aside_not_replaced(tmp_path: Path) -> None:
    db = tmp_path / "results.duckdb"
    con = duckdb.connect(str(db))
    con.execute("create table t_current_keys (anything integer)")
    con.execute("insert into t_current_keys values (42)")
    con.close()
    ingest(tmp_path)
    (aside,) = tables_like(db, "t_current_keys_until_")
    assert sql(db, f"select anything from {aside}") == [(42,)]
    assert sql(db, "select key from t order by key") == [("a",), ("b",)]


def test_a_results_file_written_by_one_state_refuses_another(tmp_path: Path) -> None:
    A, B = owners()
    ingest(tmp_path, owner=A)
    with pytest.raises(LockedError, match="/state/a"):
        ingest(tmp_path, owner=B, job="batches/2")
    with pytest.raises(LockedError):
        results.claim(tmp_path / "results.duckdb", B)
    assert sql(tmp_path / "results.duckdb", "select distinct job from t_history") == [
        ("batches/1",)
    ]
    results.claim(tmp_path / "results.duckdb", B, take=True)
    ingest(tmp_path, owner=B, job="batches/2")
    seen = results.inspect(tmp_path / "results.duckdb", ["t"])
    assert seen.owner == B and seen.tables["t"].rows == {"batches/1": 2, "batches/2": 2}


def test_kept_rows_restore_history_exactly(tmp_path: Path) -> None:
    A, _ = owners()
    db = tmp_path / "results.duckdb"
    keep = tmp_path / "kept" / "1.parquet"
    ingest(tmp_path, keep=keep)
    before = sql(db, "select * from t_history order by key")
    assert results.kept_count(keep) == 2
    db.unlink()
    written = results.restore(
        results_db=db, table="t", kept=[("batches/1", keep)], current=None, owner=A
    )
    assert written == 2
    assert sql(db, "select * from t_history order by key") == before
    assert sql(db, "select key, status from t order by key") == [
        ("a", "succeeded"),
        ("b", "failed"),
    ]
    seen = results.inspect(db, ["t"])
    assert seen.tables["t"].view and seen.owner == A


@pytest.mark.parametrize("content", [b"", b"garbage" * 500])
def test_a_file_duckdb_cannot_open_is_told_apart(tmp_path: Path, content: bytes) -> None:
    db = tmp_path / "results.duckdb"
    db.write_bytes(content)
    with pytest.raises(results.CorruptResultsError):
        results.inspect(db, ["t"])
    aside = results.move_aside(db)
    assert not db.exists() and aside.read_bytes() == content
    assert results.inspect(db, ["t"]).exists is False
