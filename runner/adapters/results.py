"""Result lines in, typed tables out: the results database users query.

Per manifest table ``t``: ``t_history`` keeps every line ever ingested (idempotent per job),
``t`` shows one row per key of the current version, ``t_sources`` holds grounding sources.
Lines are parsed by DuckDB's JSON reader; a job is ingested in one transaction. The file is
opened only for the length of one write, so read-only readers come and go between writes;
if another process holds it, StoreBusyError says so and the engine retries later.
Called by the engine (ingest, show_current) and the CLI (run_query).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from runner import crashpoints
from runner.adapters.duck import (
    Connection,
    Error,
    ident,
    literal,
    lock_down,
    memory,
    open_file,
    single_select,
)
from runner.core import schema_types
from runner.core.ports import Table
from runner.core.pricing import Price
from runner.core.records import IngestSummary
from runner.errors import GbatchError, StoreError

OK_FINISH = ("STOP", "MAX_TOKENS")
# The parts of a response the typed columns come from, parsed once per line.
RESPONSE = json.dumps(
    {
        "candidates": [
            {
                "content": {"parts": [{"text": "VARCHAR", "thought": "BOOLEAN"}]},
                "finishReason": "VARCHAR",
            }
        ],
        "usageMetadata": {
            name: "BIGINT"
            for name in (
                "promptTokenCount",
                "cachedContentTokenCount",
                "candidatesTokenCount",
                "thoughtsTokenCount",
                "toolUsePromptTokenCount",
                "totalTokenCount",
            )
        },
        "modelVersion": "VARCHAR",
    }
)
GROUNDING = (
    '{"webSearchQueries": ["VARCHAR"], "groundingChunks": [{"web": {"uri": "VARCHAR", '
    '"title": "VARCHAR"}}], "groundingSupports": [{"segment": {"startIndex": "BIGINT", '
    '"endIndex": "BIGINT", "text": "VARCHAR"}, "groundingChunkIndices": ["BIGINT"]}]}'
)
# Long text columns are stored zstd-compressed: half the write time of DuckDB's default
# dictionary/FSST analysis and a smaller file, at the same scan speed (bench/ingest.py).
ZSTD_COLUMNS = ("text", "response", "error", "request_hash")
# An answer that calls the manifest's functions has no text: it succeeded, and its calls are in
# ``response``. (A quote inside answer text is escaped, so answer text cannot match this.)
CALLS = """contains(response::varchar, '"functionCall"')"""


class QueryError(GbatchError):
    """The user's SQL was refused or failed."""


__all__ = ["IngestSummary"]  # defined in the core: every result store returns one
T = TypeVar("T")


# -- where the tables live (#18): a DuckDB file, or another catalog behind an Opener -------
class Opener(Protocol):
    """Opens connections whose current database holds the result tables (the SQL below
    names tables unqualified). ``runner.adapters.lake.LakeOpener`` is the other one."""

    def connect(self, *, read_only: bool, wait_s: float = 0.0) -> Connection: ...

    def exists(self) -> bool:
        """Whether there can be tables yet (a file not yet written: no)."""
        ...

    def readable(self) -> tuple[Path, ...]:
        """Folders a locked-down reader must still read (a lake's data files)."""
        ...


@dataclass(frozen=True)
class DuckFile:
    """The default: one DuckDB file, opened only for the length of one write."""

    path: Path

    def connect(self, *, read_only: bool, wait_s: float = 0.0) -> Connection:
        return open_file(self.path, read_only=read_only, wait_s=wait_s)

    def exists(self) -> bool:
        return self.path.exists()

    def readable(self) -> tuple[Path, ...]:
        return ()  # the open file is read through its connection

    def __str__(self) -> str:
        return str(self.path)


def _target(results_db: Path | Opener) -> Opener:
    return DuckFile(results_db) if isinstance(results_db, Path) else results_db


def _in_lake(con: Connection) -> bool:
    """Whether the current database is a DuckLake (Parquet files: no per-column compression
    clause, and a column type changes only by widening, so text is made by a rewrite)."""
    row = con.execute(
        "select type from duckdb_databases() where database_name = current_database()"
    ).fetchone()
    return row is not None and row[0] == "ducklake"


# -----------------------------------------------------------------------------------------


def _parse(
    con: Connection,
    *,
    result_file: Path,
    requests: Path,
    output_schema: dict[str, Any] | None,
    price: Price | None,
    paid: bool,
    job: str,
    manifest: str,
    manifest_version: str,
    commit: str | None,
) -> None:
    """Temp view ``parsed``: one row per result key, statuses decided, columns typed.

    A view, not a table: the one INSERT into history streams the file through it, so the
    answers are never held in memory. ``req`` is the job's request set.
    """
    con.execute(
        f"""
        create temp view lines as
        select key, response, error
        from read_json({literal(str(result_file))}, format = 'newline_delimited',
                       columns = {{'key': 'VARCHAR', 'response': 'JSON', 'error': 'JSON'}},
                       ignore_errors = true)
        where key is not null
        """
    )
    con.execute("create temp view once as select * from lines")  # see _insert_history
    con.execute(
        f"create temp view req as select * exclude (request) "
        f"from read_parquet({literal(str(requests))})"
    )
    source_cols = [
        c
        for c in _columns(con, "req")
        if c not in ("key", "request_hash", "request_bytes", "row_number")
        and not c.startswith("__media_")
    ]
    typed = schema_types.columns(output_schema) if output_schema else []
    cost = "null::double" if paid else "0::double"  # reused answers were paid for once
    if price is not None and paid:
        cost = price.cost_sql("u")  # the one cost definition, rendered as SQL
    con.execute(
        f"""
        create temp view base as
        select l.key, l.error, l.response, r.key is not null as known, r.request_hash,
               l.p.usageMetadata as u,
               l.p.candidates[1].finishReason finish_reason,
               l.p.modelVersion model_version,
               list_aggr(list_transform(list_filter(l.p.candidates[1].content.parts,
                   lambda part: not coalesce(part.thought, false)), lambda part: part.text),
                   'string_agg', '') as text
               {"".join(f", r.{ident(c)}" for c in source_cols)}
        from (select *, from_json(response, {literal(RESPONSE)}) p from once) l
        left join req r using (key)
        """
    )
    answer, problem = "", "null"
    if output_schema is not None:
        structure = literal(schema_types.structure_json(output_schema))
        answer = f", case when valid then from_json(text, {structure}) end as answer"
        missing = [f"answer.{ident(n)} is null" for n in schema_types.required(output_schema)]
        problem = (
            "case when not coalesce(valid, false) then "
            "'answer is not valid JSON for output_schema' "
            + (
                f"when {' or '.join(missing)} then 'answer lacks a required output_schema "
                "property or has the wrong type' "
                if missing
                else ""
            )
            + "end"
        )
    con.execute(
        f"create temp view shaped as select *, {problem} as problem "
        f"from (select *{answer} from (select *, json_valid(text) as valid from base))"
    )
    con.execute(
        f"""
        create temp view parsed as
        select key, status, text, response, error_json as error, finish_reason,
               u.promptTokenCount prompt_tokens, u.cachedContentTokenCount cached_tokens,
               u.candidatesTokenCount output_tokens, u.thoughtsTokenCount thoughts_tokens,
               u.totalTokenCount total_tokens, {cost} cost_usd, model_version,
               {literal(job)} job, {literal(manifest)} manifest,
               {literal(manifest_version)} manifest_version,
               {literal(commit) if commit else "null"}::varchar "commit", request_hash,
               now()::timestamp ingested_at
               {"".join(f", {ident(c)}" for c in source_cols)}
               {"".join(f", answer.{ident(n)} as {ident(n)}" for n, _ in typed)}
        from (
            select *,
                case
                    when not known then 'failed'
                    when error is not null or response is null then 'failed'
                    when finish_reason is not null and finish_reason not in {OK_FINISH}
                        then 'failed'
                    when text is null and {CALLS} then 'succeeded'
                    when text is null then 'failed'
                    when problem is not null then 'failed'
                    else 'succeeded'
                end as status,
                case
                    when not known then '{{"message": "key not among the job''s requests"}}'::json
                    when error is not null then error
                    when response is null then '{{"message": "no response"}}'::json
                    when finish_reason is not null and finish_reason not in {OK_FINISH}
                        then json_object('message', 'finished with ' || finish_reason)
                    when text is null and {CALLS} then null
                    when text is null then '{{"message": "the answer has no text"}}'::json
                    when problem is not null then json_object('message', problem)
                end as error_json
            from shaped
        )
        """
    )


def _columns(con: Connection, table: str) -> list[str]:
    return [str(r[0]) for r in con.execute(f"describe {table}").fetchall()]


def _types(con: Connection, relation: str) -> dict[str, str]:
    rows = con.execute(f"select column_name, column_type from (describe {relation})").fetchall()
    return {str(name): str(kind) for name, kind in rows}


def _kind(con: Connection, name: str) -> str | None:
    """``BASE TABLE``, ``VIEW`` or None: what ``name`` is in the results file."""
    found = con.execute(
        "select table_type from information_schema.tables where table_name = ? "
        "and table_schema = 'main' and table_catalog = current_database()",
        [name],
    ).fetchone()
    return str(found[0]) if found else None


def _ensure_table(con: Connection, table: str, like: str, *, zstd: tuple[str, ...] = ()) -> None:
    """Create ``table`` shaped like ``like``; add columns it lacks, widen changed ones to text.

    Never drops: a column whose type changed becomes VARCHAR, which holds both versions'
    values (callers that want a fresh table call ``_retire_if_changed`` first). Columns
    named in ``zstd`` are created zstd-compressed.
    """
    lake = _in_lake(con)  # #18
    if _kind(con, table) is None:
        columns = ", ".join(
            f"{ident(name)} {kind}"
            + (" using compression zstd" if name in zstd and not lake else "")
            for name, kind in _types(con, like).items()
        )
        con.execute(f"create table {ident(table)} ({columns})")
        return
    have = _types(con, ident(table))
    widen = []
    for name, kind in _types(con, like).items():
        if name not in have:
            con.execute(f"alter table {ident(table)} add column {ident(name)} {kind}")
        elif have[name] != kind and have[name] != "VARCHAR":
            widen.append(name)
    if widen and not lake:
        for name in widen:
            con.execute(f"alter table {ident(table)} alter column {ident(name)} type VARCHAR")
    elif widen:  # #18: a lake table is rewritten with those columns as text
        casts = ", ".join(f"{ident(n)}::varchar as {ident(n)}" for n in widen)
        con.execute(
            f"create table {ident(table + '__widened')} as "
            f"select * replace ({casts}) from {ident(table)}"
        )
        con.execute(f"drop table {ident(table)}")
        con.execute(f"alter table {ident(table + '__widened')} rename to {ident(table)}")


def _retire_if_changed(con: Connection, table: str, like: str, stamp: str) -> None:
    """Move ``table``'s tables aside as ``<name>_until_<stamp>`` when a column of ``like``
    changed type; the current rows are kept as a table of their own."""
    history, sources = f"{table}_history", f"{table}_sources"
    if _kind(con, history) is None:
        return
    have = _types(con, ident(history))
    if all(have.get(name, kind) == kind for name, kind in _types(con, like).items()):
        return
    until = f"_until_{stamp}"
    if _kind(con, table) == "VIEW":
        con.execute(f"create table {ident(table + until)} as select * from {ident(table)}")
        con.execute(f"drop view {ident(table)}")
        con.execute(f"drop table {_pointer(table)}")
    elif _kind(con, table) is not None:
        con.execute(f"alter table {ident(table)} rename to {ident(table + until)}")
    for name in (history, sources):
        if _kind(con, name) is not None:
            con.execute(f"alter table {ident(name)} rename to {ident(name + until)}")


def _pointer(table: str) -> str:
    """The table naming the current row of each key, as (key, job) of ``table``'s history.

    In ``main`` beside the others, unqualified: a schema of its own could clash with the
    database's own name (``gbatch.duckdb`` is the catalog ``gbatch``), and the view must
    still resolve when a reader attaches the file under another name.
    """
    return ident(table + "_current_keys")


def _ensure_pointer(con: Connection, table: str) -> None:
    """The pointer table exists; a current table from before pointers becomes one.

    Every row such a table held is also in history (both were written in one transaction),
    so only its (key, job) pairs are kept.
    """
    con.execute(f"create table if not exists {_pointer(table)} (key varchar, job varchar)")
    if _kind(con, table) == "BASE TABLE":
        con.execute(f"insert into {_pointer(table)} select key, job from {ident(table)}")
        con.execute(f"drop table {ident(table)}")


def _show_pointed(con: Connection, table: str) -> None:
    """``table`` as the view of the history rows its pointer names (re-made after each
    change, so it always carries history's columns and their types)."""
    con.execute(
        f"create or replace view {ident(table)} as select h.* from "
        f"{ident(table + '_history')} h semi join {_pointer(table)} p using (key, job)"
    )


def ingest(
    *,
    results_db: Path | Opener,
    table: str,
    result_file: Path,
    requests: Path,
    current: Path | None,
    output_schema: dict[str, Any] | None,
    price: Price | None,
    job: str,
    manifest: str,
    manifest_version: str,
    commit: str | None,
    paid: bool = True,
    on_schema_change: str = "add_columns",
) -> IngestSummary:
    """One job's result lines into ``table``'s history, and its current rows, atomically.

    History is written once; ``table`` is a view over it that shows the rows the pointer
    table names, so making a row current writes only its (key, job).
    ``on_schema_change``: ``add_columns`` widens a column whose type changed to text;
    ``new_table`` renames the old tables to ``<name>_until_<time>`` and starts new ones.
    """
    con = _target(results_db).connect(read_only=False)
    try:
        _parse(
            con,
            result_file=result_file,
            requests=requests,
            output_schema=output_schema,
            price=price,
            paid=paid,
            job=job,
            manifest=manifest,
            manifest_version=manifest_version,
            commit=commit,
        )
        history = f"{table}_history"
        this_job = f"(select * from {ident(history)} where job = {literal(job)})"
        con.execute("begin transaction")
        if on_schema_change == "new_table":
            _retire_if_changed(con, table, "parsed", datetime.now(UTC).strftime("%Y%m%d%H%M%S"))
        _ensure_table(con, history, "parsed", zstd=ZSTD_COLUMNS)
        _ensure_pointer(con, table)
        _insert_history(con, history, job)
        current_filter = (
            f"semi join read_parquet({literal(str(current))}) c using (key, request_hash)"
            if current is not None
            else "where p.request_hash is not null"
        )
        con.execute(f"create temp table fresh as select p.key from {this_job} p {current_filter}")
        con.execute(f"delete from {_pointer(table)} where key in (select key from fresh)")
        con.execute(f"insert into {_pointer(table)} select key, {literal(job)} from fresh")
        _show_pointed(con, table)
        _write_sources(con, f"{table}_sources", job, this_job)
        crashpoints.reached("ingest_mid_transaction")
        con.execute("commit")
        row = con.execute(
            "select count(*), count(*) filter (status = 'succeeded'), "
            "count(*) filter (status = 'failed'), count(*) filter (request_hash is null), "
            "coalesce(sum(cost_usd), 0), coalesce(sum(prompt_tokens), 0), "
            f"coalesce(sum(output_tokens), 0) from {this_job}"
        ).fetchone()
        requested = con.execute("select count(*) from req").fetchone()
    except Error as exc:
        raise StoreError(f"ingest of {job} into {results_db}: {exc}") from exc
    finally:
        con.close()
    assert row is not None and requested is not None
    return IngestSummary(
        rows=int(row[0]),
        succeeded=int(row[1]),
        failed=int(row[2]),
        missing_keys=int(requested[0]) - (int(row[0]) - int(row[3])),
        unknown_keys=int(row[3]),
        cost_usd=float(row[4]),
        prompt_tokens=int(row[5]),
        output_tokens=int(row[6]),
    )


def _insert_history(con: Connection, history: str, job: str) -> None:
    """The job's parsed lines into history, replacing any earlier ingest of the same job.

    A key that appears twice in one file is rare, so it is looked for after the insert
    rather than by a pass over the file before it; then the job is written again from one
    line per key.
    """
    _replace_job_rows(con, history, job)
    repeated = con.execute(
        f"select count(*) - count(distinct key) from {ident(history)} where job = ?", [job]
    ).fetchone()
    if repeated and repeated[0]:
        con.execute(
            "create or replace temp view once as select key, line.response, line.error from ("
            "select key, arg_max({'response': response, 'error': error}, response is not null) "
            "line from lines group by key)"
        )
        _replace_job_rows(con, history, job)


def _replace_job_rows(con: Connection, history: str, job: str) -> None:
    con.execute(f"delete from {ident(history)} where job = ?", [job])
    con.execute(f"insert into {ident(history)} by name select * from parsed")


def _write_sources(con: Connection, table: str, job: str, this_job: str) -> None:
    """Grounding sources: one row per (key, supported segment, chunk), or per chunk."""
    con.execute(
        f"""
        create temp table grounding as
        with g as (
            select key, from_json(json_extract(response, '$.candidates[0].groundingMetadata'),
                                  '{GROUNDING}') m
            from {this_job}
            where contains(response::varchar, '"groundingMetadata"')
                and json_extract(response, '$.candidates[0].groundingMetadata') is not null
        ),
        chunks as (
            select key, m, unnest(range(len(m.groundingChunks))) i from g
        )
        select key, {literal(job)} job,
               array_to_string(m.webSearchQueries, ' | ') query,
               m.groundingChunks[i + 1].web.uri uri, m.groundingChunks[i + 1].web.title title,
               support.segment.text segment_text, support.segment.startIndex start_index,
               support.segment.endIndex end_index
        from (
            select *, list_filter(m.groundingSupports,
                lambda s: list_contains(s.groundingChunkIndices, i))[1] support
            from chunks
        )
        """
    )
    count = con.execute("select count(*) from grounding").fetchone()
    if (count and count[0]) or _kind(con, table) is not None:
        _ensure_table(con, table, "grounding")
        con.execute(f"delete from {ident(table)} where job = ?", [job])
        con.execute(f"insert into {ident(table)} by name select * from grounding")


def show_current(*, results_db: Path | Opener, table: str, current: Path) -> None:
    """Point ``table`` at the newest answer of each (key, hash) of the current version."""
    target = _target(results_db)
    if not target.exists():
        return
    con = target.connect(read_only=False)
    try:
        history = f"{table}_history"
        if _kind(con, history) is None:
            return
        con.execute("begin transaction")
        _ensure_pointer(con, table)
        con.execute(
            f"""
            create or replace table {_pointer(table)} as
            select key, job from (
                select key, job, row_number() over (partition by key order by ingested_at desc,
                    status = 'succeeded' desc) newest
                from {ident(history)} h
                semi join read_parquet({literal(str(current))}) c using (key, request_hash)
            ) where newest = 1
            """
        )
        _show_pointed(con, table)
        con.execute("commit")
    except Error as exc:
        raise StoreError(f"refreshing {table} in {results_db}: {exc}") from exc
    finally:
        con.close()


def run_query(
    results_db: Path | Opener,
    sql: str,
    *,
    extra_tables: dict[str, tuple[list[str], list[tuple[Any, ...]]]] | None = None,
    max_rows: int = 10_000,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """A user's SELECT, read-only and locked down, with the bookkeeping tables beside it."""
    problem = single_select(sql)
    if problem:
        raise QueryError(problem)
    target = _target(results_db)
    con = target.connect(read_only=True, wait_s=10) if target.exists() else memory()
    try:
        for name, (columns, rows) in (extra_tables or {}).items():
            con.execute(_temp_table_sql(name, columns, rows))
        lock_down(con, readable=target.readable())
        cursor = con.execute(sql)
        columns = [d[0] for d in cursor.description or []]
        return columns, cursor.fetchmany(max_rows)
    except Error as exc:
        raise QueryError(f"query failed: {str(exc).strip().splitlines()[0]}") from None
    finally:
        con.close()


def _temp_table_sql(name: str, columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    """A temp table holding small Python rows, typed from their values (no file access)."""
    kinds = {}
    for index, column in enumerate(columns):
        values = [row[index] for row in rows if row[index] is not None]
        kinds[column] = _SQL_TYPES.get(type(values[0]), "VARCHAR") if values else "VARCHAR"
    if not rows:
        cols = ", ".join(f"null::{kinds[c]} as {ident(c)}" for c in columns)
        return f"create temp table {ident(name)} as select {cols} where false"
    payload = json.dumps([dict(zip(columns, row, strict=True)) for row in rows], default=str)
    return (
        f"create temp table {ident(name)} as select unnest(from_json({literal(payload)}, "
        f"{literal(json.dumps([kinds]))}), recursive := true)"
    )


_SQL_TYPES = {int: "BIGINT", float: "DOUBLE", bool: "BOOLEAN", str: "VARCHAR"}


class ResultsDb:
    """The result-store port (``runner.core.ports.ResultStore``) over this module's functions,
    on a DuckDB file or on another Opener. A new store operation is a function above taking
    ``results_db`` and one method here passing ``self.target`` (through ``_write`` when it
    writes: a lake retries there on commit conflicts)."""

    def __init__(self, target: Path | Opener) -> None:
        self.target = target

    def _write(self, work: Callable[[], T]) -> T:
        return work()

    def ingest(
        self,
        *,
        table: str,
        result_file: Path,
        requests: Path,
        current: Path | None,
        output_schema: dict[str, Any] | None,
        price: Price | None,
        job: str,
        manifest: str,
        manifest_version: str,
        commit: str | None,
        paid: bool = True,
        on_schema_change: str = "add_columns",
    ) -> IngestSummary:
        return self._write(
            lambda: ingest(
                results_db=self.target,
                table=table,
                result_file=result_file,
                requests=requests,
                current=current,
                output_schema=output_schema,
                price=price,
                job=job,
                manifest=manifest,
                manifest_version=manifest_version,
                commit=commit,
                paid=paid,
                on_schema_change=on_schema_change,
            )
        )

    def show_current(self, *, table: str, current: Path) -> None:
        self._write(lambda: show_current(results_db=self.target, table=table, current=current))

    def run_query(
        self, sql: str, *, extra_tables: dict[str, Table] | None = None, max_rows: int = 10_000
    ) -> Table:
        return run_query(self.target, sql, extra_tables=extra_tables, max_rows=max_rows)

    def describe(self) -> list[str]:
        return []  # a file has nothing to add to `gbatch status`
