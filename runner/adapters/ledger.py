"""The request ledger: which (key, request hash) pairs were answered, failed or are in flight.

Set work over Parquet files in the state directory, done by an in-memory DuckDB connection:
no database file is held, so planning never waits on the results database. Files:

- ``sets/<manifest>/<set digest>.parquet``  every request of a manifest version (data plane)
- ``jobs/<intent>.parquet``                 the rows one job carries (key, hash, source cols)
- ``ledger/<manifest>/<job id>.parquet``    outcome per row of a finished job
- ``answers/<job id>.parquet``              the answer store: response per request hash

Called by the engine's reconcile (diff, chunk) and follow (record_outcome) steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from runner.adapters.duck import Connection, literal, memory, path_list, shared_memory
from runner.core import failures, verdicts
from runner.core.atomic import replacing


@dataclass(frozen=True)
class RowDiff:
    """How a manifest version's requests relate to what was already paid for."""

    total: int
    unchanged: int
    in_flight: int
    reused: int  # answered before under another key or manifest: copied, not sent
    waiting: int  # in flight under another key or manifest: copied once it is answered
    new: int
    changed: int
    retry: int
    exhausted: int
    removed: int
    submit_requests: int
    submit_bytes: int
    submit_chars: int


@dataclass(frozen=True)
class Chunk:
    """One job's worth of requests, written to ``path``."""

    path: Path
    digest: str
    requests: int
    bytes: int


@dataclass(frozen=True)
class Outcome:
    succeeded: int
    failed: int
    missing: int


def _atomic_copy(con: Connection, select: str, out: Path, *, fmt: str = "parquet") -> None:
    with replacing(out) as partial:
        con.execute(f"copy ({select}) to {literal(str(partial))} (format {fmt})")


def diff(
    *,
    desired: Path,
    ledger_dir: Path,
    in_flight: list[Path],
    previous: Path | None,
    retries: int,
    out: Path,
    answers: list[Path] | None = None,
    elsewhere: list[Path] | None = None,
    reuse_out: Path | None = None,
) -> RowDiff:
    """Compare ``desired`` with the ledger; write the rows to submit (ordered by key) to ``out``.

    unchanged: answered before with the same hash; in_flight: carried by a live job; reused:
    the same request hash has an answer in the ``answers`` store (rows written to
    ``reuse_out``); waiting: the hash is carried by a live job in ``elsewhere``, or by another
    row of this set that is sent now (the smallest key of rows with one request); retry:
    failed before, retryable and under ``retries`` attempts; exhausted: failed too often or
    permanently; new / changed: never sent (changed when the key had another hash before).
    Without ``answers`` / ``elsewhere`` (a manifest that opts out) nothing is reused.
    """
    con = shared_memory()
    ledger_files = sorted(ledger_dir.glob("*.parquet")) if ledger_dir.is_dir() else []
    ledger_rows = (
        f"select key, request_hash, status, retryable from read_parquet({path_list(ledger_files)})"
        if ledger_files
        else "select ''::varchar as key, ''::varchar request_hash, ''::varchar status, "
        "false retryable where false"
    )
    flight = [p for p in in_flight if p.exists()]
    flight_rows = (
        f"select distinct key, request_hash from read_parquet({path_list(flight)})"
        if flight
        else "select ''::varchar as key, ''::varchar request_hash where false"
    )
    prev_select = (
        f"select key from read_parquet({literal(str(previous))})"
        if previous is not None and previous.exists()
        else "select ''::varchar as key where false"
    )
    # In stages, each holding little: the facts of every desired row against this manifest's
    # own ledger and flights (the hash kept only for rows not answered: the rest are counted,
    # never sent), then the answer store and the other jobs, read only for the hashes of rows
    # still open. One statement over materialised ledger, answer store and set held ~800 MB
    # at 1M rows (bench/apply_e2e.py); the answer store also grows with every manifest.
    con.execute(
        f"""
        create temp table d as
        select d.key, case when a.key is null then d.request_hash end as request_hash,
            d.request_bytes, length(d.request) request_chars,
            a.key is not null as answered, f.key is not null as in_flight,
            x.n as failures, coalesce(x.retryable, true) as retryable,
            false as known_key, false as stored, false as elsewhere, null::varchar as verdict
        from read_parquet({literal(str(desired))}) d
        left join (
            select distinct key, request_hash from ({ledger_rows}) where status = 'succeeded'
        ) a using (key, request_hash)
        left join ({flight_rows}) f using (key, request_hash)
        left join (
            select key, request_hash, count(*) n, bool_and(retryable) retryable
            from ({ledger_rows}) where status = 'failed' group by key, request_hash
        ) x using (key, request_hash)
        """
    )
    open_rows = "not answered and not in_flight"
    con.execute(
        f"""
        update d set known_key = true
        from (
            select distinct key from (
                select key from ({ledger_rows}) union all select key from ({prev_select})
            ) where key in (select key from d where {open_rows})
        ) k
        where d.key = k.key
        """
    )
    for column, files in (("stored", answers), ("elsewhere", elsewhere)):
        present = [p for p in files or [] if p.exists()]
        if not present:
            continue
        con.execute(
            f"""
            update d set {column} = true
            from (
                select distinct request_hash from read_parquet({path_list(present)})
                where request_hash in (select request_hash from d where {open_rows})
            ) h
            where d.request_hash = h.request_hash and {open_rows}
            """
        )
    con.execute(f"update d set verdict = {_verdict_case(retries)}")
    submit = f"verdict in ({', '.join(literal(v) for v in verdicts.SUBMIT)})"
    if answers is not None:  # one request for rows that would send the same one
        con.execute(
            f"""
            update d set verdict = 'waiting'
            from (
                select request_hash, min(key) as first from d where {submit}
                group by request_hash having count(*) > 1
            ) twin
            where d.request_hash = twin.request_hash and d.key != twin.first and {submit}
            """
        )
    counts = dict(con.execute("select verdict, count(*) from d group by verdict").fetchall())
    removed = con.execute(
        f"select count(*) from ({prev_select}) p anti join d using (key)"
    ).fetchone()
    totals = con.execute(
        f"select count(*), coalesce(sum(request_bytes), 0), coalesce(sum(request_chars), 0) "
        f"from d where {submit}"
    ).fetchone()
    assert totals is not None and removed is not None
    _atomic_copy(
        con,
        f"select key, request_hash, request_bytes from d where {submit} order by key",
        out,
    )
    if reuse_out is not None:
        _atomic_copy(
            con,
            "select key, request_hash, request_bytes from d where verdict = 'reused' order by key",
            reuse_out,
        )
    con.close()
    return RowDiff(
        total=sum(counts.values()),
        unchanged=counts.get("unchanged", 0),
        in_flight=counts.get("in_flight", 0),
        reused=counts.get("reused", 0),
        waiting=counts.get("waiting", 0),
        new=counts.get("new", 0),
        changed=counts.get("changed", 0),
        retry=counts.get("retry", 0),
        exhausted=counts.get("exhausted", 0),
        removed=int(removed[0]),
        submit_requests=int(totals[0]),
        submit_bytes=int(totals[1]),
        submit_chars=int(totals[2]),
    )


# Each rule of runner.core.verdicts as SQL over the facts of a row in ``diff``'s table d.
_SQL_RULES = {
    "unchanged": "answered",
    "in_flight": "in_flight",
    "reused": "stored",
    "waiting": "elsewhere",
    "exhausted": "failures is not null and (not retryable or failures > {retries})",
    "retry": "failures is not null",
    "changed": "known_key",
    "new": "true",
}


def _verdict_case(retries: int) -> str:
    """The CASE that judges a row: the core's rules, in the core's order."""
    assert tuple(_SQL_RULES) == verdicts.ORDER, "the SQL rules must follow runner.core.verdicts"
    whens = " ".join(
        f"when {_SQL_RULES[name].format(retries=int(retries))} then {literal(name)}"
        for name in verdicts.ORDER
    )
    return f"case {whens} end"


def chunk(
    *, desired: Path, to_submit: Path, max_requests: int, max_bytes: int, out_dir: Path
) -> list[Chunk]:
    """Split the rows to submit into jobs under both limits; one Parquet file per job.

    Each file holds the desired rows (request JSON and source columns), so a job can be
    written, resubmitted and ingested from it alone; its name is the digest of its
    (key, hash) pairs, so the same split is the same file. Rows in a file are in no
    particular order (keys name them).
    """
    con = memory(ordered=False)
    try:
        con.execute(
            f"""
            create temp table s as
            select key, greatest(
                    (row_number() over w - 1) // {int(max_requests)},
                    (sum(request_bytes + length(key) + 20) over w - 1) // {int(max_bytes)}
                ) as chunk
            from read_parquet({literal(str(to_submit))})
            window w as (order by key rows between unbounded preceding and current row)
            """
        )
        groups = con.execute(
            "select chunk, sha256(string_agg(key || chr(9) || request_hash, chr(10) "
            "order by key)), count(*), sum(request_bytes) from s join read_parquet("
            + literal(str(to_submit))
            + ") using (key) group by chunk order by chunk"
        ).fetchall()
        chunks = {
            int(number): Chunk(
                path=out_dir / f"{digest}.parquet",
                digest=str(digest),
                requests=int(requests),
                bytes=int(size),
            )
            for number, digest, requests, size in groups
        }
        missing = {n: c.path for n, c in chunks.items() if not c.path.exists()}
        if missing:
            _write_chunks(con, desired, missing)
    finally:
        con.close()
    return list(chunks.values())


def _write_chunks(con: Connection, desired: Path, paths: dict[int, Path]) -> None:
    """The desired rows of each chunk (temp table ``s``: key, chunk) to its file in ``paths``,
    in one pass over the set.

    One ``COPY ... PARTITION_BY`` reads the set once for all chunks (a pass per chunk read a
    1M-row set 20 times: ~6 s of CPU); small row groups bound what each open file buffers.
    Written under a scratch directory beside the files, then each renamed into place whole.
    """
    out_dir = next(iter(paths.values())).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="chunks-", dir=out_dir))
    try:
        wanted = ", ".join(str(n) for n in paths)
        # one thread and early flushes: the partitioned writer buffers per thread and per
        # open file beyond the memory limit (2 threads ran out at 250 MB, 1M rows)
        con.execute("set threads = 1")
        con.execute("set partitioned_write_flush_threshold = 2000")
        con.execute(
            f"""
            copy (
                select d.*, s.chunk as __chunk
                from read_parquet({literal(str(desired))}) d join s using (key)
                where s.chunk in ({wanted})
            ) to {literal(str(scratch))}
            (format parquet, partition_by (__chunk), row_group_size 10000,
             row_group_size_bytes '4MB')
            """
        )
        for number, path in paths.items():
            (written,) = (scratch / f"__chunk={number}").glob("*.parquet")
            os.replace(written, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def set_digest(path: Path) -> str:
    """A digest of a request set's (key, hash) pairs: equal sets, equal digests.

    sha256 of the lines ``key<TAB>hash`` in key order, joined by newlines. The pairs are
    sorted by DuckDB (which spills) and hashed as they stream out: one string of every pair
    (``string_agg``) held ~600 MB at 1M requests (bench/apply_e2e.py).
    """
    con = shared_memory()
    try:
        cursor = con.execute(
            f"select key || chr(9) || request_hash from read_parquet({literal(str(path))}) "
            "order by key"
        )
        digest, separator = hashlib.sha256(), ""
        while batch := cursor.fetchmany(DIGEST_BATCH):
            digest.update((separator + "\n".join(str(line) for (line,) in batch)).encode())
            separator = "\n"
    finally:
        con.close()
    return digest.hexdigest()


DIGEST_BATCH = 50_000


def ledger_digest(ledger_dir: Path) -> str:
    """A digest of a manifest's ledger files: their names, sizes and contents.

    A file lost, added or rewritten (even at the same size) gives another digest; the files
    are small (key, hash and outcome per row: ~3.5 MB per 50k rows), so reading them costs
    ~40 ms at 1M rows.
    """
    digest = hashlib.sha256()
    files = sorted(ledger_dir.glob("*.parquet")) if ledger_dir.is_dir() else []
    for path in files:
        with path.open("rb") as handle:
            content = hashlib.file_digest(handle, "sha256").hexdigest()
        digest.update(f"{path.name}\t{path.stat().st_size}\t{content}\n".encode())
    return digest.hexdigest()


# A result line's error code (gRPC or HTTP) and status string, as SQL over its ``error`` JSON.
_LINE_CODE = "try_cast(json_extract(error, '$.code') as integer)"
_LINE_STATUS = "json_extract_string(error, '$.status')"


def _retryable_sql(*, code: str, status: str) -> str:
    """``failures.classify(code=, status=).retryable`` as a SQL expression, from its tables.

    ``code`` and ``status`` are SQL expressions (NULL when absent); a NULL code is retryable.
    """

    def strings(values: frozenset[str]) -> str:
        return ", ".join(literal(v) for v in sorted(values))

    def ints(values: Iterable[int]) -> str:
        return ", ".join(str(v) for v in sorted(values))

    http = failures.PERMANENT_HTTP
    return f"""(case
        when {status} in ({strings(failures.PERMANENT_STATUSES)}) then false
        when {status} in ({strings(failures.TRANSIENT_STATUSES)}) then true
        when {code} is null then true
        when {code} < {failures.HTTP_MIN} then {code} not in ({ints(failures.PERMANENT_GRPC)})
        else not ({code} >= {http.start} and {code} < {http.stop}
                  and {code} not in ({ints(failures.TRANSIENT_HTTP_4XX)}))
    end)"""


def record_outcome(
    *, job_requests: Path, result_file: Path | None, job_error: str | None, out: Path
) -> Outcome:
    """Write the ledger rows of a finished job: one per requested key.

    Lines with a response are succeeded; an error line is failed (retryable unless
    ``failures.classify`` calls its code or status permanent); a requested key with no line
    (truncated file, failed or expired job) is failed and retryable.
    """
    con = shared_memory()
    if result_file is not None and result_file.exists() and result_file.stat().st_size > 0:
        lines = (
            f"select key::varchar as key, response is not null and error is null ok, "
            f"{_retryable_sql(code=_LINE_CODE, status=_LINE_STATUS)} retryable "
            f"from read_json({literal(str(result_file))}, format='newline_delimited', "
            "columns={'key': 'VARCHAR', 'response': 'JSON', 'error': 'JSON'}, ignore_errors=true)"
        )
    else:
        lines = "select ''::varchar as key, false ok, true retryable where false"
    reason = json.dumps(job_error) if job_error else None
    _atomic_copy(
        con,
        f"""
        select r.key, r.request_hash,
            case when bool_or(x.ok) then 'succeeded' else 'failed' end status,
            coalesce(bool_and(x.retryable), true) retryable,
            case when count(x.key) = 0 then {literal(reason or "no result line")}
                 else null end reason
        from read_parquet({literal(str(job_requests))}) r
        left join ({lines}) x on x.key = r.key
        group by r.key, r.request_hash
        """,
        out,
    )
    row = con.execute(
        "select count(*) filter (status = 'succeeded'), count(*) filter (status = 'failed'), "
        f"count(*) filter (reason is not null) from read_parquet({literal(str(out))})"
    ).fetchone()
    con.close()
    assert row is not None
    return Outcome(succeeded=int(row[0]), failed=int(row[1]), missing=int(row[2]))


def sample_requests(*, desired: Path, to_submit: Path, limit: int) -> list[str]:
    """Up to ``limit`` request JSON texts among the rows to submit (for countTokens)."""
    con = shared_memory()
    rows = con.execute(
        f"select d.request from read_parquet({literal(str(desired))}) d "
        f"semi join read_parquet({literal(str(to_submit))}) s using (key) "
        f"order by d.key limit {int(limit)}"
    ).fetchall()
    con.close()
    return [str(r[0]) for r in rows]


def job_keys(job_requests: Path) -> list[str]:
    """The keys a job carries, in key order (an inline job's answers may need them)."""
    con = shared_memory()
    rows = con.execute(
        f"select key from read_parquet({literal(str(job_requests))}) order by key"
    ).fetchall()
    con.close()
    return [str(r[0]) for r in rows]


def complete_with_errors(
    *, job_requests: Path, result_file: Path, message: str, status: str
) -> None:
    """Make ``result_file`` hold a line for every key of a job that ended without success.

    The lines the job did produce (answers given before a cancel or failure, which were paid
    for) are kept; every requested key without a line gets one error line saying how the job
    ended, which the ledger counts as a retryable failure.
    """
    con = shared_memory()
    error = json.dumps({"code": 0, "message": message, "status": status})
    have = result_file.exists() and result_file.stat().st_size > 0
    produced = (
        f"select key, response, error from read_json({literal(str(result_file))}, "
        "format='newline_delimited', columns={'key': 'VARCHAR', 'response': 'JSON', "
        "'error': 'JSON'}, ignore_errors=true) where key is not null"
        if have
        else "select ''::varchar as key, null::json as response, null::json as error where false"
    )
    _atomic_copy(
        con,
        f"""
        select key, response, error from ({produced})
        union all
        select r.key, null::json, {literal(error)}::json
        from read_parquet({literal(str(job_requests))}) r
        where r.key not in (select key from ({produced}))
        """,
        result_file,
        fmt="json",
    )
    con.close()


def store_answers(*, job_requests: Path, result_file: Path, out: Path) -> None:
    """Add a finished job's answered lines to the answer store (response per request hash)."""
    con = shared_memory()
    _atomic_copy(
        con,
        f"""
        select r.request_hash, any_value(x.response)::varchar response
        from read_parquet({literal(str(job_requests))}) r
        join read_json({literal(str(result_file))}, format='newline_delimited',
                       columns={{'key': 'VARCHAR', 'response': 'JSON', 'error': 'JSON'}},
                       ignore_errors=true) x on x.key = r.key
        where x.response is not null and x.error is null
        group by r.request_hash
        """,
        out,
    )
    con.close()


def reused_lines(*, job_requests: Path, answers: list[Path], out: Path) -> None:
    """Result lines for a job of reused answers: each key gets its request hash's answer."""
    con = shared_memory()
    _atomic_copy(
        con,
        f"""
        select r.key, any_value(a.response)::json as response
        from read_parquet({literal(str(job_requests))}) r
        join read_parquet({path_list(answers)}) a using (request_hash)
        group by r.key order by r.key
        """,
        out,
        fmt="json",
    )
    con.close()


# The error a rebuilt failed line carries: its own was in the result file, which was not kept.
NOT_KEPT = "rebuilt from the ledger: this line failed; its original error was not kept"


def lines_from_ledger(*, outcome: Path, answers: list[Path], out: Path) -> int:
    """Result lines for a job whose own lines were not kept (gbatch#13), from the ledger's
    outcome per key and the answer store's response per request hash; the lines written.

    An answered key gets its stored response (text, tokens and cost come back with it); a
    failed key gets a generic error; a key that had no line (``reason`` set) gets none, as at
    ingest. Read by the integrity checks when neither the results file nor kept rows have
    the job.
    """
    con = shared_memory()
    stored = [p for p in answers if p.exists()]
    store = (
        "select request_hash, any_value(response) response from read_parquet("
        f"{path_list(stored)}) group by request_hash"
        if stored
        else "select ''::varchar request_hash, ''::varchar response where false"
    )
    error = json.dumps({"code": 0, "message": NOT_KEPT})
    _atomic_copy(
        con,
        f"""
            select o.key,
                case when o.status = 'succeeded' then a.response::json end as response,
                case when o.status = 'succeeded' and a.response is not null then null
                     else {literal(error)}::json end as error
            from read_parquet({literal(str(outcome))}) o
            left join ({store}) a using (request_hash)
            where o.reason is null
            order by o.key
        """,
        out,
        fmt="json",
    )
    row = con.execute(
        f"select count(*) from read_parquet({literal(str(outcome))}) where reason is null"
    ).fetchone()
    con.close()
    return int(row[0]) if row else 0
