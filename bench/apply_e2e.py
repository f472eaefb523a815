"""Benchmark: a CSV manifest through ``gbatch apply --wait``, then a no-op re-apply and a plan.

Per size (default 100k, 400k and 1M rows) and per repeat, in a fresh work directory:

* ``first``  - ``apply --wait`` of the new manifest against the emulator (instant jobs);
* ``noop``   - ``apply --wait`` again, nothing changed (the build, diff and all are skipped);
* ``plan``   - ``plan --no-count-tokens`` of the same, unchanged manifest.

Each runs as its own process; its wall time, CPU time (user + system, from ``os.wait4``: the
emulator runs in another process and is excluded) and peak RSS are taken, and the results
table is counted after ``first``. The no-op floor measured in the same run is what no
skipping can avoid: starting the CLI (``gbatch --version``) plus one sha256 of the input
file. ``--baseline REF`` runs the same steps with the code of a git ref (a throwaway
worktree on PYTHONPATH), interleaved with ours, so the ratios compare like with like.
Figures are min / median of ``--repeat`` (3).

Targets (gbatch#15): no-op re-apply and plan of 1M rows <= 1 s wall; first apply <= 25 us
CPU per row; peak RSS of ``apply --wait`` <= 400 MB and flat from 100k to 1M rows.

Run from the repository root::

    .venv/bin/python bench/apply_e2e.py                          # 100k, 400k, 1M
    .venv/bin/python bench/apply_e2e.py --rows 100000 --baseline 6edd097
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import _peak  # bench/_peak.py: this folder is on sys.path when run as a script
import duckdb

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = """model: gemini-2.5-flash
source: {path: rows.csv, key: id}
prompt: {template: 'Summarise {{ title }}: {{ body }}'}
"""
STEPS = ("first", "noop", "plan")


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float
    rss_mb: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_csv(path: Path, rows: int) -> None:
    con = duckdb.connect()
    con.execute(
        f"copy (select i as id, 'Title number ' || i || ' of the catalogue' as title, "
        f"repeat('A line of body text. ', 10) || i as body from range({rows}) t(i)) "
        f"to '{path}' (header)"
    )
    con.close()


@contextmanager
def emulator(work: Path, code: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "runner", "emulator", "--port", str(port)),
            *("--pending-seconds", "0", "--running-seconds", "0", "--data-dir", str(work / "emu")),
        ],
        env={**os.environ, "PYTHONPATH": str(code)},
        cwd=work,  # -m puts the working directory first on sys.path
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
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def measure(command: list[str], *, env: dict[str, str], log: Path) -> Run:
    """Run ``python -m runner ...`` (``command``); its wall, CPU and own peak RSS."""
    with log.open("w") as out:
        done = _peak.run(
            command[0], "runner", command[3:], env=env, cwd=log.parent, stdout=out, stderr=out
        )
    if done.code != 0:
        raise SystemExit(f"{' '.join(command[3:])} exited {done.code}:\n{log.read_text()[-3000:]}")
    return Run(wall=done.wall, cpu=done.cpu, rss_mb=done.rss_mb)


def run_steps(rows: int, csv: Path, work: Path, code: Path) -> dict[str, Run]:
    """first, noop and plan for one fresh state; checks the table holds every row."""
    manifests = work / "manifests"
    manifests.mkdir(parents=True)
    shutil.copyfile(csv, manifests / "rows.csv")  # one link only: hard links are refused
    (manifests / "rows.yaml").write_text(MANIFEST)
    runs: dict[str, Run] = {}
    with emulator(work, code) as base_url:
        env = {
            **os.environ,
            "PYTHONPATH": str(code),
            "GEMINI_API_KEY": "bench",
            "GOOGLE_GEMINI_BASE_URL": base_url,
            "GBATCH_DB": str(work / "results.duckdb"),
            "GBATCH_STATE_DIR": str(work / "state"),
            "GBATCH_POLL_INTERVAL_S": "0.2",
        }
        gbatch = [sys.executable, "-m", "runner"]
        apply = [*gbatch, "apply", str(manifests), "--wait"]
        runs["first"] = measure(apply, env=env, log=work / "first.log")
        runs["noop"] = measure(apply, env=env, log=work / "noop.log")
        plan = [*gbatch, "plan", "--no-count-tokens", str(manifests)]
        runs["plan"] = measure(plan, env=env, log=work / "plan.log")
    result = duckdb.connect(str(work / "results.duckdb"), read_only=True)
    (count,) = result.execute("select count(*) from rows").fetchone() or (0,)
    result.close()
    if count != rows:
        raise SystemExit(f"the table has {count:,} rows, expected {rows:,}")
    noop_log = (work / "noop.log").read_text()
    if "0 new, 0 changed, 0 retry" not in noop_log:
        raise SystemExit(f"the no-op re-apply did something:\n{noop_log[-2000:]}")
    return runs


def floor(csv: Path, code: Path) -> Run:
    """What a no-op cannot avoid: start the CLI, read and hash the input once."""
    started = time.monotonic()
    version = measure(
        [sys.executable, "-m", "runner", "--version"],
        env={**os.environ, "PYTHONPATH": str(code)},
        log=csv.parent / "floor.log",
    )
    cpu_started = time.process_time()
    with csv.open("rb") as handle:
        hashlib.file_digest(handle, "sha256")
    cpu = version.cpu + time.process_time() - cpu_started
    return Run(wall=time.monotonic() - started, cpu=cpu, rss_mb=version.rss_mb)


@contextmanager
def checkout(ref: str | None) -> Iterator[Path | None]:
    if ref is None:
        yield None
        return
    target = Path(tempfile.mkdtemp(prefix="gbatch-bench-base-"))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(target), ref],
        check=True,
        capture_output=True,
    )
    try:
        yield target
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(target)],
            check=False,
            capture_output=True,
        )


def mm(values: list[float], fmt: str) -> str:
    """min / median"""
    return f"{format(min(values), fmt)} / {format(statistics.median(values), fmt)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,400000,1000000", help="comma-separated sizes")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", help="a git ref to measure interleaved with ours")
    args = parser.parse_args()
    sizes = [int(x) for x in args.rows.split(",")]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, min / median of {args.repeat}")
    with checkout(args.baseline) as base, tempfile.TemporaryDirectory(prefix="gbatch-b-") as tmp:
        codes = {"ours": ROOT} | ({f"base {args.baseline}": base} if base else {})
        table: dict[tuple[int, str], dict[str, list[Run]]] = {}
        for rows in sizes:
            csv = Path(tmp) / f"rows-{rows}.csv"
            make_csv(csv, rows)
            for repeat in range(args.repeat):
                for label, code in codes.items():
                    with tempfile.TemporaryDirectory(prefix="run-", dir=tmp) as work:
                        runs = run_steps(rows, csv, Path(work), code)
                    cell = table.setdefault((rows, label), {step: [] for step in (*STEPS, "floor")})
                    for step, run in runs.items():
                        cell[step].append(run)
                    cell["floor"].append(floor(csv, code))
                    print(
                        f"  {rows:>9,} {label:<14} #{repeat + 1}: "
                        + ", ".join(f"{s} {r.wall:.2f}s/{r.cpu:.2f}cpu" for s, r in runs.items()),
                        flush=True,
                    )
            csv.unlink()
        report(table, sizes, list(codes))


def report(table: dict[tuple[int, str], dict[str, list[Run]]], sizes: list[int], labels: list[str]):
    print()
    head = f"{'rows':>9} {'code':<14} {'step':<6} {'wall s':>15} {'CPU s':>15} {'us CPU/row':>15}"
    print(head + f" {'peak RSS MB':>13}")
    for rows in sizes:
        for label in labels:
            cell = table[(rows, label)]
            for step in (*STEPS, "floor"):
                runs = cell[step]
                per_row = [r.cpu / rows * 1e6 for r in runs]
                print(
                    f"{rows:>9,} {label:<14} {step:<6} {mm([r.wall for r in runs], '.2f'):>15} "
                    f"{mm([r.cpu for r in runs], '.2f'):>15} {mm(per_row, '.1f'):>15} "
                    f"{mm([r.rss_mb for r in runs], '.0f'):>13}"
                )
    ours = "ours"
    print()
    for rows in sizes:
        cell = table[(rows, ours)]
        noop = statistics.median(r.wall for r in cell["noop"])
        plan = statistics.median(r.wall for r in cell["plan"])
        low = statistics.median(r.wall for r in cell["floor"])
        line = f"{rows:>9,}: no-op {noop:.2f} s, plan {plan:.2f} s (floor {low:.2f} s: "
        line += f"{noop / low:.1f}x, {plan / low:.1f}x)"
        for label in labels[1:]:
            base = table[(rows, label)]
            b_noop = statistics.median(r.wall for r in base["noop"])
            b_first = statistics.median(r.cpu for r in base["first"])
            first = statistics.median(r.cpu for r in cell["first"])
            line += f"; vs {label}: no-op {b_noop / noop:.1f}x faster, "
            line += f"first-apply CPU {b_first / first:.2f}x less"
        print(line)
    biggest = max(sizes)
    cell = table[(biggest, ours)]
    noop = statistics.median(r.wall for r in cell["noop"])
    plan = statistics.median(r.wall for r in cell["plan"])
    verdict = "PASS" if max(noop, plan) <= 1.0 else "MISS"
    print(f"no-op and plan of {biggest:,} rows <= 1 s wall: {verdict} ({noop:.2f} s, {plan:.2f} s)")
    per_row = max(statistics.median(r.cpu for r in table[(n, ours)]["first"]) / n for n in sizes)
    verdict = "PASS" if per_row * 1e6 <= 25 else "MISS"
    print(f"first apply <= 25 us CPU per row: {verdict} (worst size {per_row * 1e6:.1f} us)")
    peaks = {n: max(r.rss_mb for step in STEPS for r in table[(n, ours)][step]) for n in sizes}
    top = max(peaks.values())
    flat = peaks[max(sizes)] / peaks[min(sizes)]
    verdict = "PASS" if top <= 400 else "MISS"
    shown = ", ".join(f"{n:,}: {mb:.0f} MB" for n, mb in peaks.items())
    print(f"peak RSS <= 400 MB: {verdict} ({shown}; x{flat:.2f} from smallest to largest)")


if __name__ == "__main__":
    main()
