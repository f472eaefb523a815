"""Benchmark: gbatch side by side with batchor (PyPI, the closest peer) through the emulator.

The same CSV (id, title, body), the same prompt ("Summarise {title}: {body}"), the same model,
the same emulator (in this process, instant jobs), three steps per tool in a fresh directory:

* ``first``     - the whole CSV, nothing done before;
* ``edited 1%`` - 1% of the rows' body changed, then run again;
* ``unchanged`` - run again with nothing changed.

gbatch: ``gbatch apply DIR --wait`` each time. batchor: ``batchor start`` then ``batchor wait``
(its CLI, Gemini Developer API backend), each step a new run over the file as it is, which
is how batchor is re-run on changed data; ``unchanged`` resumes the previous run by its
``--run-id`` (batchor's own way to run the same thing again). Figures per step: wall, CPU
(user + system of the tool's processes, from ``os.wait4``) and their own peak RSS (VmHWM, see
``bench/_peak.py``), and the request lines the emulator received. Min / median of
``--repeat`` (3) runs, the tools interleaved.

batchor needs Python >= 3.12 and lives in its own venv, ``bench/.venv-batchor`` (gitignored):

    .venv/bin/python bench/vs_batchor.py --setup     # finds a Python >= 3.12 (PATH, ~/.pyenv),
                                                     # installs batchor[gemini], drops tiktoken

tiktoken is uninstalled on purpose: batchor counts each row's tokens with it
(``batchor.runtime.tokens``), and tiktoken tries to download its encoding on every call until
one succeeds; without network every row waits on that failure. Without tiktoken batchor uses
its own fallback, characters / 4, as gbatch does when it does not call countTokens.
Without such a venv (``--batchor PATH`` names another batchor executable) this benchmark
says so and exits 0.

Run from the repository root::

    .venv/bin/python bench/vs_batchor.py --rows 20000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import _peak  # bench/_peak.py: this folder is on sys.path when run as a script
import duckdb

from runner.emulator import Emulator, EmulatorConfig

ROOT = Path(__file__).resolve().parent.parent
BATCHOR = ROOT / "bench" / ".venv-batchor" / "bin" / "batchor"
STEPS = ("first", "edited 1%", "unchanged")
TOOLS = ("gbatch", "batchor")
MANIFEST = """model: gemini-2.5-flash
source: {path: rows.csv, key: id}
prompt: {template: 'Summarise {{ title }}: {{ body }}'}
"""


@dataclass(frozen=True)
class Step:
    wall: float
    cpu: float
    rss_mb: float
    lines: int


def write_csv(path: Path, rows: int, *, edited: bool) -> None:
    """The CSV; ``edited`` changes the body of every 100th row (1%)."""
    body = "repeat('A line of body text. ', 10) || i"
    if edited:
        body = f"case when i % 100 = 0 then 'Edited: ' || {body} else {body} end"
    con = duckdb.connect()
    con.execute(
        f"copy (select i as id, 'Title number ' || i || ' of the catalogue' as title, "
        f"{body} as body from range({rows}) t(i)) to '{path}' (header)"
    )
    con.close()


def run(command: list[str], *, env: dict[str, str], cwd: Path) -> tuple[float, float, float, str]:
    """``command`` is [python, "-m", module, ...] or [python, script, ...]: (wall, CPU, own
    peak RSS MB, stdout)."""
    python, rest = command[0], command[1:]
    target, args = (rest[1], rest[2:]) if rest[0] == "-m" else (rest[0], rest[1:])
    with tempfile.TemporaryFile("w+") as out:
        done = _peak.run(
            python, target, args, env=env, cwd=cwd, stdout=out, stderr=subprocess.DEVNULL
        )
        out.seek(0)
        text = out.read()
    if done.code != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.code}:\n{text[-2000:]}")
    return done.wall, done.cpu, done.rss_mb, text


def lines_received(emulator: Emulator) -> int:
    with emulator.service.lock:
        return sum(b.stats.get("requestCount", 0) for b in emulator.service.batches.values())


def gbatch_steps(work: Path, rows: int, emulator: Emulator) -> dict[str, Step]:
    manifests = work / "manifests"
    manifests.mkdir()
    (manifests / "rows.yaml").write_text(MANIFEST)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GEMINI_API_KEY": "bench",
        "GOOGLE_GEMINI_BASE_URL": emulator.base_url,
        "GBATCH_DB": str(work / "results.duckdb"),
        "GBATCH_STATE_DIR": str(work / "state"),
        "GBATCH_POLL_INTERVAL_S": "0.2",
    }
    steps = {}
    for step in STEPS:
        if step != "unchanged":
            write_csv(manifests / "rows.csv", rows, edited=step == "edited 1%")
        before = lines_received(emulator)
        command = [sys.executable, "-m", "runner", "apply", str(manifests), "--wait"]
        wall, cpu, rss, _ = run(command, env=env, cwd=work)
        steps[step] = Step(wall, cpu, rss, lines_received(emulator) - before)
    return steps


def batchor_steps(work: Path, rows: int, emulator: Emulator, batchor: Path) -> dict[str, Step]:
    csv = work / "rows.csv"
    env = {
        **os.environ,
        "GEMINI_API_KEY": "bench",
        "GOOGLE_GEMINI_BASE_URL": emulator.base_url,
        "GOOGLE_GENAI_USE_VERTEXAI": "false",
    }
    env.pop("PYTHONPATH", None)
    common = [
        *("--db-path", str(work / "batchor.sqlite")),
    ]
    python = str(batchor.parent / "python")
    start = [
        python,
        str(batchor),
        "start",
        *("--input", str(csv), "--id-field", "id"),
        *("--prompt-template", "Summarise {title}: {body}"),
        *("--provider", "gemini", "--model", "gemini-2.5-flash", "--gemini-backend", "developer"),
        *("--poll-interval-sec", "0.2"),
        *common,
    ]
    steps, run_id = {}, None
    for step in STEPS:
        if step != "unchanged":
            write_csv(csv, rows, edited=step == "edited 1%")
        before = lines_received(emulator)
        again = ["--run-id", run_id] if step == "unchanged" and run_id else []
        wall, cpu, rss, out = run([*start, *again], env=env, cwd=work)
        run_id = json.loads(out.strip().splitlines()[-1])["run_id"]
        waited = run([python, str(batchor), "wait", "--run-id", run_id, *common], env=env, cwd=work)
        summary = json.loads(waited[3].strip().splitlines()[-1])
        if summary.get("status") != "completed" or summary.get("completed_items") != rows:
            raise SystemExit(f"batchor did not complete every row: {summary}")
        sent = lines_received(emulator) - before
        steps[step] = Step(wall + waited[0], cpu + waited[1], max(rss, waited[2]), sent)
    return steps


def python_312() -> str | None:
    """A Python >= 3.12 on this machine (batchor needs one), or None."""
    candidates = [sys.executable, *(shutil.which(f"python3.{minor}") for minor in (12, 13, 14))]
    candidates += sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.1[2-9]*/bin/python"))
    for candidate in candidates:
        if not candidate:
            continue
        probe = [candidate, "-c", "import sys; print(sys.version_info >= (3, 12))"]
        done = subprocess.run(probe, capture_output=True, text=True, check=False)
        if done.stdout.strip() == "True":
            return candidate
    return None


def setup(venv: Path) -> None:
    """Make batchor's venv: batchor[gemini] from PyPI, tiktoken removed (see the docstring)."""
    python = python_312()
    if python is None:
        raise SystemExit("no Python >= 3.12 found (PATH, ~/.pyenv): batchor cannot be installed")
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "batchor[gemini]"], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-y", "tiktoken"])
    print(f"batchor installed in {venv} with {python}; tiktoken uninstalled")


def mm(values: list[float], fmt: str) -> str:
    return f"{format(min(values), fmt)} / {format(statistics.median(values), fmt)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batchor", type=Path, default=BATCHOR, help="the batchor executable")
    parser.add_argument("--setup", action="store_true", help="make batchor's venv first")
    args = parser.parse_args()
    if args.setup and not args.batchor.exists():
        setup(args.batchor.parent.parent)
    if not args.batchor.exists():
        found = python_312()
        how = f"run with --setup (it will use {found})" if found else "none is installed here"
        print(
            f"SKIPPED: no batchor at {args.batchor}. batchor needs Python >= 3.12: {how}. "
            "Nothing else needs it; the test suite never does."
        )
        return
    tiktoken = subprocess.run(
        [str(args.batchor.parent / "python"), "-c", "import tiktoken"],
        capture_output=True,
        check=False,
    )
    if tiktoken.returncode == 0:
        raise SystemExit(
            "tiktoken is installed in batchor's venv: it downloads its encoding per run, "
            "which fails without network; uninstall it (see the docstring)"
        )
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {args.rows:,} rows, ")
    print(f"min / median of {args.repeat}; batchor's venv has no tiktoken (uninstalled)")
    figures: dict[tuple[str, str], list[Step]] = {}
    with tempfile.TemporaryDirectory(prefix="gbatch-vs-batchor-") as tmp:
        for repeat in range(args.repeat):
            for tool in TOOLS:
                work = Path(tmp) / f"{tool}-{repeat}"
                work.mkdir()
                config = EmulatorConfig(data_dir=work / "emu", pending_seconds=0, running_seconds=0)
                with Emulator(config) as emulator:
                    steps = (
                        gbatch_steps(work, args.rows, emulator)
                        if tool == "gbatch"
                        else batchor_steps(work, args.rows, emulator, args.batchor)
                    )
                for step, figure in steps.items():
                    figures.setdefault((tool, step), []).append(figure)
                print(
                    f"  #{repeat + 1} {tool:<8} "
                    + ", ".join(f"{s} {f.wall:.1f}s/{f.lines} lines" for s, f in steps.items()),
                    flush=True,
                )
    print()
    print(
        f"{'step':<10} {'tool':<8} {'wall s':>13} {'CPU s':>13} {'peak RSS MB':>12} "
        f"{'lines sent':>11}"
    )
    for step in STEPS:
        for tool in TOOLS:
            runs = figures[(tool, step)]
            print(
                f"{step:<10} {tool:<8} {mm([r.wall for r in runs], '.2f'):>13} "
                f"{mm([r.cpu for r in runs], '.2f'):>13} {mm([r.rss_mb for r in runs], '.0f'):>12} "
                f"{int(statistics.median(r.lines for r in runs)):>11,}"
            )
    print()
    for step in STEPS:
        ours = figures[("gbatch", step)]
        theirs = figures[("batchor", step)]
        wall = statistics.median(r.wall for r in theirs) / statistics.median(r.wall for r in ours)
        cpu = statistics.median(r.cpu for r in theirs) / statistics.median(r.cpu for r in ours)
        print(
            f"{step:<10}: gbatch {wall:.1f}x faster (wall), {cpu:.1f}x less CPU; lines sent "
            f"{int(statistics.median(r.lines for r in ours)):,} vs "
            f"{int(statistics.median(r.lines for r in theirs)):,}"
        )


if __name__ == "__main__":
    main()
