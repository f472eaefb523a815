"""Faults through the CLI against the emulator: every one has a defined outcome, and no
request is paid for twice. Counts are taken at the emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from runner.emulator import Emulator, Fault
from tests.conftest import Gbatch


def rows_manifest(gbatch: Gbatch, name: str = "nums", count: int = 40, **policy: object) -> None:
    body = "".join(f"    - {{n: {i}}}\n" for i in range(count))
    extra = f"  policy: {json.dumps(policy)}\n" if policy else ""
    gbatch.write(
        f"{name}.yaml",
        f"""
apiVersion: gbatch/v1
kind: Batch
metadata: {{name: {name}}}
spec:
  model: gemini-2.5-flash
  source:
    key: n
    rows:
{body}  prompt: {{template: 'Number {{{{ n }}}}'}}
{extra}""",
    )


def test_failing_lines_are_retried_alone_and_then_succeed(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    rows_manifest(gbatch)
    emulator.add_fault(Fault(endpoint="batches.create", fail_lines_fraction=0.2, times=1))
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    jobs = gbatch.sql("select count(*) from nums_history group by job order by min(ingested_at)")
    first_failed = gbatch.sql(
        "select count(*) from nums_history where status = 'failed' and job = "
        "(select job from nums_history order by ingested_at limit 1)"
    )[0][0]
    assert 0 < first_failed < 40
    assert [j[0] for j in jobs] == [40, first_failed]  # the retry carried only the failures
    assert gbatch.sql("select count(*), count(*) filter (status = 'succeeded') from nums") == [
        (40, 40)
    ]
    assert emulator.count("batches.create") == 2


@pytest.mark.parametrize("outcome", ["FAILED", "EXPIRED"])
def test_a_failed_or_expired_job_is_resubmitted_and_reported(
    gbatch: Gbatch, emulator: Emulator, outcome: str
) -> None:
    rows_manifest(gbatch, count=5)
    emulator.add_fault(Fault(endpoint="batches.create", job_outcome=outcome, times=1))
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert emulator.count("batches.create") == 2
    assert gbatch.sql("select count(*) filter (status = 'succeeded') from nums") == [(5,)]
    errors = gbatch.sql(
        "select distinct error->>'status' from nums_history where status = 'failed'"
    )
    assert errors == [(f"JOB_{outcome}",)]
    events = gbatch(
        "query", "select message from gbatch_events where kind = 'finished'", "--format", "json"
    )
    assert any(outcome.lower() in e["message"] for e in json.loads(events.out))


def test_a_job_that_keeps_failing_stops_at_the_retry_limit(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    rows_manifest(gbatch, count=3, retries=1)
    emulator.add_fault(Fault(endpoint="batches.create", job_outcome="FAILED", times=None))
    result = gbatch("apply", "manifests", "--wait")
    assert emulator.count("batches.create") == 2  # the first try and one retry
    assert gbatch.sql("select count(*) filter (status = 'failed') from nums") == [(3,)]
    assert "out of retries" in gbatch("plan", "manifests").out
    assert result.code == 0


def test_a_429_storm_on_create_backs_off_and_creates_exactly_once(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    rows_manifest(gbatch, count=3)
    emulator.add_fault(Fault(endpoint="batches.create", status=429, times=6, retry_delay_s=0.01))
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert emulator.count("batches.create") == 7
    assert len(emulator.service.batches) == 1
    assert gbatch.sql("select count(*) from nums") == [(3,)]


def test_a_create_whose_reply_never_comes_leaves_exactly_one_job(
    gbatch: Gbatch, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GBATCH_HTTP_TIMEOUT_S", "1")
    rows_manifest(gbatch, count=3)
    emulator.add_fault(Fault(endpoint="batches.create", kind="hang", times=1))
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert emulator.count("batches.create") == 1
    assert len(emulator.service.batches) == 1
    assert gbatch.sql("select count(*) from nums") == [(3,)]
    events = gbatch("query", "select kind from gbatch_events where kind = 'adopted'")
    assert "adopted" in events.out


def test_5xx_and_dropped_connections_on_reads_are_retried(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    rows_manifest(gbatch, count=3)
    emulator.add_fault(Fault(endpoint="batches.list", status=503, times=2))
    emulator.add_fault(Fault(endpoint="files.upload", kind="drop", times=1))
    emulator.add_fault(Fault(endpoint="files.download", kind="truncate", times=1))
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert len(emulator.service.batches) == 1
    assert gbatch.sql("select count(*), count(distinct key) from nums_history") == [(3, 3)]


def test_a_reader_holding_the_results_open_delays_ingest_but_loses_nothing(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    rows_manifest(gbatch, count=3)
    assert gbatch("apply", "manifests", "--wait").code == 0
    rows_manifest(gbatch, count=6)
    release = gbatch.root / "release"
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, os, sys, time\n"
            "con = duckdb.connect(sys.argv[1], read_only=True)\n"
            "print(con.execute('select count(*) from nums').fetchone()[0], flush=True)\n"
            "while not os.path.exists(sys.argv[2]): time.sleep(0.02)\n",
            str(gbatch.db),
            str(release),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout is not None and reader.stdout.readline().strip() == "3"
    apply = subprocess.Popen(
        [sys.executable, "-m", "runner", "apply", "manifests", "--wait"],
        cwd=gbatch.root,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while "ingest waiting" not in gbatch("status").out:
            assert time.monotonic() < deadline, "ingest never reported the busy database"
            assert apply.poll() is None
            time.sleep(0.05)
    finally:
        release.touch()
        reader.wait(timeout=30)
        reader.stdout.close()
    _, err = apply.communicate(timeout=60)
    assert apply.returncode == 0, err
    assert gbatch.sql("select count(*) from nums") == [(6,)]
    assert len(emulator.service.batches) == 2
