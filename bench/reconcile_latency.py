"""Benchmark: how long from a manifest written into a watched folder to the job's create.

``gbatch watch`` runs as its own process with default settings against an in-process
emulator, which records the wall-clock time of every call it serves. Each drop writes a new
two-row manifest and waits for one more ``batches.create``; latency is the create's time
minus the moment just before the write. Target: p50 under 1 s.

Run from the repository root::

    .venv/bin/python bench/reconcile_latency.py [--drops 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runner.emulator import Emulator, EmulatorConfig


def wait_for(condition: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drops", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gbatch-bench-") as work_dir:
        work = Path(work_dir)
        (work / "manifests").mkdir()
        with Emulator(EmulatorConfig(data_dir=work / "emu", pending_seconds=3600)) as emu:
            env = {
                **os.environ,
                "GEMINI_API_KEY": "bench",
                "GOOGLE_GEMINI_BASE_URL": emu.base_url,
                "GBATCH_DB": str(work / "results.duckdb"),
                "GBATCH_STATE_DIR": str(work / "state"),
            }
            log = (work / "watch.log").open("w+")
            daemon = subprocess.Popen(
                [sys.executable, "-m", "runner", "watch", str(work / "manifests")],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_for(lambda: "gbatch watch" in (work / "watch.log").read_text(), "daemon")
                latencies = []
                for n in range(args.drops):
                    before = emu.count("batches.create")
                    manifest = (
                        f"name: drop{n}\nmodel: gemini-2.5-flash\n"
                        f"source: {{key: c, rows: [{{c: a{n}}}, {{c: b{n}}}]}}\n"
                        "prompt: {template: 'Say {{ c }}'}\n"
                    )
                    written = time.time()
                    (work / "manifests" / f"drop{n}.yaml").write_text(manifest)
                    wait_for(lambda b=before: emu.count("batches.create") > b, f"create {n}")
                    created = max(c.at for c in emu.calls if c.endpoint == "batches.create")
                    latencies.append(created - written)
            finally:
                daemon.terminate()
                daemon.wait(timeout=30)
                log.close()
    latencies.sort()
    p50 = statistics.median(latencies)
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {len(latencies)} drops")
    print(
        f"manifest written -> create received: p50 {p50:.2f} s, p95 {p95:.2f} s, "
        f"max {latencies[-1]:.2f} s, min {latencies[0]:.2f} s"
    )
    print(f"p50 < 1 s: {'PASS' if p50 < 1 else 'MISS'}")


if __name__ == "__main__":
    main()
