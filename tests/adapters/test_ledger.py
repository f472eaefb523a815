"""The ledger's set work on real Parquet files: diff verdicts, chunking, outcomes."""

import itertools
import json
from pathlib import Path

import duckdb
import pytest

from runner.adapters import ledger
from runner.core import failures


def write_set(path: Path, rows: list[tuple[str, str]]) -> Path:
    """A request set of (key, request_hash) rows, 10 bytes each, with a source column."""
    con = duckdb.connect()
    values = ", ".join(f"('{k}', '{h}')" for k, h in rows)
    con.execute(
        f"copy (select k as key, h as request_hash, '{{}}' as request, 10::bigint request_bytes, "
        f"row_number() over () as row_number, upper(k) as name from (values {values}) t(k, h)) "
        f"to '{path}' (format parquet)"
    )
    con.close()
    return path


def keys(path: Path) -> list[str]:
    con = duckdb.connect()
    rows = con.execute(f"select key from read_parquet('{path}') order by key").fetchall()
    con.close()
    return [r[0] for r in rows]


def results_file(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_first_diff_submits_everything_as_new(tmp_path: Path) -> None:
    desired = write_set(tmp_path / "d.parquet", [("a", "1"), ("b", "2")])
    diff = ledger.diff(
        desired=desired,
        ledger_dir=tmp_path / "none",
        in_flight=[],
        previous=None,
        retries=2,
        out=tmp_path / "s.parquet",
    )
    assert (diff.total, diff.new, diff.submit_requests, diff.submit_bytes) == (2, 2, 2, 20)
    assert keys(tmp_path / "s.parquet") == ["a", "b"]


def test_answered_rows_are_unchanged_changed_rows_resubmit_failures_retry(tmp_path: Path) -> None:
    first = write_set(tmp_path / "v1.parquet", [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")])
    (job,) = ledger.chunk(
        desired=first, to_submit=first, max_requests=10, max_bytes=10**6, out_dir=tmp_path / "jobs"
    )
    lines = [
        '{"key": "a", "response": {"candidates": []}}',
        '{"key": "b", "response": {"candidates": []}}',
        '{"key": "c", "error": {"code": 500, "message": "internal"}}',
        '{"key": "d", "error": {"code": 400, "message": "bad request"}}',
    ]
    outcome = ledger.record_outcome(
        job_requests=job.path,
        result_file=results_file(tmp_path / "r.jsonl", lines),
        job_error=None,
        out=tmp_path / "ledger" / "1.parquet",
    )
    assert (outcome.succeeded, outcome.failed, outcome.missing) == (2, 2, 0)
    second = write_set(
        tmp_path / "v2.parquet", [("a", "1"), ("b", "9"), ("c", "3"), ("d", "4"), ("e", "5")]
    )
    diff = ledger.diff(
        desired=second,
        ledger_dir=tmp_path / "ledger",
        in_flight=[],
        previous=first,
        retries=2,
        out=tmp_path / "s.parquet",
    )
    assert (diff.unchanged, diff.changed, diff.retry, diff.exhausted, diff.new) == (1, 1, 1, 1, 1)
    assert keys(tmp_path / "s.parquet") == ["b", "c", "e"]


def test_retries_stop_at_the_policy_limit(tmp_path: Path) -> None:
    desired = write_set(tmp_path / "d.parquet", [("a", "1")])
    (job,) = ledger.chunk(
        desired=desired,
        to_submit=desired,
        max_requests=10,
        max_bytes=10**6,
        out_dir=tmp_path / "jobs",
    )
    failing = results_file(tmp_path / "r.jsonl", ['{"key": "a", "error": {"code": 503}}'])
    verdicts = []
    for attempt in range(3):
        ledger.record_outcome(
            job_requests=job.path,
            result_file=failing,
            job_error=None,
            out=tmp_path / "ledger" / f"{attempt}.parquet",
        )
        diff = ledger.diff(
            desired=desired,
            ledger_dir=tmp_path / "ledger",
            in_flight=[],
            previous=desired,
            retries=2,
            out=tmp_path / "s.parquet",
        )
        verdicts.append((diff.retry, diff.exhausted))
    assert verdicts == [(1, 0), (1, 0), (0, 1)]


def test_rows_in_flight_are_not_sent_again_and_removed_keys_are_counted(tmp_path: Path) -> None:
    first = write_set(tmp_path / "v1.parquet", [("a", "1"), ("b", "2")])
    (job,) = ledger.chunk(
        desired=first, to_submit=first, max_requests=10, max_bytes=10**6, out_dir=tmp_path / "jobs"
    )
    second = write_set(tmp_path / "v2.parquet", [("a", "1")])
    diff = ledger.diff(
        desired=second,
        ledger_dir=tmp_path / "ledger",
        in_flight=[job.path],
        previous=first,
        retries=2,
        out=tmp_path / "s.parquet",
    )
    assert (diff.in_flight, diff.removed, diff.submit_requests) == (1, 1, 0)


@pytest.mark.parametrize(
    ("max_requests", "max_bytes", "sizes"),
    [(3, 10**6, [3, 3, 1]), (100, 40, [3, 4]), (2, 25, [2, 2, 2, 1])],
)
def test_chunks_respect_both_limits_and_cover_every_row_once(
    tmp_path: Path, max_requests: int, max_bytes: int, sizes: list[int]
) -> None:
    desired = write_set(tmp_path / "d.parquet", [(f"k{i}", str(i)) for i in range(7)])
    chunks = ledger.chunk(
        desired=desired,
        to_submit=desired,
        max_requests=max_requests,
        max_bytes=max_bytes * 3,
        out_dir=tmp_path / "jobs",
    )
    assert [c.requests for c in chunks] == sizes
    covered = [k for c in chunks for k in keys(c.path)]
    assert sorted(covered) == sorted(f"k{i}" for i in range(7))
    again = ledger.chunk(
        desired=desired,
        to_submit=desired,
        max_requests=max_requests,
        max_bytes=max_bytes * 3,
        out_dir=tmp_path / "jobs",
    )
    assert [c.digest for c in again] == [c.digest for c in chunks]


def test_a_truncated_file_leaves_the_cut_keys_missing_and_retryable(tmp_path: Path) -> None:
    desired = write_set(tmp_path / "d.parquet", [("a", "1"), ("b", "2")])
    (job,) = ledger.chunk(
        desired=desired,
        to_submit=desired,
        max_requests=10,
        max_bytes=10**6,
        out_dir=tmp_path / "jobs",
    )
    cut = tmp_path / "r.jsonl"
    cut.write_text('{"key": "a", "response": {"candidates": []}}\n{"key": "b", "respo')
    outcome = ledger.record_outcome(
        job_requests=job.path,
        result_file=cut,
        job_error=None,
        out=tmp_path / "ledger" / "1.parquet",
    )
    assert (outcome.succeeded, outcome.failed, outcome.missing) == (1, 1, 1)
    diff = ledger.diff(
        desired=desired,
        ledger_dir=tmp_path / "ledger",
        in_flight=[],
        previous=desired,
        retries=2,
        out=tmp_path / "s.parquet",
    )
    assert keys(tmp_path / "s.parquet") == ["b"] and diff.retry == 1


def test_a_cancelled_job_keeps_the_answers_it_gave_and_fails_only_the_rest(
    tmp_path: Path,
) -> None:
    """Answers given before a cancel were paid for: kept; only the other keys are retried."""
    desired = write_set(tmp_path / "d.parquet", [("a", "1"), ("b", "2"), ("c", "3")])
    (job,) = ledger.chunk(
        desired=desired, to_submit=desired, max_requests=10, max_bytes=10**6, out_dir=tmp_path
    )
    lines = tmp_path / "partial.jsonl"
    answer = {"candidates": [{"content": {"parts": [{"text": "A"}]}, "finishReason": "STOP"}]}
    lines.write_text(json.dumps({"key": "a", "response": answer}) + "\n")
    ledger.complete_with_errors(
        job_requests=job.path, result_file=lines, message="cancelled", status="JOB_CANCELLED"
    )
    by_key = {row["key"]: row for row in map(json.loads, lines.read_text().splitlines())}
    assert by_key["a"]["response"] == answer
    assert by_key["b"]["error"]["status"] == by_key["c"]["error"]["status"] == "JOB_CANCELLED"
    outcome = ledger.record_outcome(
        job_requests=job.path, result_file=lines, job_error=None, out=tmp_path / "l.parquet"
    )
    assert (outcome.succeeded, outcome.failed) == (1, 2)


def test_a_failed_job_fails_every_row_retryably(tmp_path: Path) -> None:
    desired = write_set(tmp_path / "d.parquet", [("a", "1"), ("b", "2")])
    (job,) = ledger.chunk(
        desired=desired,
        to_submit=desired,
        max_requests=10,
        max_bytes=10**6,
        out_dir=tmp_path / "jobs",
    )
    lines = tmp_path / "failed.jsonl"
    ledger.complete_with_errors(
        job_requests=job.path, result_file=lines, message="job FAILED", status="JOB_FAILED"
    )
    assert len(lines.read_text().splitlines()) == 2
    outcome = ledger.record_outcome(
        job_requests=job.path,
        result_file=lines,
        job_error=None,
        out=tmp_path / "ledger" / "1.parquet",
    )
    assert (outcome.succeeded, outcome.failed) == (0, 2)
    diff = ledger.diff(
        desired=desired,
        ledger_dir=tmp_path / "ledger",
        in_flight=[],
        previous=desired,
        retries=1,
        out=tmp_path / "s.parquet",
    )
    assert diff.retry == 2


def test_lines_of_a_job_whose_answers_could_not_be_matched_are_not_retried(
    tmp_path: Path,
) -> None:
    """ResultsMismatchError's status on the engine's per-line errors: paid for, not resent."""
    desired = write_set(tmp_path / "d.parquet", [("a", "1"), ("b", "2")])
    (job,) = ledger.chunk(
        desired=desired, to_submit=desired, max_requests=10, max_bytes=10**6, out_dir=tmp_path
    )
    lines = tmp_path / "mismatch.jsonl"
    ledger.complete_with_errors(
        job_requests=job.path,
        result_file=lines,
        message="answers not matched",
        status="RESULTS_MISMATCH",
    )
    ledger.record_outcome(
        job_requests=job.path, result_file=lines, job_error=None, out=tmp_path / "l" / "1.parquet"
    )
    diff = ledger.diff(
        desired=desired,
        ledger_dir=tmp_path / "l",
        in_flight=[],
        previous=desired,
        retries=2,
        out=tmp_path / "s.parquet",
    )
    assert (diff.retry, diff.exhausted, diff.submit_requests) == (0, 2, 0)


def test_set_digest_depends_on_content_not_order(tmp_path: Path) -> None:
    one = write_set(tmp_path / "1.parquet", [("a", "1"), ("b", "2")])
    two = write_set(tmp_path / "2.parquet", [("b", "2"), ("a", "1")])
    three = write_set(tmp_path / "3.parquet", [("a", "1"), ("b", "3")])
    assert ledger.set_digest(one) == ledger.set_digest(two) != ledger.set_digest(three)


def test_grpc_invalid_argument_lines_are_not_retried_but_grpc_internal_ones_are(
    tmp_path: Path,
) -> None:
    """Result lines carry google.rpc.Status: gRPC codes, usually with no status string."""
    desired = write_set(tmp_path / "d.parquet", [("a", "1"), ("b", "2"), ("c", "3")])
    (job,) = ledger.chunk(
        desired=desired, to_submit=desired, max_requests=10, max_bytes=10**6, out_dir=tmp_path
    )
    lines = [
        '{"key": "a", "error": {"code": 3, "message": "Request contains an invalid argument."}}',
        '{"key": "b", "error": {"code": 13, "message": "Internal error encountered."}}',
        '{"key": "c", "error": {"code": 7, "message": "denied", "status": "PERMISSION_DENIED"}}',
    ]
    ledger.record_outcome(
        job_requests=job.path,
        result_file=results_file(tmp_path / "r.jsonl", lines),
        job_error=None,
        out=tmp_path / "ledger" / "1.parquet",
    )
    diff = ledger.diff(
        desired=desired,
        ledger_dir=tmp_path / "ledger",
        in_flight=[],
        previous=desired,
        retries=2,
        out=tmp_path / "s.parquet",
    )
    assert (diff.retry, diff.exhausted) == (1, 2)
    assert keys(tmp_path / "s.parquet") == ["b"]


def test_the_ledgers_sql_and_the_classifier_agree_on_every_code_and_status(
    tmp_path: Path,
) -> None:
    """One definition: record_outcome's SQL is generated from failures' tables; pin it."""
    codes: list[int | None] = [None, -1, *range(0, 21), *range(100, 600), 1000]
    statuses: list[str | None] = [
        None,
        "",
        "SOMETHING_NEW",
        "invalid_argument",
        *sorted(failures.PERMANENT_STATUSES),
        *sorted(failures.TRANSIENT_STATUSES),
    ]
    cases = list(itertools.product(codes, statuses))
    desired = write_set(tmp_path / "d.parquet", [(f"k{i:05}", str(i)) for i in range(len(cases))])
    lines = []
    for i, (code, status) in enumerate(cases):
        error: dict[str, object] = {"message": "m"}
        if code is not None:
            error["code"] = code
        if status is not None:
            error["status"] = status
        lines.append(json.dumps({"key": f"k{i:05}", "error": error}))
    ledger.record_outcome(
        job_requests=desired,
        result_file=results_file(tmp_path / "r.jsonl", lines),
        job_error=None,
        out=tmp_path / "out.parquet",
    )
    con = duckdb.connect()
    got = dict(
        con.execute(
            f"select key, retryable from read_parquet('{tmp_path / 'out.parquet'}')"
        ).fetchall()
    )
    con.close()
    wanted = {
        f"k{i:05}": failures.classify(code=code, status=status).retryable
        for i, (code, status) in enumerate(cases)
    }
    assert got == wanted
    assert sum(not v for v in wanted.values()) > 1000  # both verdicts are exercised
