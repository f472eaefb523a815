"""Result lines in, typed tables out: the results database users query.

Per manifest table ``t``: ``t_history`` keeps every line ever ingested (idempotent per job),
``t`` shows one row per key of the current version, ``t_sources`` holds grounding sources.
Lines are parsed by DuckDB's JSON reader; a job is ingested in one transaction. An embedding
job (its request set carries EMBED_DIMENSIONS_COLUMN) gets the fixed-size vector column
``embedding FLOAT[N]`` instead of the answer's columns (``_parse_embeddings``). The file is
opened only for the length of one write, so read-only readers come and go between writes;
if another process holds it, StoreBusyError says so and the engine retries later.

The file is a projection of the state (gbatch#13): ``gbatch_owner`` records the one state
that writes it, ``gbatch_views`` the request set each view shows; ``inspect`` reads what is
there without a full scan, ``restore`` writes kept rows back, ``move_aside`` sets a file
DuckDB cannot open aside. No table is dropped before its rows are verified elsewhere.
Called by the engine (ingest, show_current; integrity for the rest) and the CLI (run_query).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
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
from runner.core import schema_types, tables
from runner.core.ports import Table
from runner.core.pricing import Price
from runner.core.records import IngestSummary, Owner
from runner.core.requests import EMBED_DIMENSIONS_COLUMN
from runner.errors import GbatchError, LockedError, StoreBusyError, StoreError

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


__all__ = ["IngestSummary", "Owner"]  # defined in the core: every result store uses them
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
        if c not in ("key", "request_hash", "request_bytes", "row_number", EMBED_DIMENSIONS_COLUMN)
        and not c.startswith("__media_")
    ]
    typed = schema_types.columns(output_schema) if output_schema else []
    cost = "null::double" if paid else "0::double"  # reused answers were paid for once
    if price is not None and paid:
        cost = price.cost_sql("u")  # the one cost definition, rendered as SQL
    stamps = _stamps(job=job, manifest=manifest, manifest_version=manifest_version, commit=commit)
    if EMBED_DIMENSIONS_COLUMN in _columns(con, "req"):
        _parse_embeddings(con, requests=requests, source_cols=source_cols, cost=cost, stamps=stamps)
        return
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
               u.totalTokenCount total_tokens, {cost} cost_usd, model_version, {stamps}
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


def _stamps(*, job: str, manifest: str, manifest_version: str, commit: str | None) -> str:
    """The bookkeeping columns every parsed line carries: who asked, in which job, when."""
    return (
        f"{literal(job)} job, {literal(manifest)} manifest, "
        f"{literal(manifest_version)} manifest_version, "
        f'{literal(commit) if commit else "null"}::varchar "commit", request_hash, '
        "now()::timestamp ingested_at"
    )


# -- embeddings (task: embed) ----------------------------------------------------------------
# The parts of an EmbedContentResponse the columns come from. A batch line carries the
# vector and ``tokenCount`` (int64, as a string: Cookbook Batch_mode.ipynb cell 48); newer
# responses may carry ``usageMetadata`` instead.
EMBED_RESPONSE = json.dumps(
    {
        "embedding": {"values": ["DOUBLE"]},
        "tokenCount": "VARCHAR",
        "usageMetadata": {"promptTokenCount": "BIGINT"},
    }
)
# An embedding's tokens are its prompt (billed as input by pricing.TERMS; nothing else is
# billed): the usage block the one cost definition reads, with every other count absent.
EMBED_USAGE = ("promptTokenCount", "totalTokenCount")


def _parse_embeddings(
    con: Connection, *, requests: Path, source_cols: list[str], cost: str, stamps: str
) -> None:
    """``parsed`` for an embedding job: the vector as ``embedding FLOAT[N]`` (N from the
    request set), ``text`` the text that was embedded, ``response`` without the vector (it is
    in ``embedding``), tokens and cost from ``tokenCount``; the bookkeeping columns as for
    generation. A vector of another size than N fails its line, saying so."""
    found = con.execute(f"select max({ident(EMBED_DIMENSIONS_COLUMN)}) from req").fetchone()
    size = int(found[0]) if found and found[0] else 0
    usage = ", ".join(
        f"{name} := " + ("tokens" if name in EMBED_USAGE else "null::bigint")
        for name in json.loads(RESPONSE)["usageMetadata"]
    )
    con.execute(
        f"""
        create temp view embedded as
        select key, array_to_string(json_extract_string(request, '$.content.parts[*].text'),
                                    chr(10)) as text
        from read_parquet({literal(str(requests))})
        """
    )
    con.execute(
        f"""
        create temp view embed_base as
        select l.key, l.error, l.response, r.key is not null as known, r.request_hash, e.text,
               struct_extract(l.p.embedding, 'values') as vals,
               coalesce(try_cast(l.p.tokenCount as bigint),
                        l.p.usageMetadata.promptTokenCount) as tokens
               {"".join(f", r.{ident(c)}" for c in source_cols)}
        from (select *, from_json(response, {literal(EMBED_RESPONSE)}) p from once) l
        left join req r using (key)
        left join embedded e using (key)
        """
    )
    con.execute(
        f"""
        create temp view parsed as
        select key, status, text,
               case when response is not null then
                   json_merge_patch(response, '{{"embedding": {{"values": null}}}}') end response,
               error_json as error, null::varchar finish_reason,
               tokens prompt_tokens, null::bigint cached_tokens, null::bigint output_tokens,
               null::bigint thoughts_tokens, tokens total_tokens, {cost} cost_usd,
               null::varchar model_version, {stamps}
               {"".join(f", {ident(c)}" for c in source_cols)},
               (case when status = 'succeeded' then vals end)::FLOAT[{size}] as embedding
        from (
            select *, struct_pack({usage}) u,
                case
                    when not known then 'failed'
                    when error is not null or response is null then 'failed'
                    when vals is null or len(vals) != {size} then 'failed'
                    else 'succeeded'
                end as status,
                case
                    when not known then '{{"message": "key not among the job''s requests"}}'::json
                    when error is not null then error
                    when response is null then '{{"message": "no response"}}'::json
                    when vals is null then '{{"message": "the response has no embedding"}}'::json
                    when len(vals) != {size} then json_object('message', 'the embedding has '
                        || len(vals) || ' values, not the ' || {size} || ' of its column')
                end as error_json
            from embed_base
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
    history, sources = tables.history(table), tables.sources(table)
    if _kind(con, history) is None:
        return
    have = _types(con, ident(history))
    if all(have.get(name, kind) == kind for name, kind in _types(con, like).items()):
        return
    if _kind(con, table) == "VIEW":
        con.execute(
            f"create table {ident(tables.retired(table, stamp))} as select * from {ident(table)}"
        )
        con.execute(f"drop view {ident(table)}")
        con.execute(f"drop table {_pointer(table)}")
    elif _kind(con, table) is not None:
        _move_aside(con, table, stamp)
    for name in (history, sources):
        if _kind(con, name) is not None:
            _move_aside(con, name, stamp)


def _move_aside(con: Connection, name: str, stamp: str) -> None:
    what = "view" if _kind(con, name) == "VIEW" else "table"
    con.execute(f"alter {what} {ident(name)} rename to {ident(tables.retired(name, stamp))}")


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S")


def _pointer(table: str) -> str:
    """The table naming the current row of each key, as (key, job) of ``table``'s history.

    In ``main`` beside the others, unqualified: a schema of its own could clash with the
    database's own name (``gbatch.duckdb`` is the catalog ``gbatch``), and the view must
    still resolve when a reader attaches the file under another name.
    """
    return ident(tables.pointer(table))


def _ensure_pointer(con: Connection, table: str) -> None:
    """The pointer table exists; a current table from before pointers becomes one.

    Such a table's rows were written to history in the same transaction, so only its
    (key, job) pairs need keeping, and it is dropped, but only once every one of its rows is
    verified to be in history: a table that is not what it seems (another manifest's table
    under this name, a user's own) is moved aside as ``<name>_until_<stamp>`` instead.
    """
    pointer = tables.pointer(table)
    if _kind(con, pointer) is not None and _columns(con, ident(pointer)) != ["key", "job"]:
        _move_aside(con, pointer, _stamp())  # not a pointer table: never replace it
    con.execute(f"create table if not exists {_pointer(table)} (key varchar, job varchar)")
    if _kind(con, table) != "BASE TABLE":
        return
    history = tables.history(table)
    columns = set(_columns(con, ident(table)))
    if {"key", "job"} <= columns and _kind(con, history) == "BASE TABLE":
        unmatched = con.execute(
            f"select count(*) from {ident(table)} t anti join {ident(history)} h using (key, job)"
        ).fetchone()
        if unmatched is not None and unmatched[0] == 0:
            con.execute(f"insert into {_pointer(table)} select key, job from {ident(table)}")
            con.execute(f"drop table {ident(table)}")
            return
    _move_aside(con, table, _stamp())


def _show_pointed(con: Connection, table: str) -> None:
    """``table`` as the view of the history rows its pointer names (re-made after each
    change, so it always carries history's columns and their types)."""
    con.execute(
        f"create or replace view {ident(table)} as select h.* from "
        f"{ident(tables.history(table))} h semi join {_pointer(table)} p using (key, job)"
    )


def _repoint(con: Connection, table: str, current: Path | None) -> None:
    """Point ``table`` at the newest answer of each (key, hash) of ``current`` (the
    manifest's current request set; without one, of every key), and record which set."""
    _ensure_pointer(con, table)
    chosen = (
        f"semi join read_parquet({literal(str(current))}) c using (key, request_hash)"
        if current is not None
        else "where request_hash is not null"
    )
    con.execute(
        f"""
        create or replace table {_pointer(table)} as
        select key, job from (
            select key, job, row_number() over (partition by key order by ingested_at desc,
                status = 'succeeded' desc) newest
            from {ident(tables.history(table))} h {chosen}
        ) where newest = 1
        """
    )
    _show_pointed(con, table)
    _record_view(con, table, current)


# Which request set each current view was last pointed at (by file name: a set's name is its
# digest), so a view left on an older set (the file was busy when the set changed) is seen.
VIEWS = "gbatch_views"


def _record_view(con: Connection, table: str, current: Path | None) -> None:
    con.execute(f"create table if not exists {VIEWS} (table_name varchar, request_set varchar)")
    con.execute(f"delete from {VIEWS} where table_name = ?", [table])
    con.execute(f"insert into {VIEWS} values (?, ?)", [table, current.name if current else None])


def _shown(con: Connection, table: str) -> str | None:
    if _kind(con, VIEWS) is None:
        return None
    row = con.execute(f"select request_set from {VIEWS} where table_name = ?", [table]).fetchone()
    return str(row[0]) if row and row[0] is not None else None


# The state that writes this file (gbatch#13): one results file, one owner.
OWNER = "gbatch_owner"


def _claim(
    con: Connection, results_db: Path | Opener, owner: Owner | None, *, take: bool = False
) -> None:
    """Record ``owner`` as the file's writer when none is; LockedError when another is
    (``take``: replace it, the explicit act for a state that is gone for good)."""
    if owner is None:
        return
    con.execute(
        f"create table if not exists {OWNER} (state_id varchar, state_dir varchar, "
        "claimed_at timestamp)"
    )
    found = con.execute(f"select state_id, state_dir from {OWNER} limit 1").fetchone()
    if found is not None and found[0] == owner.id:
        return
    if found is not None and not take:
        raise LockedError(not_owner(results_db, owner, Owner(str(found[0]), str(found[1]))))
    con.execute(f"delete from {OWNER}")
    con.execute(f"insert into {OWNER} values (?, ?, now()::timestamp)", [owner.id, owner.state_dir])


def not_owner(results_db: Path | Opener, owner: Owner, holder: Owner) -> str:
    return (
        f"{results_db} is written by the gbatch state in {holder.state_dir} "
        f"(id {holder.id[:8]}), not by this one ({owner.state_dir}): two states writing one "
        "results file would each submit the same requests and pay twice. Give this state its "
        "own results file (GBATCH_DB=...), or use that state (GBATCH_STATE_DIR="
        f"{holder.state_dir}); if that state is gone for good, `gbatch rebuild --claim` makes "
        "this one the writer"
    )


def claim(
    results_db: Path | Opener, owner: Owner, *, take: bool = False, wait_s: float = 0.0
) -> None:
    """Make ``owner`` the writer of the results file (creating it); LockedError if another
    state is (unless ``take``)."""
    con = _target(results_db).connect(read_only=False, wait_s=wait_s)
    try:
        con.execute("begin transaction")
        _claim(con, results_db, owner, take=take)
        con.execute("commit")
    except Error as exc:
        raise StoreError(f"claiming {results_db}: {exc}") from exc
    finally:
        con.close()


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
    keep: Path | None = None,
    owner: Owner | None = None,
    ingested_at: str | None = None,
) -> IngestSummary:
    """One job's result lines into ``table``'s history, and its current rows, atomically.

    History is written once; ``table`` is a view over it that shows the rows the pointer
    table names, so making a row current writes only its (key, job).
    ``on_schema_change``: ``add_columns`` widens a column whose type changed to text;
    ``new_table`` renames the old tables to ``<name>_until_<time>`` and starts new ones.
    ``keep``: write the job's history rows there too (Parquet), so the table can be rebuilt
    from the state alone (``restore``). ``owner``: refuse a file another state writes.
    ``ingested_at``: the time to record (a rebuild keeps the original order), else now.
    A view left on an older request set than ``current`` is re-pointed in the same step.
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
        if ingested_at is not None:
            con.execute("alter view parsed rename to parsed_now")
            con.execute(
                "create temp view parsed as select * replace "
                f"({literal(ingested_at)}::timestamptz::timestamp as ingested_at) from parsed_now"
            )
        history = tables.history(table)
        this_job = f"(select * from {ident(history)} where job = {literal(job)})"
        con.execute("begin transaction")
        _claim(con, results_db, owner)
        if on_schema_change == "new_table" or _vector_resized(con, table, "parsed"):
            _retire_if_changed(con, table, "parsed", _stamp())
        _ensure_table(con, history, "parsed", zstd=ZSTD_COLUMNS)
        _ensure_pointer(con, table)
        _insert_history(con, history, job)
        # the job's rows of the current version; probing the set with the job's rows keeps
        # the hash table at the job's size, not the set's (1M rows: ~100 MB)
        fresh = (
            f"select c.key from read_parquet({literal(str(current))}) c "
            f"semi join {this_job} p using (key, request_hash)"
            if current is not None
            else f"select p.key from {this_job} p where p.request_hash is not null"
        )
        con.execute(f"create temp table fresh as {fresh}")
        con.execute(f"delete from {_pointer(table)} where key in (select key from fresh)")
        con.execute(f"insert into {_pointer(table)} select key, {literal(job)} from fresh")
        if current is not None and _shown(con, table) != current.name:
            _repoint(con, table, current)  # the view missed a version change: catch it up
        else:
            _show_pointed(con, table)
        _write_sources(con, tables.sources(table), job, this_job)
        crashpoints.reached("ingest_mid_transaction")
        con.execute("commit")
        if keep is not None:
            _copy_out(con, f"select * from {this_job}", keep)
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
        create or replace temp table grounding as
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


def show_current(
    *, results_db: Path | Opener, table: str, current: Path, owner: Owner | None = None
) -> None:
    """Point ``table`` at the newest answer of each (key, hash) of the current version."""
    target = _target(results_db)
    if not target.exists():
        return
    con = target.connect(read_only=False)
    try:
        if _kind(con, tables.history(table)) is None:
            return
        con.execute("begin transaction")
        _claim(con, results_db, owner)
        _repoint(con, table, current)
        con.execute("commit")
    except Error as exc:
        raise StoreError(f"refreshing {table} in {results_db}: {exc}") from exc
    finally:
        con.close()


def _copy_out(con: Connection, select: str, out: Path) -> None:
    """``select``'s rows to a Parquet file, whole or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    # zstd level 1: as small as the default level within a few percent, at 2x its speed
    options = "format parquet, compression zstd, compression_level 1"
    con.execute(f"copy ({select}) to {literal(str(partial))} ({options})")
    os.replace(partial, out)


# -- the results file as a projection of the state (gbatch#13) -------------------------------


@dataclass(frozen=True)
class TableState:
    """What one manifest table looks like in the results file (no full scan to learn it)."""

    rows: dict[str, int]  # history rows per job, tables moved aside included
    moved_aside: frozenset[str]  # jobs whose rows are in a moved-aside history table
    view: bool  # the table is the current view, and its pointer table exists
    shown: str | None  # the request set (file name) the view was last pointed at


@dataclass(frozen=True)
class Inspection:
    exists: bool
    owner: Owner | None
    tables: dict[str, TableState]


class CorruptResultsError(StoreError):
    """DuckDB cannot open the results file (not a database, truncated, bad checksum)."""


# How DuckDB words damage it meets after the file opened (a block it cannot read back).
CORRUPT_SIGNS = ("corrupt", "checksum", "could not read enough bytes")


def inspect(results_db: Path, names: Sequence[str], *, wait_s: float = 0.0) -> Inspection:
    """The owner and the state of these tables, read-only (readers are not disturbed).

    StoreBusyError when a writer holds the file (after ``wait_s``); CorruptResultsError when
    DuckDB cannot read it; a missing file is an empty inspection.
    """
    if not results_db.exists():
        return Inspection(exists=False, owner=None, tables={})
    if not os.access(results_db, os.R_OK):
        raise StoreError(f"{results_db}: not readable")
    try:
        con = open_file(results_db, read_only=True, wait_s=wait_s)
    except StoreBusyError:
        raise
    except StoreError as exc:
        raise CorruptResultsError(str(exc.__cause__ or exc).strip().splitlines()[0]) from exc
    try:
        return _inspect(con, names)
    except Error as exc:
        reason = str(exc).strip().splitlines()[0]
        if any(sign in reason.lower() for sign in CORRUPT_SIGNS):
            raise CorruptResultsError(reason) from exc
        raise StoreError(f"inspecting {results_db}: {reason}") from exc
    finally:
        con.close()


def _inspect(con: Connection, names: Sequence[str]) -> Inspection:
    kinds = dict(
        con.execute(
            "select table_name, table_type from information_schema.tables "
            "where table_schema = 'main' and table_catalog = current_database()"
        ).fetchall()
    )
    owner = None
    if OWNER in kinds:
        found = con.execute(f"select state_id, state_dir from {OWNER} limit 1").fetchone()
        owner = Owner(str(found[0]), str(found[1])) if found else None
    shown: dict[str, str | None] = {}
    if VIEWS in kinds:
        shown = {str(t): s for t, s in con.execute(f"select * from {VIEWS}").fetchall()}
    parts = []
    for name in names:
        history = tables.history(name)
        for physical in kinds:
            if physical == history or physical.startswith(tables.retired(history, "")):
                parts.append(
                    f"select {literal(name)} t, {literal(physical)} p, job, count(*) n "
                    f"from {ident(physical)} group by job"
                )
    counts: dict[str, dict[str, int]] = {name: {} for name in names}
    aside: dict[str, set[str]] = {name: set() for name in names}
    if parts:
        for name, physical, job, n in con.execute(" union all ".join(parts)).fetchall():
            counts[name][str(job)] = counts[name].get(str(job), 0) + int(n)
            if physical != tables.history(name):
                aside[name].add(str(job))
    return Inspection(
        exists=True,
        owner=owner,
        tables={
            name: TableState(
                rows=counts[name],
                moved_aside=frozenset(aside[name]),
                view=kinds.get(name) == "VIEW" and tables.pointer(name) in kinds,
                shown=shown.get(name),
            )
            for name in names
            if tables.history(name) in kinds or counts[name]
        },
    )


def move_aside(results_db: Path) -> Path:
    """Rename a results file DuckDB cannot open (and its WAL) to ``<name>.corrupt-<UTC time>``:
    never deleted, so whatever it still holds can be looked at."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = results_db.with_name(f"{results_db.name}.corrupt-{stamp}")
    wal = results_db.with_name(results_db.name + ".wal")
    os.replace(results_db, aside)
    if wal.exists():
        os.replace(wal, aside.with_name(aside.name + ".wal"))
    return aside


def keep_rows(results_db: Path, table: str, jobs: Sequence[tuple[str, Path]]) -> dict[str, int]:
    """Copy each job's history rows (label, destination) out of the results file; rows
    written per job. A job whose rows are in a moved-aside history table is copied from it."""
    con = open_file(results_db, read_only=True)
    try:
        history = tables.history(table)
        physical = [
            str(r[0])
            for r in con.execute(
                "select table_name from information_schema.tables where table_schema = 'main' "
                "and table_catalog = current_database() and (table_name = ? or "
                "starts_with(table_name, ?)) order by table_name = ? desc, table_name",
                [history, tables.retired(history, ""), history],
            ).fetchall()
        ]
        where: dict[str, str] = {}
        for name in physical:  # one table per job: their columns' types may differ
            for (job,) in con.execute(f"select distinct job from {ident(name)}").fetchall():
                where.setdefault(str(job), name)
        written = {}
        for label, out in jobs:
            if label not in where:
                continue
            _copy_out(con, f"select * from {ident(where[label])} where job = {literal(label)}", out)
            found = con.execute(
                f"select count(*) from read_parquet({literal(str(out))})"
            ).fetchone()
            written[label] = int(found[0]) if found else 0
        return written
    except Error as exc:
        raise StoreError(f"keeping the rows of {table} from {results_db}: {exc}") from exc
    finally:
        con.close()


def kept_count(path: Path) -> int:
    """Rows in a kept-rows file (from its footer: no data is read)."""
    con = memory()
    try:
        row = con.execute(
            f"select coalesce(sum(num_rows), 0) from parquet_file_metadata({literal(str(path))})"
        ).fetchone()
    except Error as exc:
        raise StoreError(f"{path}: {exc}") from exc
    finally:
        con.close()
    return int(row[0]) if row else 0


def restore(
    *,
    results_db: Path,
    table: str,
    kept: Sequence[tuple[str, Path]],
    current: Path | None,
    owner: Owner | None,
) -> int:
    """Write kept jobs' rows (label, file; in ingest order) back into ``table``'s history,
    with their sources, then re-point the current view; one transaction. A job's earlier
    rows in history are replaced, so a restore can be repeated. Returns the rows written."""
    con = open_file(results_db, read_only=False)
    history, written = tables.history(table), 0
    try:
        con.execute("begin transaction")
        _claim(con, results_db, owner)
        for label, path in kept:
            con.execute(
                f"create or replace temp view kept as select * from read_parquet("
                f"{literal(str(path))})"
            )
            _sized_vectors(con, history, current, path)
            if _vector_resized(con, table, "kept"):
                _retire_if_changed(con, table, "kept", _stamp())
            _ensure_table(con, history, "kept", zstd=ZSTD_COLUMNS)
            con.execute(f"delete from {ident(history)} where job = ?", [label])
            con.execute(f"insert into {ident(history)} by name select * from kept")
            this_job = f"(select * from {ident(history)} where job = {literal(label)})"
            _write_sources(con, tables.sources(table), label, this_job)
            found = con.execute("select count(*) from kept").fetchone()
            written += int(found[0]) if found else 0
        if _kind(con, history) is not None:
            _repoint(con, table, current if current is not None and current.exists() else None)
        con.execute("commit")
    except Error as exc:
        raise StoreError(f"rebuilding {table} in {results_db}: {exc}") from exc
    finally:
        con.close()
    return written


def _vector_size(con: Connection, relation: str) -> int | None:
    """N of a FLOAT[N] ``embedding`` column of ``relation`` (a table, view or subquery)."""
    found = re.fullmatch(r"FLOAT\[(\d+)\]", _types(con, relation).get("embedding", ""))
    return int(found.group(1)) if found else None


def _vector_resized(con: Connection, table: str, like: str) -> bool:
    """Whether ``like``'s vectors have another size than those in ``table``'s history: then
    the old tables are moved aside (``_retire_if_changed``), whatever on_schema_change says,
    since vectors of two sizes neither compare nor share a FLOAT[N] column."""
    history = tables.history(table)
    if _kind(con, history) is None:
        return False
    new, old = _vector_size(con, like), _vector_size(con, ident(history))
    return new is not None and old is not None and new != old


def _sized_vectors(con: Connection, history: str, current: Path | None, path: Path) -> None:
    """Give the ``kept`` view's vectors their FLOAT[N] back (Parquet keeps them as FLOAT[]):
    N of the file's own vectors, else of history's column, else of the current request set
    (a job whose lines all failed has no vector to tell)."""
    if _types(con, "kept").get("embedding") != "FLOAT[]":
        return
    row = con.execute("select max(len(embedding)) from kept").fetchone()
    size = int(row[0]) if row and row[0] else None
    if size is None and _kind(con, history) is not None:
        size = _vector_size(con, ident(history))
    if size is None and current is not None and current.exists():
        relation = f"read_parquet({literal(str(current))})"
        if EMBED_DIMENSIONS_COLUMN in _types(con, f"(select * from {relation})"):
            found = con.execute(
                f"select max({ident(EMBED_DIMENSIONS_COLUMN)}) from {relation}"
            ).fetchone()
            size = int(found[0]) if found and found[0] else None
    if size is not None:
        con.execute(
            "create or replace temp view kept as select * replace "
            f"(embedding::FLOAT[{size}] as embedding) from read_parquet({literal(str(path))})"
        )


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
    if not target.exists():  # a typo'd GBATCH_DB must not look like an empty database
        raise StoreError(
            f"no results database at {results_db} (GBATCH_DB): check the path; gbatch creates "
            "it on the first apply"
        )
    con = target.connect(read_only=True, wait_s=10)
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
    writes: a lake retries there on commit conflicts). The file's integrity checks
    (``inspect``, ``keep_rows``, ``restore``, ``move_aside``) stay functions of the file
    (``file``), called by ``runner.engine.integrity``."""

    def __init__(self, target: Path | Opener) -> None:
        self.target = target

    @property
    def file(self) -> Path | None:
        """The DuckDB file the integrity checks read and repair (None: not a file)."""
        return self.target if isinstance(self.target, Path) else None

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
        keep: Path | None = None,
        owner: Owner | None = None,
        ingested_at: str | None = None,
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
                keep=keep,
                owner=owner,
                ingested_at=ingested_at,
            )
        )

    def show_current(self, *, table: str, current: Path, owner: Owner | None = None) -> None:
        self._write(
            lambda: show_current(results_db=self.target, table=table, current=current, owner=owner)
        )

    def claim(self, owner: Owner, *, take: bool = False, wait_s: float = 0.0) -> None:
        self._write(lambda: claim(self.target, owner, take=take, wait_s=wait_s))

    def run_query(
        self, sql: str, *, extra_tables: dict[str, Table] | None = None, max_rows: int = 10_000
    ) -> Table:
        return run_query(self.target, sql, extra_tables=extra_tables, max_rows=max_rows)

    def describe(self) -> list[str]:
        return []  # a file has nothing to add to `gbatch status`
