"""The row-diff rules: declared once in the core, applied in SQL by the ledger. A property
test checks the ledger's SQL against the plain-Python rules on random ledgers."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.adapters import ledger
from runner.core.verdicts import ORDER, SUBMIT, RowFacts, send_once, verdict

KEYS = [f"k{i}" for i in range(3)]  # few, so that ledgers, sets and flights overlap
HASHES = [f"h{i}" for i in range(2)]


def test_the_first_rule_that_holds_decides() -> None:
    assert verdict(RowFacts(answered=True, in_flight=True), retries=2) == "unchanged"
    assert verdict(RowFacts(failures=3), retries=2) == "exhausted"
    assert verdict(RowFacts(failures=2), retries=2) == "retry"
    assert verdict(RowFacts(failures=1, retryable=False), retries=2) == "exhausted"
    assert verdict(RowFacts(known_key=True), retries=2) == "changed"
    assert verdict(RowFacts(), retries=2) == "new"
    assert ORDER[-1] == "new" and set(SUBMIT) <= set(ORDER)


def test_rows_asking_the_same_thing_send_it_once_from_the_smallest_key() -> None:
    judged = send_once([("b", "h", "new"), ("a", "h", "changed"), ("c", "h", "unchanged")])
    assert judged == {"a": "changed", "b": "waiting", "c": "unchanged"}


@st.composite
def scenario(draw: st.DrawFn) -> dict:  # type: ignore[type-arg]
    """A random ledger around a random desired set, mostly about the desired rows (so that
    answered, failed, in-flight and known rows meet the set often)."""
    desired = draw(st.dictionaries(st.sampled_from(KEYS), st.sampled_from(HASHES), min_size=1))
    near = st.sampled_from(sorted(desired.items()))
    pair = st.one_of(near, near, st.tuples(st.sampled_from(KEYS), st.sampled_from(HASHES)))
    return {
        "desired": desired,
        "outcomes": draw(
            st.lists(st.tuples(pair, st.sampled_from(["succeeded", "failed"]), st.booleans()))
        ),
        "in_flight": draw(st.lists(pair, max_size=2)),
        "previous": draw(st.lists(st.sampled_from(KEYS), max_size=3)),
        "stored": draw(st.lists(st.sampled_from(HASHES), max_size=2)),
        "elsewhere": draw(st.lists(st.sampled_from(HASHES), max_size=2)),
        "reuse": draw(st.booleans()),
        "retries": draw(st.integers(0, 2)),
    }


def expected(case: dict) -> dict[str, str]:  # type: ignore[type-arg]
    judged = []
    for key, request_hash in case["desired"].items():
        mine = [(ok, r) for (pair, ok, r) in case["outcomes"] if pair == (key, request_hash)]
        failed = [r for ok, r in mine if ok == "failed"]
        facts = RowFacts(
            answered=any(ok == "succeeded" for ok, _ in mine),
            in_flight=(key, request_hash) in case["in_flight"],
            stored_answer=case["reuse"] and request_hash in case["stored"],
            in_flight_elsewhere=case["reuse"] and request_hash in case["elsewhere"],
            failures=len(failed),
            retryable=all(failed),
            known_key=key in {k for ((k, _), _, _) in case["outcomes"]} | set(case["previous"]),
        )
        judged.append((key, request_hash, verdict(facts, retries=case["retries"])))
    if case["reuse"]:
        return send_once(judged)
    return {key: judged_as for key, _, judged_as in judged}


def table(con: duckdb.DuckDBPyConnection, path: Path, columns: str, rows: list[tuple]) -> Path:  # type: ignore[type-arg]
    con.execute(f"create or replace temp table t ({columns})")
    if rows:
        con.executemany(f"insert into t values ({', '.join('?' for _ in rows[0])})", rows)
    con.execute(f"copy t to '{path}' (format parquet)")
    return path


@settings(max_examples=100, deadline=None)
@given(scenario())
def test_the_ledgers_sql_judges_every_row_as_the_core_rules_do(case: dict) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        con = duckdb.connect()
        desired = table(
            con,
            root / "desired.parquet",
            "key varchar, request_hash varchar, request_bytes bigint, request varchar",
            [(k, h, 10, "x" * 10) for k, h in case["desired"].items()],
        )
        (root / "ledger").mkdir()
        for index, ((key, request_hash), status, retryable) in enumerate(case["outcomes"]):
            table(
                con,
                root / "ledger" / f"{index}.parquet",
                "key varchar, request_hash varchar, status varchar, retryable boolean",
                [(key, request_hash, status, retryable)],
            )
        flight = table(
            con, root / "flight.parquet", "key varchar, request_hash varchar", case["in_flight"]
        )
        previous = table(
            con, root / "previous.parquet", "key varchar", [(k,) for k in case["previous"]]
        )
        stored = table(
            con,
            root / "answers.parquet",
            "request_hash varchar, response varchar",
            [(h, "{}") for h in case["stored"]],
        )
        other = table(
            con,
            root / "elsewhere.parquet",
            "key varchar, request_hash varchar",
            [("other", h) for h in case["elsewhere"]],
        )
        con.close()
        diff = ledger.diff(
            desired=desired,
            ledger_dir=root / "ledger",
            in_flight=[flight] if case["in_flight"] else [],
            previous=previous if case["previous"] else None,
            retries=case["retries"],
            out=root / "to_submit.parquet",
            answers=[stored] if case["reuse"] else None,
            elsewhere=[other] if case["reuse"] else None,
            reuse_out=root / "reuse.parquet",
        )
        want = expected(case)
        counts = Counter(want.values())
        got = {name: getattr(diff, name) for name in ORDER}
        assert got == {name: counts.get(name, 0) for name in ORDER}
        check = duckdb.connect()
        sent = {
            r[0] for r in check.execute(f"select key from '{root}/to_submit.parquet'").fetchall()
        }
        check.close()
        assert sent == {k for k, v in want.items() if v in SUBMIT}
