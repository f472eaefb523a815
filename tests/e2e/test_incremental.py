"""Money: no request is paid for twice, a small change costs a small amount, stuck jobs and
the concurrent-job limit are handled. Counted at the emulator over real HTTP."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.emulator import Emulator, EmulatorConfig
from tests.conftest import Gbatch


def requests_received(emulator: Emulator) -> list[int]:
    """Requests per batch job the emulator ran, in creation order."""
    with emulator.service.lock:
        batches = sorted(emulator.service.batches.values(), key=lambda b: b.created)
        return [b.stats.get("requestCount", 0) for b in batches]


def cities(gbatch: Gbatch, name: str, rows: list[str], policy: str = "") -> None:
    body = "".join(f"    - {{city: {r}}}\n" for r in rows)
    gbatch.write(
        f"{name}.yaml",
        f"name: {name}\nmodel: gemini-2.5-flash\nsource:\n  key: city\n  rows:\n{body}"
        "prompt: {template: 'Weather in {{ city }}?'}\n" + policy,
    )


def test_identical_requests_in_two_manifests_are_answered_once(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    cities(gbatch, "first", ["Oslo", "Lima", "Pune"])
    cities(gbatch, "second", ["Lima", "Pune", "Kyiv"])
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    # first sends its 3; second sends only Kyiv and copies Lima and Pune once they are answered
    assert sorted(requests_received(emulator)) == [1, 3]
    assert gbatch.sql("select key, text, cost_usd = 0 from second order by key") == [
        ("Kyiv", "echo: Weather in Kyiv?", False),
        ("Lima", "echo: Weather in Lima?", True),
        ("Pune", "echo: Weather in Pune?", True),
    ]
    assert gbatch.sql("select count(*), min(cost_usd) > 0 from first") == [(3, True)]
    jobs = gbatch("query", "select manifest, kind, requests from gbatch_jobs order by id")
    assert "reuse" in jobs.out
    # a third manifest applied later copies everything and sends nothing
    cities(gbatch, "third", ["Oslo", "Kyiv"])
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert "2 answered before (copied, not paid again)" in result.out
    assert sorted(requests_received(emulator)) == [1, 3]
    assert gbatch.sql("select count(*), sum(cost_usd) from third") == [(2, 0.0)]


def test_rows_of_one_manifest_asking_the_same_thing_are_paid_for_once(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    gbatch.write(
        "same.yaml",
        "model: gemini-2.5-flash\nsource:\n  key: id\n  rows: [{id: a}, {id: b}, {id: c}]\n"
        "prompt: {template: 'One question for all'}\n",
    )
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert requests_received(emulator) == [1]
    assert gbatch.sql("select key, status, cost_usd > 0 from same order by key") == [
        ("a", "succeeded", True),
        ("b", "succeeded", False),
        ("c", "succeeded", False),
    ]


def test_a_manifest_that_opts_out_of_reuse_pays_for_its_own_answers(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    cities(gbatch, "first", ["Oslo", "Lima"])
    assert gbatch("apply", "manifests", "--wait").code == 0
    cities(gbatch, "sampled", ["Oslo", "Lima"], "policy: {reuse_answers: false}\n")
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert requests_received(emulator) == [2, 2]
    assert gbatch.sql("select count(*), min(cost_usd) > 0 from sampled") == [(2, True)]


def test_adding_one_percent_of_rows_submits_one_percent(gbatch: Gbatch, emulator: Emulator) -> None:
    data = gbatch.manifests / "rows.csv"
    data.write_text("id,word\n" + "".join(f"{i},w{i}\n" for i in range(10_000)))
    gbatch.write(
        "rows.yaml",
        "model: gemini-2.5-flash\nsource: {path: rows.csv, key: id}\n"
        "prompt: {template: 'Say {{ word }}'}\n",
    )
    assert gbatch("apply", "manifests", "--wait").code == 0
    with data.open("a") as handle:
        handle.write("".join(f"{i},w{i}\n" for i in range(10_000, 10_100)))
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert "10100 total, 100 new" in result.out
    assert requests_received(emulator) == [10_000, 100]
    assert gbatch.sql("select count(*) from rows") == [(10_100,)]
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert requests_received(emulator) == [10_000, 100]  # unchanged: nothing sent


def test_120_manifests_never_exceed_the_100_job_limit(
    gbatch: Gbatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Emulator(EmulatorConfig(data_dir=tmp_path / "slow", pending_seconds=3600)) as slow:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", slow.base_url)
        for i in range(120):
            cities(gbatch, f"m{i:03}", [f"City{i}"])
        first = gbatch("apply", "manifests")  # no --wait: jobs stay pending at the emulator
        assert first.code == 0, first.err
        assert slow.count("batches.create") == 100
        assert "waiting 20" in first.out
        phases = gbatch(
            "query",
            "select phase, count(*) n from gbatch_jobs group by phase order by phase",
            "--format",
            "csv",
        )
        assert phases.out.split() == ["phase,n", "planned,20", "submitted,100"]  # a visible queue
        slow.advance(7200)  # the 100 finish; the queue moves
        waiter = subprocess.Popen(
            [sys.executable, "-m", "runner", "apply", "manifests", "--wait"],
            cwd=gbatch.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 90
        while slow.count("batches.create") < 120 and waiter.poll() is None:
            assert time.monotonic() < deadline, "the queued 20 were never created"
            time.sleep(0.05)
        slow.advance(7200)  # the last 20 finish
        output, _ = waiter.communicate(timeout=90)
        assert waiter.returncode == 0, output
        assert slow.count("batches.create") == 120
        ingested = gbatch(
            "query", "select count(*) from gbatch_jobs where phase = 'ingested'", "--format", "csv"
        )
        assert ingested.out.split() == ["count_star()", "120"]
