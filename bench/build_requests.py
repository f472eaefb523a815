"""Benchmark: building the request set and the upload JSONL from a source file.

Measures, in the same run and on the same generated source (CSV and/or Parquet):

* ``ours``  - ``runner.adapters.sources.build_requests`` (read the source, render the
  template in SQL, key, hash, sort, write the Parquet set) followed by
  ``runner.adapters.sources.write_jsonl`` (the ``{"key", "request"}`` JSONL we upload);
* ``floor`` - the same work done as plainly as DuckDB can: render each row into its request,
  sha256 it, write the Parquet set with the source columns, then the JSONL from the set
  (two COPY statements; until gbatch#15 the floor wrote the JSONL only, without hashing);
* ``naive`` - Python: ``csv.DictReader`` (CSV) or DuckDB ``fetchmany`` batches (Parquet),
  ``json.dumps`` and ``sha256`` per row, one line written per row. It runs on a sample of
  ``min(rows, 200000)`` rows and its time is scaled linearly to the full row count (its
  peak RSS is the sample's).

The source has columns id BIGINT, title VARCHAR (~40 chars), body VARCHAR (~300 chars, with
quotes, a newline now and then and non-ASCII letters) and category VARCHAR. The manifest
is a YAML file loaded with ``runner.core.loader`` (template "Summarise {{ title }}:
{{ body }}", key id).

Every measurement runs in its own fresh interpreter (this script with ``--measure``), so the
peak RSS (VmHWM) is per measurement; methods run interleaved ``--repeat`` (3) times, and
min / median are shown. Targets: ours/floor <= 2.0 (seconds) and naive/ours >= 5. The
script prints PASS/MISS per target and always exits 0.

Run from the repository root::

    .venv/bin/python bench/build_requests.py                    # 1,000,000 rows, CSV and Parquet
    .venv/bin/python bench/build_requests.py --rows 200000 --format csv
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAIVE_SAMPLE = 200_000
METHODS = ("floor", "ours", "naive")
FORMATS = ("csv", "parquet")
MANIFEST = """\
apiVersion: gbatch/v1
kind: Batch
metadata:
  name: bench
spec:
  model: gemini-2.5-flash
  source:
    path: {source}
    key: id
  prompt:
    template: "Summarise {{{{ title }}}}: {{{{ body }}}}"
  output: {{table: bench}}
"""
WORDS = (
    *("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while"),
    *("'quoted'", '"double"', "words,", "café,", "naïve,", "über,", "smörgåsbord", "and"),
    *("plain", "ascii", "text", "keep", "flowing", "through", "every", "line", "of", "body"),
)
CATEGORIES = ("books", "garden", "kitchen", "toys", "tools", "outdoor", "music", "office")


# ----------------------------------------------------------------------------- data


def generate(directory: Path, rows: int, formats: list[str]) -> dict[str, Path]:
    """``source.csv`` and/or ``source.parquet`` with id, title, body, category."""
    import duckdb

    words = "[" + ", ".join("'" + w.replace("'", "''") + "'" for w in WORDS) + "]"
    cats = "[" + ", ".join(f"'{c}'" for c in CATEGORIES) + "]"
    n = len(WORDS)
    query = f"""
        select i as id,
               'Item ' || i || ' ' || substr(md5(i::varchar), 1, 28) as title,
               list_aggr(list_transform(range(52), lambda j:
                   case when j = 26 and i % 50 = 0 then e'\\n'
                        else {words}[(hash(i * 64 + j) % {n})::int + 1] end),
                   'string_agg', ' ') as body,
               {cats}[(i % {len(CATEGORIES)})::int + 1] as category
        from range({rows}) t(i)
    """
    con = duckdb.connect()
    out: dict[str, Path] = {}
    try:
        con.execute(f"create table src as {query}")
        if "csv" in formats:
            out["csv"] = directory / "source.csv"
            con.execute(f"copy src to '{out['csv']}' (format csv, header true)")
        if "parquet" in formats:
            out["parquet"] = directory / "source.parquet"
            con.execute(f"copy src to '{out['parquet']}' (format parquet)")
    finally:
        con.close()
    return out


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


def _reader(source: Path) -> str:
    if source.suffix == ".csv":
        return f"read_csv('{source}', header = true)"
    return f"read_parquet('{source}')"


def measure_floor(source: Path, work: Path, rows: int) -> dict[str, Any]:
    """The same work as ours, as plainly as DuckDB does it: render every row into its request,
    sha256 it, write the set (Parquet, with the source columns) and the upload JSONL. What it
    leaves out is what gbatch adds on top: key checks (null, duplicate, located), counts."""
    import duckdb

    set_path, out = work / "floor.parquet", work / "floor.jsonl"
    started = time.perf_counter()
    con = duckdb.connect(config={"preserve_insertion_order": False})
    con.execute(
        f"""
        copy (
            select id::varchar as key, sha256('salt' || request) as request_hash, request,
                   strlen(request) as request_bytes, id, title, body, category
            from (
                select *, '{{"contents":[{{"role":"user","parts":[{{"text":'
                    || to_json('Summarise ' || title || ': ' || body)::varchar || '}}]}}]}}'
                    as request
                from {_reader(source)}
            )
        ) to '{set_path}' (format parquet)
        """
    )
    con.execute(
        f"""
        copy (select '{{"key":' || to_json(key) || ',"request":' || request || '}}'
              from read_parquet('{set_path}'))
        to '{out}' (format csv, header false, quote '', escape '', delimiter '\x1f')
        """
    )
    con.close()
    return {"seconds": time.perf_counter() - started, "rows": rows, "out_mb": _mb(out)}


def measure_ours(source: Path, work: Path, rows: int) -> dict[str, Any]:
    from runner.adapters.sources import build_requests, write_jsonl
    from runner.core.loader import load_file

    manifest_path = source.parent / "bench.yaml"
    manifest_path.write_text(MANIFEST.format(source=source.name))
    (loaded,) = load_file(manifest_path, root=source.parent)
    set_path = work / "set.parquet"
    out = work / "requests.jsonl"
    started = time.perf_counter()
    built = build_requests(
        loaded.manifest, base_dir=loaded.base_dir, root=source.parent, out=set_path
    )
    middle = time.perf_counter()
    count, _size = write_jsonl(set_path, out)
    finished = time.perf_counter()
    return {
        "seconds": finished - started,
        "rows": count,
        "out_mb": _mb(out),
        "note": f"build_requests {middle - started:.2f}s + write_jsonl {finished - middle:.2f}s"
        f" (set {built.count:,} rows)",
    }


def _rows_csv(source: Path, limit: int) -> Iterator[tuple[Any, ...]]:
    with source.open(newline="", encoding="utf-8") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            if index >= limit:
                return
            yield row["id"], row["title"], row["body"]


def _rows_parquet(source: Path, limit: int) -> Iterator[tuple[Any, ...]]:
    import duckdb

    con = duckdb.connect()
    try:
        cursor = con.execute(
            f"select id, title, body from read_parquet('{source}') limit {int(limit)}"
        )
        while batch := cursor.fetchmany(10_000):
            yield from batch
    finally:
        con.close()


def measure_naive(source: Path, work: Path, rows: int) -> dict[str, Any]:
    sample = min(rows, NAIVE_SAMPLE)
    out = work / "naive.jsonl"
    reader = _rows_csv if source.suffix == ".csv" else _rows_parquet
    started = time.perf_counter()
    hashes = []
    with out.open("w", encoding="utf-8") as handle:
        for key, title, body in reader(source, sample):
            request = {
                "contents": [{"role": "user", "parts": [{"text": f"Summarise {title}: {body}"}]}]
            }
            text = json.dumps(request)
            hashes.append(hashlib.sha256(text.encode()).hexdigest())
            handle.write(f'{{"key": {json.dumps(str(key))}, "request": {text}}}\n')
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds * rows / sample,
        "rows": rows,
        "out_mb": _mb(out) * rows / sample,
        "note": f"sample of {sample:,} rows ({seconds:.2f}s), time scaled x{rows / sample:.1f}",
    }


def _mb(path: Path) -> float:
    return path.stat().st_size / 1e6


MEASURES: dict[str, Callable[[Path, Path, int], dict[str, Any]]] = {
    "floor": measure_floor,
    "ours": measure_ours,
    "naive": measure_naive,
}


def child(name: str, source: Path, rows: int) -> None:
    """Run one measurement in this (fresh) process and print its figures as JSON."""
    import duckdb  # noqa: F401  (imported before the start RSS is read, for every method)

    if name == "ours":
        importlib.import_module("runner.adapters.sources")
        importlib.import_module("runner.core.loader")

    start_rss = _rss_mb()
    with tempfile.TemporaryDirectory(prefix=f"{name}-", dir=source.parent) as tmp:
        figures = MEASURES[name](source, Path(tmp), rows)
    figures.update(peak_mb=_peak_rss_mb(), start_mb=start_rss)
    print(json.dumps(figures))


@dataclass
class Result:
    method: str
    rows: int
    seconds: float
    peak_mb: float
    start_mb: float
    out_mb: float
    note: str


def run_child(name: str, source: Path, rows: int) -> Result:
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", name]
    command += ["--source", str(source), "--rows", str(rows)]
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
        out_mb=float(figures["out_mb"]),
        note=str(figures.get("note", "")),
    )


# ----------------------------------------------------------------------------- report


def report(kind: str, rows: int, source_mb: float, runs: dict[str, list[Result]]) -> None:
    """min / median seconds per method; ratios from the medians of this run."""
    median = {name: statistics.median(r.seconds for r in runs[name]) for name in METHODS}
    print(f"\n== {kind}: {rows:,} rows ({source_mb:.0f} MB source), {len(runs['ours'])} runs ==")
    header = f"{'method':<7} {'rows':>10} {'seconds min / med':>18} {'rows/s':>11}"
    header += f" {'peak RSS MB':>12} {'(start MB)':>10} {'out MB':>7} {'vs floor':>9}  note"
    print(header)
    for name in METHODS:
        first = runs[name][0]
        low = min(r.seconds for r in runs[name])
        print(
            f"{name:<7} {first.rows:>10,} {f'{low:.2f} / {median[name]:.2f}':>18} "
            f"{rows / median[name]:>11,.0f} {max(r.peak_mb for r in runs[name]):>12.0f} "
            f"{first.start_mb:>10.0f} {first.out_mb:>7.0f} "
            f"{median[name] / median['floor']:>8.2f}x  {first.note}"
        )
    ratio_floor, ratio_naive = median["ours"] / median["floor"], median["naive"] / median["ours"]
    verdict = "PASS" if ratio_floor <= 2.0 else "MISS"
    print(f"ours/floor = {ratio_floor:.2f} (target <= 2.0) {verdict}")
    verdict = "PASS" if ratio_naive >= 5 else "MISS"
    print(f"naive/ours = {ratio_naive:.1f} (target >= 5) {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--format", choices=[*FORMATS, "both"], default="both")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs per method")
    parser.add_argument("--measure", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        child(args.measure, args.source, args.rows)
        return
    formats = list(FORMATS) if args.format == "both" else [args.format]
    print(f"python {sys.version.split()[0]}; each measurement in a fresh process")
    with tempfile.TemporaryDirectory(prefix="gbatch-bench-requests-") as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        sources = generate(directory, args.rows, formats)
        print(f"generated {args.rows:,} source rows in {time.perf_counter() - started:.1f}s")
        for kind, source in sources.items():
            runs: dict[str, list[Result]] = {name: [] for name in METHODS}
            for _ in range(max(args.repeat, 1)):  # interleaved: floor, ours, naive, floor, ...
                for name in METHODS:
                    runs[name].append(run_child(name, source, args.rows))
            report(kind, args.rows, _mb(source), runs)


if __name__ == "__main__":
    main()
