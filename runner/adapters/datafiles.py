"""A look at a data file for ``gbatch init``: its format, columns, rows and candidate keys.

Reads CSV, JSONL or Parquet with an in-memory DuckDB connection (the reader ``apply`` uses),
so the columns ``init`` lists are the columns a manifest will see. Called by the CLI's init.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from runner.adapters.duck import Error, ident, literal, memory
from runner.errors import DataFileError

Format = Literal["csv", "jsonl", "parquet"]
FORMATS: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}


@dataclass(frozen=True)
class DataFile:
    format: Format
    columns: list[tuple[str, str]]  # (name, DuckDB type)
    rows: int
    unique: list[str]  # columns with a distinct, non-null value in every row


def describe(path: Path) -> DataFile:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataFileError(
            f"{path}: cannot tell the format from {path.suffix or 'no suffix'!r} "
            f"(known: {', '.join(sorted(FORMATS))})"
        )
    reader = {
        "csv": "read_csv({})",
        "jsonl": "read_json({}, format = 'newline_delimited')",
        "parquet": "read_parquet({})",
    }[kind].format(literal(str(path)))
    con = memory()
    try:
        con.execute(f"create temp table data as select * from {reader}")
        columns = [(str(n), str(t)) for n, t, *_ in con.execute("describe data").fetchall()]
        (rows,) = con.execute("select count(*) from data").fetchone() or (0,)
        unique = []
        for name, _ in columns:
            distinct, nulls = con.execute(
                f"select count(distinct {ident(name)}), count(*) filter ({ident(name)} is null) "
                "from data"
            ).fetchone() or (0, 0)
            if rows and distinct == rows and nulls == 0:
                unique.append(name)
    except Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataFileError(f"{path}: not readable as {kind}: {first}") from None
    finally:
        con.close()
    return DataFile(format=kind, columns=columns, rows=int(rows), unique=unique)
