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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from runner.core.pricing import Price
from runner.errors import GbatchError, StoreError

OK_FINISH = ("STOP", "MAX_TOKENS")
USAGE = (
    '{"promptTokenCount": "BIGINT", "cachedContentTokenCount": "BIGINT", '
    '"candidatesTokenCount": "BIGINT", "thoughtsTokenCount": "BIGINT", '
    '"toolUsePromptTokenCount": "BIGINT", "totalTokenCount": "BIGINT"}'
)
PARTS = '[{"text": "VARCHAR", "thought": "BOOLEAN"}]'
GROUNDING = (
    '{"webSearchQueries": ["VARCHAR"], "groundingChunks": [{"web": {"uri": "VARCHAR", '
    '"title": "VARCHAR"}}], "groundingSupports": [{"segment": {"startIndex": "BIGINT", '
    '"endIndex": "BIGINT", "text": "VARCHAR"}, "groundingChunkIndices": ["BIGINT"]}]}'
)


class QueryError(GbatchError):
    """The user's SQL was refused or failed."""


@dataclass(frozen=True)
class IngestSummary:
    rows: int
    succeeded: int
    failed: int
    missing_keys: int
    unknown_keys: int
    cost_usd: float
    prompt_tokens: int
    output_tokens: int


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
    """Temp table ``parsed``: one row per result line, statuses decided, columns typed."""
    con.execute(
        f"""
        create temp table lines as
        select key, any_value(response) response, any_value(error) error
        from read_json({literal(str(result_file))}, format = 'newline_delimited',
                       columns = {{'key': 'VARCHAR', 'response': 'JSON', 'error': 'JSON'}},
                       ignore_errors = true)
        where key is not null
        group by key
        """
    )
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
        cost = (
            "((greatest(coalesce(u.promptTokenCount, 0)"
            " - coalesce(u.cachedContentTokenCount, 0), 0)"
            f" + coalesce(u.toolUsePromptTokenCount, 0)) * {price.input}"
            f" + coalesce(u.cachedContentTokenCount, 0) * {price.cached_input}"
            f" + (coalesce(u.candidatesTokenCount, 0) + coalesce(u.thoughtsTokenCount, 0))"
            f" * {price.output}) / 1e6"
        )
    con.execute(
        f"""
        create temp view base as
        select l.key, l.error, l.response, r.key is not null as known, r.request_hash,
               from_json(json_extract(l.response, '$.usageMetadata'), '{USAGE}') as u,
               json_extract_string(l.response, '$.candidates[0].finishReason') finish_reason,
               json_extract_string(l.response, '$.modelVersion') model_version,
               list_aggr(list_transform(list_filter(
                   from_json(json_extract(l.response, '$.candidates[0].content.parts'),
                             '{PARTS}'),
                   lambda p: not coalesce(p.thought, false)), lambda p: p.text),
                   'string_agg', '') text
               {"".join(f", r.{ident(c)}" for c in source_cols)}
        from lines l left join req r using (key)
        """
    )
    answer = ""
    schema_check = "null"
    if output_schema is not None:
        structure = literal(schema_types.structure_json(output_schema))
        answer = f", case when json_valid(text) then from_json(text, {structure}) end as answer"
        missing = [f"answer.{ident(n)} is null" for n in schema_types.required(output_schema)]
        schema_check = (
            "case when not coalesce(json_valid(text), false) then "
            "'answer is not valid JSON for output_schema' "
            + (
                f"when {' or '.join(missing)} then 'answer lacks a required output_schema "
                "property or has the wrong type' "
                if missing
                else ""
            )
            + "end"
        )
    con.execute(f"create temp view shaped as select *{answer} from base")
    con.execute(
        f"""
        create temp table parsed as
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
                    when text is null then 'failed'
                    when {schema_check} is not null then 'failed'
                    else 'succeeded'
                end as status,
                case
                    when not known then '{{"message": "key not among the job''s requests"}}'::json
                    when error is not null then error
                    when response is null then '{{"message": "no response"}}'::json
                    when finish_reason is not null and finish_reason not in {OK_FINISH}
                        then json_object('message', 'finished with ' || finish_reason)
                    when text is null then '{{"message": "the answer has no text"}}'::json
                    when {schema_check} is not null then json_object('message', {schema_check})
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


def _exists(con: Connection, table: str) -> bool:
    found = con.execute(
        "select count(*) from information_schema.tables where table_name = ? "
        "and table_schema = 'main'",
        [table],
    ).fetchone()
    return bool(found and found[0])


def _ensure_table(con: Connection, table: str, like: str) -> None:
    """Create ``table`` shaped like ``like``; add columns it lacks, widen changed ones to text.

    Never drops: a column whose type changed becomes VARCHAR, which holds both versions'
    values (callers that want a fresh table call ``_retire_if_changed`` first).
    """
    if not _exists(con, table):
        con.execute(f"create table {ident(table)} as select * from {like} where false")
        return
    have = _types(con, ident(table))
    for name, kind in _types(con, like).items():
        if name not in have:
            con.execute(f"alter table {ident(table)} add column {ident(name)} {kind}")
        elif have[name] != kind and have[name] != "VARCHAR":
            con.execute(f"alter table {ident(table)} alter column {ident(name)} type VARCHAR")


def _retire_if_changed(con: Connection, tables: list[str], like: str, stamp: str) -> list[str]:
    """Rename ``tables`` to ``<name>_until_<stamp>`` when a column of ``like`` changed type."""
    first = tables[0]
    if not _exists(con, first):
        return []
    have = _types(con, ident(first))
    changed = [name for name, kind in _types(con, like).items() if have.get(name, kind) != kind]
    if not changed:
        return []
    for table in tables:
        if _exists(con, table):
            con.execute(f"alter table {ident(table)} rename to {ident(f'{table}_until_{stamp}')}")
    return changed


def ingest(
    *,
    results_db: Path,
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
    """One job's result lines into ``table`` (current rows) and its history, atomically.

    ``on_schema_change``: ``add_columns`` widens a column whose type changed to text;
    ``new_table`` renames the old tables to ``<name>_until_<time>`` and starts new ones.
    """
    con = open_file(results_db, read_only=False)
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
        history, sources = f"{table}_history", f"{table}_sources"
        con.execute("begin transaction")
        if on_schema_change == "new_table":
            stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
            _retire_if_changed(con, [history, table, sources], "parsed", stamp)
        _ensure_table(con, history, "parsed")
        _ensure_table(con, table, "parsed")
        con.execute(f"delete from {ident(history)} where job = ?", [job])
        con.execute(f"insert into {ident(history)} by name select * from parsed")
        current_filter = (
            f"semi join read_parquet({literal(str(current))}) c using (key, request_hash)"
            if current is not None
            else "where p.request_hash is not null"
        )
        con.execute(f"create temp table fresh as select p.* from parsed p {current_filter}")
        con.execute(f"delete from {ident(table)} where key in (select key from fresh)")
        con.execute(f"insert into {ident(table)} by name select * from fresh")
        _write_sources(con, sources, job)
        crashpoints.reached("ingest_mid_transaction")
        con.execute("commit")
        row = con.execute(
            "select count(*), count(*) filter (status = 'succeeded'), "
            "count(*) filter (status = 'failed'), count(*) filter (request_hash is null), "
            "coalesce(sum(cost_usd), 0), coalesce(sum(prompt_tokens), 0), "
            "coalesce(sum(output_tokens), 0) from parsed"
        ).fetchone()
        missing = con.execute("select count(*) from req anti join lines using (key)").fetchone()
    except Error as exc:
        raise StoreError(f"ingest of {job} into {results_db}: {exc}") from exc
    finally:
        con.close()
    assert row is not None and missing is not None
    return IngestSummary(
        rows=int(row[0]),
        succeeded=int(row[1]),
        failed=int(row[2]),
        missing_keys=int(missing[0]),
        unknown_keys=int(row[3]),
        cost_usd=float(row[4]),
        prompt_tokens=int(row[5]),
        output_tokens=int(row[6]),
    )


def _write_sources(con: Connection, table: str, job: str) -> None:
    """Grounding sources: one row per (key, supported segment, chunk), or per chunk."""
    con.execute(
        f"""
        create temp table grounding as
        with g as (
            select key, from_json(json_extract(response, '$.candidates[0].groundingMetadata'),
                                  '{GROUNDING}') m
            from parsed where json_extract(response, '$.candidates[0].groundingMetadata')
                is not null
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
    exists = con.execute(
        "select count(*) from information_schema.tables where table_name = ?", [table]
    ).fetchone()
    if (count and count[0]) or (exists and exists[0]):
        _ensure_table(con, table, "grounding")
        con.execute(f"delete from {ident(table)} where job = ?", [job])
        con.execute(f"insert into {ident(table)} by name select * from grounding")


def show_current(*, results_db: Path, table: str, current: Path) -> None:
    """Make ``table`` hold the newest answer of each (key, hash) of the current version."""
    if not results_db.exists():
        return
    con = open_file(results_db, read_only=False)
    try:
        history = f"{table}_history"
        exists = con.execute(
            "select count(*) from information_schema.tables where table_name = ?", [history]
        ).fetchone()
        if not exists or not exists[0]:
            return
        con.execute("begin transaction")
        con.execute(
            f"""
            create or replace table {ident(table)} as
            select * exclude (newest) from (
                select h.*, row_number() over (partition by key order by ingested_at desc,
                    status = 'succeeded' desc) newest
                from {ident(history)} h
                semi join read_parquet({literal(str(current))}) c using (key, request_hash)
            ) where newest = 1
            """
        )
        con.execute("commit")
    except Error as exc:
        raise StoreError(f"refreshing {table} in {results_db}: {exc}") from exc
    finally:
        con.close()


def run_query(
    results_db: Path,
    sql: str,
    *,
    extra_tables: dict[str, tuple[list[str], list[tuple[Any, ...]]]] | None = None,
    max_rows: int = 10_000,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """A user's SELECT, read-only and locked down, with the bookkeeping tables beside it."""
    problem = single_select(sql)
    if problem:
        raise QueryError(problem)
    con = open_file(results_db, read_only=True, wait_s=10) if results_db.exists() else memory()
    try:
        for name, (columns, rows) in (extra_tables or {}).items():
            con.execute(_temp_table_sql(name, columns, rows))
        lock_down(con)
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
