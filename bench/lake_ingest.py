"""Benchmark: ingest into a DuckLake vs into the DuckDB results file (issue #18).

200,000 result lines as 4 jobs of 50,000, each job one transaction, through the result-store
port (``runner.adapters.results.ResultsDb`` on a file, ``runner.adapters.lake.LakeResults``
with a Postgres and a SQLite catalog), the same generated lines as ``bench/ingest.py``
(JSON answers for a small output schema, ~2% error lines). Methods run interleaved, each
``--repeat`` times; min and median are printed, and the lake's data files before and after
one compaction. A Postgres is the one in ``GBATCH_TEST_POSTGRES_URL`` or one started here
(``dev.ensure_postgres``). The first lake connection of a process loads the extensions;
that warm-up is timed apart. Always exits 0.

    .venv/bin/python bench/lake_ingest.py [--jobs 4] [--rows-per-job 50000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from ingest import SCHEMA, generate  # noqa: E402  (bench/ingest.py: the same lines)

from runner.adapters import lake  # noqa: E402
from runner.adapters.results import ResultsDb  # noqa: E402
from runner.core.ports import ResultStore  # noqa: E402
from runner.core.pricing import load_prices  # noqa: E402


@contextmanager
def postgres() -> Iterator[str]:
    url = os.environ.get("GBATCH_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    import dev

    with dev.ensure_postgres() as started:
        yield started


def conninfo(url: str, database: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"dbname={database} host={parts.hostname} port={parts.port} user={parts.username}"


def fresh_database(url: str) -> str:
    import psycopg

    name = f"gbatch_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"create database {name}")
    return name


def ingest_jobs(store: ResultStore, directory: Path, jobs: int) -> float:
    price = load_prices(None).for_model("gemini-2.5-flash")
    started = time.perf_counter()
    for job in range(jobs):
        store.ingest(
            table="bench",
            result_file=directory / "results.jsonl",
            requests=directory / "requests.parquet",
            current=None,
            output_schema=SCHEMA,
            price=price,
            job=f"batches/bench-{job}",
            manifest="bench",
            manifest_version="v1",
            commit=None,
        )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--rows-per-job", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gbatch-bench-lake-") as tmp, postgres() as url:
        directory = Path(tmp)
        generate(directory, args.rows_per_job)
        rows = args.jobs * args.rows_per_job
        print(f"{rows:,} rows as {args.jobs} jobs of {args.rows_per_job:,}, one transaction each")
        lakes: list[lake.LakeResults] = []

        def file_store(run: int) -> ResultStore:
            return ResultsDb(directory / f"file-{run}.duckdb")

        def pg_lake(run: int) -> ResultStore:
            catalog = conninfo(url, fresh_database(url))
            spec = lake.parse(f"ducklake:postgres:{catalog}", data_path=directory / f"pg-{run}")
            assert spec is not None
            lakes.append(lake.LakeResults(spec, compact_every_s=1e9))
            return lakes[-1]

        def sqlite_lake(run: int) -> ResultStore:
            target = f"ducklake:sqlite:{directory}/catalog-{run}.sqlite"
            spec = lake.parse(target, data_path=directory / f"sq-{run}")
            assert spec is not None
            return lake.LakeResults(spec, compact_every_s=1e9)

        methods: dict[str, Callable[[int], ResultStore]] = {
            "duckdb file": file_store,
            "lake, postgres catalog": pg_lake,
            "lake, sqlite catalog": sqlite_lake,
        }
        warm = time.perf_counter()
        pg_lake(-1).describe()  # loads the extensions once, as a daemon does at its start
        print(f"warm-up (install + load the extensions, attach): {time.perf_counter() - warm:.2f}s")
        times: dict[str, list[float]] = {name: [] for name in methods}
        for run in range(args.repeat):
            for name, make in methods.items():
                times[name].append(ingest_jobs(make(run), directory, args.jobs))
        base = statistics.median(times["duckdb file"])
        print(f"{'method':<24} {'min s':>7} {'median s':>9} {'rows/s':>10} {'vs file':>8}")
        for name, seconds in times.items():
            median = statistics.median(seconds)
            print(
                f"{name:<24} {min(seconds):>7.2f} {median:>9.2f} {rows / median:>10,.0f} "
                f"{median / base:>7.2f}x"
            )
        last = lakes[-1]
        print("\n".join(last.describe()[1:2]))
        last.compact()
        print("after one compaction:" + last.describe()[1].split(";", 1)[1])


if __name__ == "__main__":
    main()
