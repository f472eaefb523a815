"""The DuckLake result store against a DuckDB file: the same tables, views and guarantees
(history, current view, sources, typed columns, schema changes), read back the way a user
would, with catalogs in SQLite and in a real Postgres; conflicts, compaction, status."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from runner.adapters import lake
from runner.adapters.results import QueryError, ResultsDb
from runner.core.pricing import load_prices
from runner.core.records import IngestSummary
from runner.errors import GbatchError, StoreError
from tests import pg
from tests.adapters.test_ledger import results_file, write_set
from tests.adapters.test_results import OK

postgres_server, postgres_url = pg.postgres_server, pg.postgres_url  # the fixtures

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["title"],
}


class Store:
    """A result store under test and a user's way of reading it."""

    def __init__(self, kind: str, tmp_path: Path, url: str | None) -> None:
        self.kind, self.tmp = kind, tmp_path
        self.file = tmp_path / "results.duckdb"
        self.spec: lake.LakeSpec | None = None
        self._reader: duckdb.DuckDBPyConnection | None = None
        if kind == "file":
            self.store: ResultsDb = ResultsDb(self.file)
            return
        catalog = f"postgres:{pg.conninfo(url or '')}" if kind == "postgres" else "sqlite:"
        if kind == "sqlite":
            catalog += str(tmp_path / "catalog.sqlite")
        spec = lake.parse(f"ducklake:{catalog}", data_path=tmp_path / "lake")
        assert spec is not None
        self.spec = spec
        self.store = lake.LakeResults(spec, compact_every_s=3600)

    def ingest(self, job: str, lines: list[dict[str, Any]], requests: Path, **kw: Any) -> Any:
        name = job.replace("/", "_") + f"-{len(list(self.tmp.glob('*.jsonl')))}.jsonl"
        return self.store.ingest(
            table=kw.pop("table", "t"),
            result_file=results_file(self.tmp / name, [json.dumps(line) for line in lines]),
            requests=requests,
            current=kw.pop("current", None),
            output_schema=kw.pop("output_schema", None),
            price=load_prices().for_model("gemini-2.5-flash"),
            job=job,
            manifest="m",
            manifest_version=kw.pop("version", "v1"),
            commit=None,
            **kw,
        )

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """As a user reads it: plain DuckDB, read-only, under a name of its own (a lake's
        reader stays attached and sees each commit; a file is opened between writes)."""
        if self.spec is not None:
            return self.reader().execute(sql).fetchall()
        con = duckdb.connect()
        try:
            con.execute(f"attach '{self.file}' as mine (read_only)")
            con.execute("use mine")
            return con.execute(sql).fetchall()
        finally:
            con.close()

    def reader(self) -> duckdb.DuckDBPyConnection:
        assert self.spec is not None
        if self._reader is None:
            con = duckdb.connect()
            con.execute(f"set extension_directory = '{self.tmp / 'user-extensions'}'")
            for name in ("ducklake", self.spec.kind):
                con.execute(f"install '{lake.wheel_extension(name)}'")
                con.execute(f"load {name}")
            con.execute(
                f"attach '{self.spec.attach_target()}' as mine "
                f"(data_path '{self.spec.data_path}/', read_only)"
            )
            con.execute("use mine")
            self._reader = con
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


@pytest.fixture(params=["file", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    store = Store(request.param, tmp_path, url)
    yield store
    store.close()


def answer(text: str, **usage: int) -> dict[str, Any]:
    return {
        "candidates": [{"content": {"parts": [{"text": text}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 4, **usage},
    }


def test_history_the_current_view_and_every_key_accounted_for(store: Store) -> None:
    requests = write_set(store.tmp / "set.parquet", [("a", "h1"), ("b", "h2"), ("c", "h3")])
    error = {"code": 500, "message": "internal", "status": "INTERNAL"}
    lines = [
        {"key": "a", "response": OK},
        {"key": "b", "error": error},
        {"key": "zzz", "response": OK},  # not among the job's requests
    ]
    first = store.ingest("batches/1", lines, requests)
    assert (first.rows, first.succeeded, first.failed) == (3, 1, 2)
    assert (first.missing_keys, first.unknown_keys) == (1, 1)
    again = store.ingest("batches/1", lines, requests)  # the same job again changes nothing
    assert again == first
    store.ingest("batches/2", [{"key": "b", "response": OK}], requests)  # b's retry
    assert store.rows("select key, status, job, name from t order by key") == [
        ("a", "succeeded", "batches/1", "A"),
        ("b", "succeeded", "batches/2", "B"),  # the retry's answer replaced the failure
    ]
    assert store.rows("select count(*) from t_history") == [(4,)]  # nothing paid for is lost
    assert store.rows(
        "select table_name, table_type from information_schema.tables "
        "where table_catalog = 'mine' order by 1"
    ) == [("t", "VIEW"), ("t_current_keys", "BASE TABLE"), ("t_history", "BASE TABLE")]
    changed = write_set(store.tmp / "v2.parquet", [("a", "h1"), ("b", "h9")])
    store.store.show_current(table="t", current=changed)
    assert store.rows("select key from t") == [("a",)]  # b's new request has no answer yet


def test_typed_columns_sources_and_a_type_change_keep_every_answer(store: Store) -> None:
    requests = write_set(store.tmp / "set.parquet", [("a", "h1"), ("b", "h2")])
    grounded = answer('{"title": "A", "score": 3}')
    grounded["candidates"][0]["groundingMetadata"] = {
        "webSearchQueries": ["a query"],
        "groundingChunks": [{"web": {"uri": "https://example.com/a", "title": "Example"}}],
        "groundingSupports": [
            {"segment": {"startIndex": 0, "endIndex": 5, "text": "A"}, "groundingChunkIndices": [0]}
        ],
    }
    lines = [{"key": "a", "response": grounded}, {"key": "b", "response": answer("not json")}]
    summary = store.ingest("batches/1", lines, requests, output_schema=SCHEMA)
    assert (summary.succeeded, summary.failed) == (1, 1)
    assert store.rows("select key, status, title, score from t order by key") == [
        ("a", "succeeded", "A", 3),
        ("b", "failed", None, None),
    ]
    assert store.rows("select column_type from (describe t) where column_name = 'score'") == [
        ("BIGINT",)
    ]
    assert store.rows("select key, query, uri, title, segment_text from t_sources") == [
        ("a", "a query", "https://example.com/a", "Example", "A")
    ]
    # version 2 makes score a string: add_columns widens it to text, both versions' values kept
    v2 = {**SCHEMA, "properties": {**SCHEMA["properties"], "score": {"type": "string"}}}
    again = write_set(store.tmp / "v2.parquet", [("a", "h3"), ("b", "h4")])
    lines = [{"key": k, "response": answer(f'{{"title": "{k}2", "score": "high"}}')} for k in "ab"]
    store.ingest("batches/2", lines, again, output_schema=v2, version="v2", current=again)
    assert store.rows("select key, title, score from t order by key") == [
        ("a", "a2", "high"),
        ("b", "b2", "high"),
    ]
    assert store.rows("select job, score from t_history where key = 'a' order by job") == [
        ("batches/1", "3"),
        ("batches/2", "high"),
    ]
    # version 3 changes it back with new_table: the old tables are moved aside, types intact
    v3 = write_set(store.tmp / "v3.parquet", [("a", "h5")])
    lines = [{"key": "a", "response": answer('{"title": "a3", "score": 9}')}]
    store.ingest(
        "batches/3", lines, v3, output_schema=SCHEMA, current=v3, on_schema_change="new_table"
    )
    assert store.rows("select key, score from t") == [("a", 9)]
    tables = [name for (name,) in store.rows("select table_name from duckdb_tables() order by 1")]
    retired = [name for name in tables if name.startswith("t_history_until_")]
    assert len(retired) == 1 and store.rows(f"select count(*) from {retired[0]}") == [(4,)]


def test_a_query_sees_the_lake_and_the_bookkeeping_and_nothing_else(store: Store) -> None:
    requests = write_set(store.tmp / "set.parquet", [("a", "h1")])
    store.ingest("batches/1", [{"key": "a", "response": OK}], requests)
    extra = {"gbatch_jobs": (["id", "phase"], [(1, "ingested")])}
    columns, rows = store.store.run_query(
        "select t.key, j.phase from t, gbatch_jobs j", extra_tables=extra
    )
    assert (columns, rows) == (["key", "phase"], [("a", "ingested")])
    for refused in ("select * from read_csv('/etc/passwd')", "attach 'x.duckdb' as x"):
        with pytest.raises(QueryError):
            store.store.run_query(refused)


# -- the lake's own: parsing GBATCH_DB, conflicts, compaction, status ----------------------
def test_gbatch_db_names_a_lake_or_a_file_and_hides_passwords() -> None:
    assert lake.parse("results.duckdb", data_path=None) is None
    spec = lake.parse("ducklake:postgres:postgresql:/u:secret@db/gbatch", data_path=Path("/d"))
    assert spec is not None and spec.catalog == "postgresql://u:secret@db/gbatch"  # // restored
    assert "secret" not in str(spec)
    words = lake.parse("ducklake:postgres:dbname=g host=db password=secret", data_path=Path("/d"))
    assert words is not None and "secret" not in str(words) and "host=db" in str(words)
    with pytest.raises(GbatchError, match="GBATCH_LAKE_DATA_PATH"):
        lake.parse("ducklake:sqlite:/tmp/c.sqlite", data_path=None)
    with pytest.raises(GbatchError, match="ducklake:postgres:<libpq conninfo>"):
        lake.parse("ducklake:mysql:db", data_path=Path("/d"))


def test_two_writers_ingesting_one_job_at_once_leave_one_copy(
    postgres_url: str, tmp_path: Path
) -> None:
    """An old and a new leader overlapping: DuckLake refuses one commit, which is retried."""
    requests = write_set(tmp_path / "set.parquet", [(f"k{i}", f"h{i}") for i in range(50)])
    lines = [{"key": f"k{i}", "response": OK} for i in range(50)]
    writers = [Store("postgres", tmp_path, postgres_url) for _ in range(2)]
    writers[0].ingest("batches/0", lines, requests)  # the tables exist: only rows collide
    done: list[IngestSummary] = []
    failed: list[BaseException] = []

    def write(writer: Store) -> None:
        try:
            for _ in range(3):
                done.append(writer.ingest("batches/1", lines, requests))
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failed == [] and len(done) == 6
    assert writers[0].rows(
        "select job, count(*), count(distinct key) from t_history group by 1 order by 1"
    ) == [("batches/0", 50, 50), ("batches/1", 50, 50)]
    assert writers[0].rows("select count(*), count(distinct key) from t") == [(50, 50)]


def test_a_commit_conflict_is_retried_from_the_start(postgres_url: str, tmp_path: Path) -> None:
    store = Store("postgres", tmp_path, postgres_url)
    requests = write_set(tmp_path / "set.parquet", [("a", "h1")])
    store.ingest("batches/1", [{"key": "a", "response": OK}], requests)
    assert isinstance(store.store, lake.LakeResults)
    rival = lake.LakeOpener(store.spec or lake.LakeSpec("", "", tmp_path)).connect(read_only=False)
    tries: list[int] = []

    def work() -> int:
        con = store.store._open()
        try:
            con.execute("begin")
            con.execute("update t_current_keys set job = job")
            if not tries:  # another writer commits the same change first
                rival.execute("update t_current_keys set job = job")
            tries.append(1)
            con.execute("commit")
        except duckdb.Error as exc:
            raise StoreError(str(exc)) from exc
        finally:
            con.close()
        return len(tries)

    assert store.store._write(work) == 2  # refused once, then it went through
    rival.close()


def test_compaction_merges_the_files_each_commit_wrote_and_status_counts_them(
    postgres_url: str, tmp_path: Path
) -> None:
    store = Store("postgres", tmp_path, postgres_url)
    assert isinstance(store.store, lake.LakeResults)
    keys = [(f"k{i}", f"h{i}") for i in range(200)]
    requests = write_set(tmp_path / "set.parquet", keys)
    for job in range(4):
        store.ingest(f"batches/{job}", [{"key": k, "response": OK} for k, _ in keys], requests)
    files = "select sum(file_count) from ducklake_table_info('mine')"
    before = store.rows(files)[0][0]
    described = "\n".join(store.store.describe())
    assert "snapshot" in described and f"{before} data files" in described
    store.store.compact()
    after = store.rows(files)[0][0]
    assert after < before  # the four history files became one
    assert store.rows("select count(*), count(distinct key) from t_history") == [(800, 200)]
    assert store.rows("select count(*) from t") == [(200,)]
