"""Benchmark: one manifest of N CSV rows through ``gbatch apply --wait`` against the emulator.

The emulator runs in its own process with instant jobs; apply runs as a separate process
whose wall time and peak RSS (``os.wait4``) are measured, then the results table is counted.
Sizes default to 100,000 and 400,000 requests to show the growth; linear growth gives a time
ratio of 4.0. Targets: 100,000 requests under 60 s and 500 MB peak RSS on 2 cores.

Run from the repository root::

    .venv/bin/python bench/apply_e2e.py                  # 100000,400000
    .venv/bin/python bench/apply_e2e.py --rows 20000
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

MANIFEST = """model: gemini-2.5-flash
source: {path: rows.csv, key: id}
prompt: {template: 'Summarise {{ title }}: {{ body }}'}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_one(rows: int, work: Path) -> tuple[float, float, int]:
    """(seconds, peak RSS MB, rows in the table) for one apply --wait of ``rows`` requests."""
    manifests = work / "manifests"
    manifests.mkdir(parents=True)
    con = duckdb.connect()
    con.execute(
        f"copy (select i as id, 'Title number ' || i || ' of the catalogue' as title, "
        f"repeat('A line of body text. ', 10) || i as body from range({rows}) t(i)) "
        f"to '{manifests / 'rows.csv'}' (header)"
    )
    con.close()
    (manifests / "rows.yaml").write_text(MANIFEST)
    port = free_port()
    emulator = subprocess.Popen(
        [
            *(sys.executable, "-m", "runner", "emulator", "--port", str(port)),
            *("--pending-seconds", "0", "--running-seconds", "0", "--data-dir", str(work / "emu")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        env = {
            **os.environ,
            "GEMINI_API_KEY": "bench",
            "GOOGLE_GEMINI_BASE_URL": f"http://127.0.0.1:{port}",
            "GBATCH_DB": str(work / "results.duckdb"),
            "GBATCH_STATE_DIR": str(work / "state"),
            "GBATCH_POLL_INTERVAL_S": "0.2",
        }
        started = time.monotonic()
        log = (work / "apply.log").open("w")
        apply = subprocess.Popen(
            [sys.executable, "-m", "runner", "apply", str(manifests), "--wait"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(apply.pid, 0)
        seconds = time.monotonic() - started
        log.close()
        if os.waitstatus_to_exitcode(status) != 0:
            tail = (work / "apply.log").read_text()[-2000:]
            raise SystemExit(f"apply failed with {os.waitstatus_to_exitcode(status)}:\n{tail}")
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)
    result = duckdb.connect(str(work / "results.duckdb"), read_only=True)
    (count,) = result.execute("select count(*) from rows").fetchone() or (0,)
    result.close()
    return seconds, usage.ru_maxrss / 1024, int(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,400000", help="comma-separated sizes")
    args = parser.parse_args()
    sizes = [int(x) for x in args.rows.split(",")]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(f"{'requests':>10} {'seconds':>9} {'req/s':>9} {'peak RSS MB':>12} {'rows':>9}")
    figures = {}
    for rows in sizes:
        with tempfile.TemporaryDirectory(prefix="gbatch-bench-") as work:
            seconds, rss, count = run_one(rows, Path(work))
        figures[rows] = (seconds, rss)
        print(f"{rows:>10,} {seconds:>9.1f} {rows / seconds:>9,.0f} {rss:>12.0f} {count:>9,}")
        if count != rows:
            print(f"  MISS: the table has {count:,} rows, expected {rows:,}")
    if 100_000 in figures:
        seconds, rss = figures[100_000]
        print(
            f"100k: {seconds:.1f} s (target < 60) {'PASS' if seconds < 60 else 'MISS'}; "
            f"{rss:.0f} MB (target < 500) {'PASS' if rss < 500 else 'MISS'}"
        )
    if len(sizes) >= 2:
        (a, (ta, _)), (b, (tb, _)) = sorted(figures.items())[:2]
        print(f"growth: time x{tb / ta:.2f} for rows x{b / a:.1f} (linear: x{b / a:.1f})")


if __name__ == "__main__":
    main()
