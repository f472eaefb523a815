"""Run a Python program as a child and measure it: wall, CPU and its own peak RSS.

``ru_maxrss`` of a child also counts the pages it shares with its parent between fork and
exec, so a small command run from a big benchmark looks as big as the benchmark. The child
here runs inside a wrapper that writes the process's own peak (VmHWM, which starts afresh at
exec) to a file as it exits. Used by the benchmarks in this folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

WRAPPER = """
import os, runpy, sys
target, sys.argv = sys.argv[1], sys.argv[1:]
try:
    if target.endswith(".py") or os.path.sep in target:
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
finally:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(os.environ["BENCH_HWM"], "w").write(line.split()[1])
"""


@dataclass(frozen=True)
class Measured:
    wall: float
    cpu: float  # user + system of the child and the children it waited for
    rss_mb: float  # the child's own peak resident set
    code: int


def run(
    python: str,
    target: str,
    args: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    stdout: int | IO[str] | None = None,
    stderr: int | IO[str] | None = None,
) -> Measured:
    """Run ``python -m target args`` (a module) or ``python target args`` (a script path)."""
    with tempfile.NamedTemporaryFile(prefix="hwm-", delete=False) as handle:
        hwm = Path(handle.name)
    try:
        started = time.monotonic()
        proc = subprocess.Popen(
            [python, "-c", WRAPPER, target, *args],
            env={**env, "BENCH_HWM": str(hwm)},
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        text = hwm.read_text().strip()
        rss_mb = int(text) / 1024 if text else usage.ru_maxrss / 1024
    finally:
        hwm.unlink(missing_ok=True)
    cpu = usage.ru_utime + usage.ru_stime
    return Measured(wall, cpu, rss_mb, os.waitstatus_to_exitcode(status))


PYTHON = sys.executable
