"""kill -9 at every step of apply, then a restart: exactly one remote job per intent, every
key ingested once. The process kills itself at a named point (runner.crashpoints)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from runner.crashpoints import POINTS
from runner.emulator import Emulator
from tests.conftest import Gbatch


def apply(gbatch: Gbatch, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    # a create never sent is looked for by listing for the grace period before it is made
    env = {**os.environ, "GBATCH_POLL_INTERVAL_S": "0.05", "GBATCH_ADOPT_GRACE_S": "0.5"}
    if crash_at:
        env["GBATCH_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "runner", "apply", "manifests", "--wait"],
        cwd=gbatch.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_each_step_then_a_restart_creates_each_job_once(
    gbatch: Gbatch, emulator: Emulator, point: str
) -> None:
    body = "".join(f"    - {{n: {i}}}\n" for i in range(4))
    gbatch.write(
        "nums.yaml",
        "name: nums\nmodel: gemini-2.5-flash\nsource:\n  key: n\n  rows:\n"
        + body
        + "prompt: {template: 'Number {{ n }}'}\npolicy: {max_requests_per_job: 2}\n",
    )
    crashed = apply(gbatch, crash_at=point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    restarted = apply(gbatch)
    assert restarted.returncode == 0, restarted.stderr
    assert emulator.count("batches.create") == 2  # one per intent, crash or not
    assert gbatch.sql("select count(*), count(distinct key) from nums") == [(4, 4)]
    assert gbatch.sql("select count(*), count(distinct key) from nums_history") == [(4, 4)]
    assert gbatch.sql("select count(*) from nums where status = 'succeeded'") == [(4,)]
    again = apply(gbatch)
    assert again.returncode == 0 and emulator.count("batches.create") == 2
