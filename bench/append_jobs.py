"""Benchmark: appending job after job to one results file, by row group size.

An ingest appends one job's rows (50k by default) to the history table in one transaction,
then closes the file. Less than a row group goes through the WAL, and the checkpoint at
close rewrites the table's last, partial row group whole. This measures, in the same run,
interleaved, ``--repeat`` times:

* ``ours``    - ``runner.adapters.duck.open_file`` (the file attached with
  ``ROW_GROUP_SIZE`` rows per row group);
* ``default`` - ``duckdb.connect(path)`` with the same settings: the opener before
  ``ROW_GROUP_SIZE``, DuckDB's default row group (122,880 rows).

Each method appends ``--jobs`` jobs of ``--rows`` rows shaped like history rows (key, job,
a ~0.5 KB JSON response, cost) to a fresh file; the time per job (insert + commit + close)
and the final file size are shown, min / median over the repeats.

Run from the repository root::

    .venv/bin/python bench/append_jobs.py                   # 8 jobs of 50,000 rows
    .venv/bin/python bench/append_jobs.py --jobs 20 --rows 10000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from runner.adapters.duck import _FILE_CONFIG, ROW_GROUP_SIZE, open_file


def job_rows(job: int, rows: int) -> str:
    return (
        f"select 'k' || (i + {job * rows}) as key, 'batches/job{job}' as job, "
        '(\'{"candidates":[{"content":{"parts":[{"text":"\' || '
        "repeat('answer text ', 40) || i || '\"}]}}]}')::json as response, "
        f"i::double * 1e-6 as cost_usd from range({rows}) t(i)"
    )


def append(
    connect: Callable[[Path], duckdb.DuckDBPyConnection], jobs: int, rows: int
) -> tuple[float, float]:
    """Seconds per job and the file's size in MB."""
    with tempfile.TemporaryDirectory(prefix="gbatch-append-") as tmp:
        path = Path(tmp) / "results.duckdb"
        started = time.perf_counter()
        for job in range(jobs):
            con = connect(path)
            if job == 0:
                con.execute(f"create table history as {job_rows(0, rows)} limit 0")
            con.execute("begin transaction")
            con.execute(f"insert into history {job_rows(job, rows)}")
            con.execute("commit")
            con.close()
        per_job = (time.perf_counter() - started) / jobs
        return per_job, path.stat().st_size / 1e6


METHODS: dict[str, Callable[[Path], duckdb.DuckDBPyConnection]] = {
    "ours": lambda path: open_file(path, read_only=False),
    "default": lambda path: duckdb.connect(str(path), config=_FILE_CONFIG),
}


def mm(values: list[float], fmt: str) -> str:
    return f"{format(min(values), fmt)} / {format(statistics.median(values), fmt)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--rows", type=int, default=50_000, help="rows per job")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    sizes: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(args.repeat):
        for name, connect in METHODS.items():  # interleaved
            per_job, size = append(connect, args.jobs, args.rows)
            times[name].append(per_job)
            sizes[name].append(size)
    print(f"{args.jobs} jobs of {args.rows:,} rows, min / median of {args.repeat}")
    print(f"  {'method':8} {'row group':>10} {'s per job':>16} {'file MB':>14}")
    for name in METHODS:
        group = f"{ROW_GROUP_SIZE:,}" if name == "ours" else "122,880"
        print(f"  {name:8} {group:>10} {mm(times[name], '.3f'):>16} {mm(sizes[name], '.1f'):>14}")
    ratio = statistics.median(times["default"]) / statistics.median(times["ours"])
    print(f"  ours is {ratio:.1f}x faster per appended job (medians)")


if __name__ == "__main__":
    main()
