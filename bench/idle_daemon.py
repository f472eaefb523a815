"""Benchmark: what an idle daemon costs with 500 manifests and 100 jobs in flight.

500 one-row manifests against an in-process emulator whose jobs never finish: the daemon
creates 100 jobs (the default concurrent-job limit) and queues 400. Then, for a window, it
counts the API calls per poll cycle by endpoint (target: the list pages, not one call per
job) and the daemon's CPU share from /proc (target: under 2%).

Run from the repository root::

    .venv/bin/python bench/idle_daemon.py [--manifests 500 --seconds 30 --poll 2]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runner.emulator import Emulator, EmulatorConfig

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifests", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--poll", type=float, default=2.0, help="GBATCH_POLL_INTERVAL_S")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gbatch-bench-") as work_dir:
        work = Path(work_dir)
        manifests = work / "manifests"
        manifests.mkdir()
        for n in range(args.manifests):
            (manifests / f"m{n:04}.yaml").write_text(
                f"name: m{n:04}\nmodel: gemini-2.5-flash\nsource: {{key: c, rows: [{{c: x{n}}}]}}\n"
                "prompt: {template: 'Say {{ c }}'}\n"
            )
        config = EmulatorConfig(data_dir=work / "emu", pending_seconds=10**9)
        with Emulator(config) as emu:
            env = {
                **os.environ,
                "GEMINI_API_KEY": "bench",
                "GOOGLE_GEMINI_BASE_URL": emu.base_url,
                "GBATCH_DB": str(work / "results.duckdb"),
                "GBATCH_STATE_DIR": str(work / "state"),
                "GBATCH_POLL_INTERVAL_S": str(args.poll),
            }
            daemon = subprocess.Popen(
                [sys.executable, "-m", "runner", "watch", str(manifests)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                started = time.monotonic()
                while emu.count("batches.create") < 100:
                    if time.monotonic() - started > 600:
                        raise SystemExit("the daemon never reached 100 jobs")
                    time.sleep(0.2)
                settle = time.monotonic() + 3 * args.poll
                while time.monotonic() < settle:
                    time.sleep(0.2)
                calls_before, cpu_before = len(emu.calls), cpu_seconds(daemon.pid)
                window_start = time.monotonic()
                time.sleep(args.seconds)
                window = time.monotonic() - window_start
                calls = emu.calls[calls_before:]
                cpu = cpu_seconds(daemon.pid) - cpu_before
                creates = emu.count("batches.create")
            finally:
                daemon.terminate()
                daemon.wait(timeout=60)
    cycles = window / args.poll
    by_endpoint = collections.Counter(c.endpoint for c in calls)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(
        f"{args.manifests} manifests, {creates} jobs in flight, {window:.0f} s window, "
        f"poll every {args.poll:g} s (~{cycles:.0f} cycles)"
    )
    for endpoint, count in sorted(by_endpoint.items()):
        print(f"  {endpoint:<16} {count:>5} calls  {count / cycles:6.2f} per cycle")
    per_cycle = len(calls) / cycles
    gets = by_endpoint.get("batches.get", 0)
    print(
        f"API calls per cycle: {per_cycle:.2f} "
        f"({'PASS' if gets == 0 and per_cycle <= 5 else 'MISS'}: list pages, no per-job get)"
    )
    share = 100 * cpu / window
    print(
        f"daemon CPU while idle: {cpu:.2f} s of {window:.0f} s = {share:.2f}% "
        f"({'PASS' if share < 2 else 'MISS'}: target < 2%)"
    )


if __name__ == "__main__":
    main()
