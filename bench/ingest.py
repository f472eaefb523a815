"""Benchmark: ingesting a Gemini batch results file into the results database.

Measures, in the same run and on the same generated files:

* ``ours``  - ``runner.adapters.results.ingest`` (DuckDB JSON reader, join to the request
  set, typed answer columns, cost, history + current tables, grounding sources);
* ``floor`` - a fresh DuckDB file and ``create table t as select * from read_json(...)``,
  nothing else: the least work any DuckDB-based ingest can do;
* ``naive`` - a Python loop (``json.loads`` per line, pick key / text / usage / error), then
  one bulk load into a DuckDB table (through ``csv.writer`` and one ``COPY``). Row-at-a-time
  ``executemany``, the naive baseline until gbatch#15, is ~100x slower than that: a strawman.

The results JSONL looks like Gemini's batch output: one ``{"key", "response"}`` line per
request with a JSON answer for a small output schema, ~2% ``{"key", "error"}`` lines and
~0.5% answers cut off at MAX_TOKENS. The matching request set (Parquet: key, request_hash,
request, request_bytes, row_number and the source columns id and name) is generated too,
because the ingest joins results to requests.

Every measurement runs in its own fresh interpreter (this script with ``--measure``), so the
peak RSS (VmHWM) is per measurement; the methods run interleaved, ``--repeat`` (3) times,
and min / median are shown. Targets: ours/floor <= 2.0 (seconds) and naive/ours >= 10. The
script prints PASS/MISS per target and always exits 0.

Run from the repository root::

    .venv/bin/python bench/ingest.py                      # 200,000 rows
    .venv/bin/python bench/ingest.py --rows 1000000
    .venv/bin/python bench/ingest.py --sizes 200000,1000000   # peak memory as the file grows
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "score": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "score", "tags"],
}
ERROR_RATE = 0.02
TRUNCATED_RATE = 0.005
SALT = "bench-salt"
WORDS = (
    *("alpine", "amber", "basalt", "cedar", "cobalt", "delta", "ember", "fjord", "garnet"),
    *("harbor", "indigo", "juniper", "kelp", "lagoon", "maple", "nectar", "onyx", "pearl"),
    *("quartz", "river", "sable", "tundra", "umber", "velvet", "willow", "xenon", "yarrow"),
    *("zephyr", "café", "naïve", "über", "smörgåsbord"),
)
METHODS = ("floor", "ours", "naive")


# ----------------------------------------------------------------------------- data


def _answer(rng: random.Random, n: int) -> str:
    title = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))).capitalize()
    tags = [rng.choice(WORDS) for _ in range(rng.randint(1, 5))]
    return json.dumps(
        {"title": f"{title} #{n}", "score": round(rng.random() * 10, 3), "tags": tags},
        ensure_ascii=False,
    )


def _line(rng: random.Random, n: int) -> str:
    key = f"row-{n}"
    draw = rng.random()
    if draw < ERROR_RATE:
        return json.dumps(
            {
                "key": key,
                "error": {
                    "code": 400,
                    "message": "Request contains an invalid argument.",
                    "status": "INVALID_ARGUMENT",
                },
            }
        )
    text = _answer(rng, n)
    finish = "STOP"
    if draw < ERROR_RATE + TRUNCATED_RATE:
        text, finish = text[: len(text) // 2], "MAX_TOKENS"
    prompt = rng.randint(80, 400)
    output = rng.randint(20, 80)
    thoughts = rng.randint(0, 600)
    response = {
        "candidates": [
            {
                "content": {"parts": [{"text": text}], "role": "model"},
                "finishReason": finish,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": prompt,
            "candidatesTokenCount": output,
            "thoughtsTokenCount": thoughts,
            "totalTokenCount": prompt + output + thoughts,
        },
        "modelVersion": "gemini-2.5-flash",
    }
    return json.dumps({"key": key, "response": response}, ensure_ascii=False)


def generate(directory: Path, rows: int) -> tuple[Path, Path]:
    """``results.jsonl`` (Gemini batch output) and ``requests.parquet`` (the request set)."""
    import duckdb

    results = directory / "results.jsonl"
    rng = random.Random(20240601)
    chunk = 20_000
    with results.open("w", encoding="utf-8") as handle:
        for start in range(0, rows, chunk):
            stop = min(start + chunk, rows)
            handle.write("\n".join(_line(rng, n) for n in range(start, stop)) + "\n")
    requests = directory / "requests.parquet"
    request_json = (
        """'{"contents":[{"role":"user","parts":[{"text":' """
        "|| to_json('Write a title, a score and tags for item ' || i || ': ' "
        "|| repeat(md5(i::varchar) || ' ', 6))::varchar "
        """|| '}]}],"generationConfig":{"responseMimeType":"application/json",'"""
        """ || '"responseSchema":""" + json.dumps(SCHEMA).replace("'", "''") + """}}'"""
    )
    con = duckdb.connect()
    try:
        con.execute(
            f"""
            copy (
                select key, sha256('{SALT}' || request) as request_hash, request,
                       strlen(request) as request_bytes, row_number, id, name
                from (
                    select 'row-' || i as key, {request_json} as request,
                           i + 1 as row_number, i as id, 'Item ' || md5(i::varchar) as name
                    from range({rows}) t(i)
                )
                order by key
            ) to '{requests}' (format parquet)
            """
        )
    finally:
        con.close()
    return results, requests


# ----------------------------------------------------------------------------- measurements


def _peak_rss_mb() -> float:
    """This process's peak resident set size in MB (VmHWM; ru_maxrss elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def measure_floor(directory: Path, rows: int) -> dict[str, Any]:
    import duckdb

    results = directory / "results.jsonl"
    db = directory / "floor.duckdb"
    db.unlink(missing_ok=True)
    started = time.perf_counter()
    con = duckdb.connect(str(db))
    con.execute(
        f"create table t as select * from read_json('{results}', format='newline_delimited')"
    )
    con.close()
    return {"seconds": time.perf_counter() - started, "rows": rows}


def measure_ours(directory: Path, rows: int) -> dict[str, Any]:
    from runner.adapters.results import ingest
    from runner.core.pricing import load_prices

    db = directory / "ours.duckdb"
    db.unlink(missing_ok=True)
    price = load_prices(None).for_model("gemini-2.5-flash")
    started = time.perf_counter()
    summary = ingest(
        results_db=db,
        table="bench",
        result_file=directory / "results.jsonl",
        requests=directory / "requests.parquet",
        current=None,
        output_schema=SCHEMA,
        price=price,
        job="batches/bench",
        manifest="bench",
        manifest_version="v1",
        commit=None,
    )
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "rows": summary.rows,
        "note": f"succeeded={summary.succeeded} failed={summary.failed} "
        f"cost=${summary.cost_usd:.2f}",
    }


def measure_naive(directory: Path, rows: int) -> dict[str, Any]:
    """What anyone would write first: ``json.loads`` per line and the fields picked in
    Python, then one bulk load. The project's venv has no pandas or pyarrow, and DuckDB reads
    big Python lists as parameters very slowly (~60 s per 100k rows), so the rows go through
    ``csv.writer`` into a file and one ``COPY`` loads it."""
    import duckdb

    db = directory / "naive.duckdb"
    db.unlink(missing_ok=True)
    staged = directory / "naive.csv"
    started = time.perf_counter()
    with (
        (directory / "results.jsonl").open(encoding="utf-8") as handle,
        staged.open("w", newline="", encoding="utf-8") as out,
    ):
        writer = csv.writer(out)
        for line in handle:
            item = json.loads(line)
            response = item.get("response")
            if response is None:
                error = json.dumps(item.get("error"))
                writer.writerow((item["key"], None, None, None, None, None, None, error))
                continue
            candidate = (response.get("candidates") or [{}])[0]
            parts = candidate.get("content", {}).get("parts", [])
            text = "".join(p.get("text", "") for p in parts if not p.get("thought"))
            usage = response.get("usageMetadata", {})
            writer.writerow(
                (
                    item["key"],
                    text,
                    candidate.get("finishReason"),
                    usage.get("promptTokenCount"),
                    usage.get("candidatesTokenCount"),
                    usage.get("thoughtsTokenCount"),
                    usage.get("totalTokenCount"),
                    None,
                )
            )
    con = duckdb.connect(str(db))
    con.execute(
        'create table t ("key" varchar, text varchar, finish_reason varchar, '
        "prompt_tokens bigint, output_tokens bigint, thoughts_tokens bigint, "
        "total_tokens bigint, error varchar)"
    )
    con.execute(f"copy t from '{staged}' (format csv, header false)")
    con.close()
    return {"seconds": time.perf_counter() - started, "rows": rows}


MEASURES: dict[str, Callable[[Path, int], dict[str, Any]]] = {
    "floor": measure_floor,
    "ours": measure_ours,
    "naive": measure_naive,
}


def child(name: str, directory: Path, rows: int) -> None:
    """Run one measurement in this (fresh) process and print its figures as JSON."""
    import duckdb  # noqa: F401  (imported before the start RSS is read, for every method)

    if name == "ours":
        import runner.adapters.results  # noqa: F401

    start_rss = _rss_mb()
    figures = MEASURES[name](directory, rows)
    figures.update(peak_mb=_peak_rss_mb(), start_mb=start_rss)
    print(json.dumps(figures))


@dataclass
class Result:
    method: str
    rows: int
    seconds: float
    peak_mb: float
    start_mb: float
    note: str


def run_child(name: str, directory: Path, rows: int) -> Result:
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", name]
    command += ["--dir", str(directory), "--rows", str(rows)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return Result(
        method=name,
        rows=int(figures["rows"]),
        seconds=float(figures["seconds"]),
        peak_mb=float(figures["peak_mb"]),
        start_mb=float(figures["start_mb"]),
        note=str(figures.get("note", "")),
    )


# ----------------------------------------------------------------------------- report


def report(rows: int, runs: dict[str, list[Result]], file_mb: float) -> None:
    """min / median seconds per method; ratios from the medians of this run."""
    median = {name: statistics.median(r.seconds for r in runs[name]) for name in METHODS}
    print(f"\n== {rows:,} result lines ({file_mb:.0f} MB JSONL), {len(runs['ours'])} runs ==")
    header = f"{'method':<7} {'rows':>10} {'seconds min / med':>18} {'rows/s':>11}"
    header += f" {'peak RSS MB':>12} {'(start MB)':>10} {'vs floor':>9}  note"
    print(header)
    for name in METHODS:
        first = runs[name][0]
        low = min(r.seconds for r in runs[name])
        print(
            f"{name:<7} {first.rows:>10,} {f'{low:.2f} / {median[name]:.2f}':>18} "
            f"{rows / median[name]:>11,.0f} {max(r.peak_mb for r in runs[name]):>12.0f} "
            f"{first.start_mb:>10.0f} {median[name] / median['floor']:>8.2f}x  {first.note}"
        )
    ratio_floor, ratio_naive = median["ours"] / median["floor"], median["naive"] / median["ours"]
    verdict = "PASS" if ratio_floor <= 2.0 else "MISS"
    print(f"ours/floor = {ratio_floor:.2f} (target <= 2.0) {verdict}")
    verdict = "PASS" if ratio_naive >= 10 else "MISS"
    print(f"naive/ours = {ratio_naive:.2f} (target >= 10) {verdict}")


def bench(rows: int, repeat: int, keep: bool) -> dict[str, list[Result]]:
    with tempfile.TemporaryDirectory(prefix="gbatch-bench-ingest-") as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        results_file, _ = generate(directory, rows)
        file_mb = results_file.stat().st_size / 1e6
        print(f"generated {rows:,} lines in {time.perf_counter() - started:.1f}s at {directory}")
        runs: dict[str, list[Result]] = {name: [] for name in METHODS}
        for _ in range(repeat):  # interleaved: floor, ours, naive, floor, ours, ...
            for name in METHODS:
                runs[name].append(run_child(name, directory, rows))
        report(rows, runs, file_mb)
        if keep:
            input(f"files kept at {directory}; press Enter to delete them ")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--sizes", help="comma-separated row counts, e.g. 200000,1000000")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs per method")
    parser.add_argument("--keep", action="store_true", help="pause before deleting the files")
    parser.add_argument("--measure", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        child(args.measure, args.dir, args.rows)
        return
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [args.rows]
    print(f"python {sys.version.split()[0]}; each measurement in a fresh process")
    every = {rows: bench(rows, max(args.repeat, 1), args.keep) for rows in sizes}
    if len(sizes) > 1:
        peak = {
            rows: {m: max(r.peak_mb for r in runs[m]) for m in METHODS}
            for rows, runs in every.items()
        }
        print("\n== peak RSS MB as the file grows ==")
        print(f"{'rows':>10} " + " ".join(f"{m:>8}" for m in METHODS))
        for rows, peaks in peak.items():
            print(f"{rows:>10,} " + " ".join(f"{peaks[m]:>8.0f}" for m in METHODS))
        first, last = sizes[0], sizes[-1]
        growth = " ".join(f"{m} x{peak[last][m] / peak[first][m]:.2f}" for m in METHODS)
        print(f"rows x{last / first:.1f} -> peak RSS {growth}")


if __name__ == "__main__":
    main()
