"""A manifest's ``source.query`` run in a child process whose working directory is the
manifest's folder, so relative paths in the SQL mean what the manifest's author meant.

DuckDB checks file access against ``allowed_directories`` after resolving relative paths
against the process's working directory; a child with ``cwd=base_dir`` makes that check
and the read agree, without changing the daemon's own directory. The child locks its
connection down (reads only under the manifest root, no extensions, settings frozen) and
writes the rows as Parquet. Called by ``runner.adapters.sources``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from runner.adapters.duck import Error, literal, lock_down, memory, single_select
from runner.errors import ManifestError

TIMEOUT_S = 3600


def run(sql: str, *, base_dir: Path, root: Path, out: Path) -> None:
    """Rows of ``sql`` into ``out`` (Parquet); ManifestError with DuckDB's reason if refused."""
    problem = single_select(sql)
    if problem:
        raise ManifestError(problem, field="source.query")
    link = _escaping_link(root)
    if link is not None:
        raise ManifestError(
            f"{link} links outside the manifest root; query sources run only in roots "
            "without such links (DuckDB would follow them)",
            field="source.query",
        )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "runner.adapters.query_source",
            str(root),
            str(out.parent),
            str(out),
        ],
        input=sql,
        capture_output=True,
        text=True,
        cwd=base_dir,
        timeout=TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
        raise ManifestError(f"the query failed: {reason}", field="source.query")


def _escaping_link(root: Path, *, limit: int = 100_000) -> Path | None:
    """A symlink under ``root`` that resolves outside it (the first found), if any."""
    resolved_root = root.resolve()
    for seen, (folder, dirs, files) in enumerate(os.walk(root)):
        if seen > limit:
            return None
        for name in dirs + files:
            path = Path(folder) / name
            if path.is_symlink() and not path.resolve().is_relative_to(resolved_root):
                return path
    return None


def _child(root: Path, scratch: Path, out: Path, sql: str) -> int:
    con = memory()
    try:
        lock_down(con, readable=[root, scratch])
        con.execute(f"create temp table query_rows as ({sql})")
        con.execute(f"copy query_rows to {literal(str(out))} (format parquet)")
    except Error as exc:
        print(str(exc).strip().splitlines()[0], file=sys.stderr)
        return 2
    finally:
        con.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(
        _child(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.stdin.read())
    )
