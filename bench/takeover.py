"""Benchmark: how long a standby takes to lead after the leader dies (kill -9) or stalls.

Two ``gbatch watch`` processes over one Postgres state (and an emulator, a manifest folder
with one small manifest); the leader is killed with SIGKILL ``--rounds`` times, a new
standby is started after each takeover, and the time from the kill to the state naming the
new leader (its epoch moved on) is measured; then one SIGSTOP, which is taken over only once
the lease (``--lease``) has passed. A Postgres is the one in ``GBATCH_TEST_POSTGRES_URL`` or
one started here. Prints min / median / max; always exits 0.

    .venv/bin/python bench/takeover.py [--rounds 10] [--lease 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@contextmanager
def postgres() -> Iterator[str]:
    url = os.environ.get("GBATCH_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    import dev

    with dev.ensure_postgres() as started:
        yield started


def leader(url: str) -> tuple[int, int]:
    import psycopg

    try:
        with psycopg.connect(url) as db:
            row = db.execute("select epoch, holder from leader").fetchone()
    except psycopg.errors.UndefinedTable:
        return 0, 0
    if row is None or not row[1]:
        return 0, 0
    return int(row[0]), int(str(row[1]).rsplit(":", 1)[1])


def wait_new_leader(url: str, after: int, alive: dict[int, subprocess.Popen[bytes]]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        epoch, pid = leader(url)
        if epoch > after and pid in alive:
            return epoch
        time.sleep(0.005)
    raise SystemExit("no new leader within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--lease", type=float, default=5.0)
    args = parser.parse_args()
    from runner.emulator import Emulator, EmulatorConfig

    with (
        tempfile.TemporaryDirectory(prefix="gbatch-bench-takeover-") as tmp,
        postgres() as server,
        Emulator(EmulatorConfig()) as emulator,
    ):
        import psycopg

        name = f"gbatch_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"create database {name}")
        url = urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
        root = Path(tmp)
        (root / "manifests").mkdir()
        (root / "manifests" / "m.yaml").write_text(
            "model: gemini-2.5-flash\nsource:\n  rows: [{n: 1}, {n: 2}]\n"
            "prompt: {template: 'Number {{ n }}'}\n"
        )
        env = {
            **os.environ,
            "GEMINI_API_KEY": "bench-key",
            "GOOGLE_GEMINI_BASE_URL": emulator.base_url,
            "GBATCH_STATE_URL": url,
            "GBATCH_STATE_DIR": str(root / "state"),
            "GBATCH_DB": str(root / "results.duckdb"),
            "GBATCH_LEADER_LEASE_S": str(args.lease),
        }
        alive: dict[int, subprocess.Popen[bytes]] = {}

        def start() -> None:
            process = subprocess.Popen(
                [sys.executable, "-m", "runner", "watch", "manifests"],
                cwd=root,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            alive[process.pid] = process

        start()
        start()
        epoch = wait_new_leader(url, 0, alive)
        time.sleep(2)  # let the standby come up
        kills = []
        try:
            for _ in range(args.rounds):
                _, pid = leader(url)
                killed = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                alive.pop(pid).wait()
                epoch = wait_new_leader(url, epoch, alive)
                kills.append(time.monotonic() - killed)
                start()
                time.sleep(2)  # the new standby starts and asks for the lead
            _, pid = leader(url)
            stopped = time.monotonic()
            os.kill(pid, signal.SIGSTOP)
            epoch = wait_new_leader(url, epoch, alive)
            stall = time.monotonic() - stopped
            os.kill(pid, signal.SIGCONT)
        finally:
            for process in alive.values():
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
                process.wait()
    print(f"takeover after kill -9 of the leader, {len(kills)} rounds (standbys ask every 0.2 s):")
    print(f"  min {min(kills):.3f}s  median {statistics.median(kills):.3f}s  max {max(kills):.3f}s")
    print(f"takeover after SIGSTOP of the leader: {stall:.2f}s (lease {args.lease:.1f}s)")


if __name__ == "__main__":
    main()
