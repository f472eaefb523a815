"""The results file is a projection of the state (gbatch#13), through the CLI: deleted,
emptied, truncated or corrupted, it comes back on the next apply (or ``gbatch rebuild``) with
every answer and no request sent; ``status`` says when it is not whole; one state writes it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from runner.emulator import Emulator, Fault
from tests.conftest import Gbatch
from tests.e2e.test_apply import PRODUCT_MANIFEST, PRODUCTS

# Every column but the two a rebuild from the ledger cannot know exactly (see ALL_COLUMNS).
SAME = (
    "key, status, text, response, finish_reason, prompt_tokens, cached_tokens, "
    "output_tokens, thoughts_tokens, total_tokens, cost_usd, model_version, job, manifest, "
    "manifest_version, request_hash, n, error is null as ok"
)
ALL_COLUMNS = "*"


def nums(gbatch: Gbatch, keys: list[int]) -> None:
    body = ", ".join(f"{{n: {i}}}" for i in keys)
    gbatch.write(
        "nums.yaml",
        f"model: gemini-2.5-flash\nsource: {{key: n, rows: [{body}]}}\n"
        "prompt: {template: 'Number {{ n }}'}\n",
    )


def two_versions_with_failures(gbatch: Gbatch, emulator: Emulator) -> None:
    """Version 1 (6 rows, every line failing once, then retried), then version 2 (a row
    renamed): 13 history rows in 3 jobs, 6 current."""
    nums(gbatch, [1, 2, 3, 4, 5, 6])
    emulator.add_fault(Fault(endpoint="batches.create", fail_lines_fraction=1.0, times=1))
    assert gbatch("apply", "manifests", "--wait").code == 0
    nums(gbatch, [1, 2, 3, 4, 5, 7])
    assert gbatch("apply", "manifests", "--wait").code == 0


def snapshot(gbatch: Gbatch, columns: str) -> tuple[list[tuple[object, ...]], ...]:
    return (
        gbatch.sql(f"select {columns} from nums_history order by job, key"),
        gbatch.sql(f"select {columns} from nums order by key"),
    )


def test_a_deleted_results_file_comes_back_on_the_next_apply_for_nothing(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    two_versions_with_failures(gbatch, emulator)
    before = snapshot(gbatch, SAME)
    assert len(before[0]) == 13 and len({r[12] for r in before[0]}) == 3 and len(before[1]) == 6
    assert {r[1] for r in before[0]} == {"succeeded", "failed"}
    creates = emulator.count("batches.create")
    gbatch.db.unlink()

    status = gbatch("status")
    assert "is missing" in status.out and "gbatch rebuild" in status.out, status.out
    again = gbatch("apply", "manifests", "--wait")
    assert again.code == 0, again.err
    assert "6 unchanged" in again.out
    assert snapshot(gbatch, SAME) == before
    assert emulator.count("batches.create") == creates
    assert "every ingested answer is there" in gbatch("status").out


def test_a_rebuild_from_kept_rows_is_exact_and_can_be_repeated(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    two_versions_with_failures(gbatch, emulator)
    before = snapshot(gbatch, ALL_COLUMNS)
    first = gbatch("rebuild")  # keeps every job's rows in the state, rewrites the table
    assert first.code == 0 and "rebuilt nums: 13 row(s) of 3 job(s)" in first.out, first.out
    assert snapshot(gbatch, ALL_COLUMNS) == before
    gbatch.db.unlink()
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert snapshot(gbatch, ALL_COLUMNS) == before  # errors and ingest times included
    errors = gbatch.sql("select error from nums_history where status = 'failed'")
    assert errors and all("emulated line failure" in str(e[0]) for e in errors)


def test_moved_aside_tables_count_as_present_and_a_rebuild_keeps_their_rows(
    gbatch: Gbatch,
) -> None:
    gbatch.write("products.csv", PRODUCTS)
    manifest = PRODUCT_MANIFEST.replace(
        "output: {table: product_copy}",
        "output: {table: product_copy, on_schema_change: new_table}",
    )
    gbatch.write("products.yaml", manifest)
    assert gbatch("apply", "manifests", "--wait").code == 0
    gbatch.write(
        "products.yaml", manifest.replace("rating: {type: integer}", "rating: {type: string}")
    )
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert gbatch("apply", "manifests", "--wait").code == 0  # checks: nothing to restore
    assert gbatch.sql("select count(*) from product_copy_history") == [(3,)]
    current = gbatch.sql("select sku, title, rating from product_copy order by sku")
    gbatch.db.unlink()
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert gbatch.sql("select count(*) from product_copy_history") == [(6,)]  # both versions
    assert gbatch.sql("select sku, title, rating from product_copy order by sku") == current


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_corrupt_results_file_is_moved_aside_and_rebuilt(
    gbatch: Gbatch, emulator: Emulator, damage: str
) -> None:
    nums(gbatch, [1, 2, 3])
    assert gbatch("apply", "manifests", "--wait").code == 0
    before = snapshot(gbatch, SAME)
    data = gbatch.db.read_bytes()
    broken = {
        "garbage": b"not a database " * 100,
        "truncated": data[: len(data) // 2],
        "empty": b"",
    }[damage]
    gbatch.db.write_bytes(broken)

    status = gbatch("status")
    assert "DuckDB cannot open it" in status.out, status.out
    again = gbatch("apply", "manifests", "--wait")
    assert again.code == 0, again.err
    (aside,) = gbatch.root.glob("results.duckdb.corrupt-*")
    assert aside.read_bytes() == broken  # moved, never deleted
    assert snapshot(gbatch, SAME) == before
    assert emulator.count("batches.create") == 1
    status = gbatch("status")
    assert f"moved to {aside}" in status.out and "every ingested answer" in status.out


def test_missing_rows_and_a_dropped_view_come_back(gbatch: Gbatch, emulator: Emulator) -> None:
    two_versions_with_failures(gbatch, emulator)
    before = snapshot(gbatch, SAME)
    con = duckdb.connect(str(gbatch.db))
    con.execute("delete from nums_history where key in ('1', '7')")
    con.execute("drop view nums")
    con.close()
    assert "lacks answers" in gbatch("status").out
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert snapshot(gbatch, SAME) == before


def test_rebuild_on_demand_needs_no_api_key_and_sends_nothing(
    gbatch: Gbatch, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_versions_with_failures(gbatch, emulator)
    before = snapshot(gbatch, SAME)
    calls = len(emulator.calls)
    gbatch.db.unlink()
    monkeypatch.delenv("GEMINI_API_KEY")
    result = gbatch("rebuild", "--table", "nums")
    assert result.code == 0, result.err
    assert snapshot(gbatch, SAME) == before
    assert len(emulator.calls) == calls
    unknown = gbatch("rebuild", "--table", "nope")
    assert unknown.code == 1 and "known: nums" in unknown.err


def test_a_view_left_on_an_old_version_is_caught_up_when_the_answer_lands(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    """A key renamed while a reader held the file: the view switches once the file is free,
    not at the daemon's next resync (--resync 1h here)."""
    nums(gbatch, [1, 2])
    daemon = subprocess.Popen(
        [sys.executable, "-m", "runner", "watch", "manifests", "--resync", "1h"],
        cwd=gbatch.root,
        env={**os.environ, "GBATCH_POLL_INTERVAL_S": "0.1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    release = gbatch.root / "release"
    try:
        until(lambda: rows(gbatch, "select key from nums order by key") == [("1",), ("2",)])
        reader = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import duckdb, os, sys, time\n"
                "con = duckdb.connect(sys.argv[1], read_only=True)\n"
                "print('holding', flush=True)\n"
                "while not os.path.exists(sys.argv[2]): time.sleep(0.02)\n",
                str(gbatch.db),
                str(release),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert reader.stdout is not None and reader.stdout.readline().strip() == "holding"
        nums(gbatch, [1, 3])  # 2 renamed to 3
        until(lambda: "ingest waiting" in gbatch("status").out)
        release.touch()
        reader.wait(timeout=30)
        reader.stdout.close()
        until(lambda: ("3",) in rows(gbatch, "select key from nums"))
        assert rows(gbatch, "select key from nums order by key") == [("1",), ("3",)]
    finally:
        release.touch()
        daemon.terminate()
        daemon.wait(timeout=30)


def until(condition: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def rows(gbatch: Gbatch, sql: str) -> list[tuple[object, ...]]:
    try:
        return gbatch.sql(sql)
    except duckdb.Error:  # not there yet, or held by the daemon's write for a moment
        return []


def other_state(gbatch: Gbatch, monkeypatch: pytest.MonkeyPatch) -> Path:
    second = gbatch.root / "state-2"
    monkeypatch.setenv("GBATCH_STATE_DIR", str(second))
    return second


def test_a_second_state_may_not_write_the_same_results_file(
    gbatch: Gbatch, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    nums(gbatch, [1, 2, 3])
    assert gbatch("apply", "manifests", "--wait").code == 0
    second = other_state(gbatch, monkeypatch)
    refused = gbatch("apply", "manifests", "--wait")
    assert refused.code == 5
    assert str(gbatch.state_dir) in refused.err and "GBATCH_DB" in refused.err
    assert "gbatch rebuild --claim" in refused.err
    assert emulator.count("batches.create") == 1

    claimed = gbatch("rebuild", "--claim")  # the first state is gone for good, say
    assert claimed.code == 0, claimed.err
    assert gbatch("apply", "manifests", "--wait").code == 0
    monkeypatch.setenv("GBATCH_STATE_DIR", str(gbatch.state_dir))
    assert gbatch("apply", "manifests", "--wait").code == 5
    assert second.is_dir()


def test_a_second_daemon_on_another_state_exits_before_creating_anything(
    gbatch: Gbatch, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    nums(gbatch, [1, 2, 3])
    gbatch.write(
        "other.yaml",
        "model: gemini-2.5-flash\nsource: {key: n, rows: [{n: 1}]}\n"
        "prompt: {template: 'Other {{ n }}'}\n",
    )
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert emulator.count("batches.create") == 2
    other_state(gbatch, monkeypatch)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "runner", "watch", "manifests"],
        cwd=gbatch.root,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        until(lambda: daemon.poll() is not None or emulator.count("batches.create") > 2)
    finally:
        if daemon.poll() is None:
            daemon.terminate()
        _, err = daemon.communicate(timeout=30)
    assert emulator.count("batches.create") == 2  # not 4: nothing is paid for twice
    assert daemon.returncode == 5 and "is written by the gbatch state" in err, err


def test_a_new_state_submits_nothing_while_it_cannot_check_who_writes_the_file(
    gbatch: Gbatch, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    nums(gbatch, [1, 2])
    assert gbatch("apply", "manifests", "--wait").code == 0
    release = gbatch.root / "release"
    holder = subprocess.Popen(  # another writer (say, the first state's ingest) holds the file
        [
            sys.executable,
            "-c",
            "import duckdb, os, sys, time\n"
            "con = duckdb.connect(sys.argv[1])\n"
            "print('holding', flush=True)\n"
            "while not os.path.exists(sys.argv[2]): time.sleep(0.02)\n",
            str(gbatch.db),
            str(release),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        other_state(gbatch, monkeypatch)
        monkeypatch.setattr("runner.engine.integrity.VERIFY_WAIT_S", 0.2)
        held = gbatch("apply", "manifests", "--wait")
        assert held.code == 4 and "cannot be checked" in held.err, held.err
        assert emulator.count("batches.create") == 1
    finally:
        release.touch()
        holder.wait(timeout=30)
        holder.stdout.close()
    assert gbatch("apply", "manifests", "--wait").code == 5  # free now: the owner is known


def test_query_refuses_a_results_path_that_does_not_exist(
    gbatch: Gbatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    nums(gbatch, [1])
    assert gbatch("apply", "manifests", "--wait").code == 0
    typo = gbatch.root / "resluts.duckdb"
    monkeypatch.setenv("GBATCH_DB", str(typo))
    result = gbatch("query", "select count(*) from nums")
    assert result.code == 4 and f"no results database at {typo}" in result.err
    assert not typo.exists()
