"""Two request sets side by side, key by key: what ``gbatch diff`` shows.

A request set (``sources.build_requests``) is Parquet with one row per key: ``key``,
``request_hash``, ``request`` (JSON text), ... This compares the applied version's set with a
freshly built one in an in-memory DuckDB connection: counts of new / changed / removed /
unchanged keys, and the first ``limit`` keys of each (with both requests for a changed key,
so the engine can say which parts changed). Called by ``runner.engine.diffing``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner.adapters.duck import Error, literal, memory
from runner.errors import StoreError


@dataclass(frozen=True)
class ChangedRequest:
    key: str
    old: str  # request JSON
    new: str


@dataclass(frozen=True)
class SetComparison:
    new: int
    changed: int
    removed: int
    unchanged: int
    new_keys: list[str]
    changed_requests: list[ChangedRequest]
    removed_keys: list[str]


def keys(path: Path, *, limit: int) -> tuple[int, list[str]]:
    """(count, the first ``limit`` keys) of one set."""
    con = memory()
    try:
        source = f"read_parquet({literal(str(path))})"
        (count,) = con.execute(f"select count(*) from {source}").fetchone() or (0,)
        rows = con.execute(f"select key from {source} order by key limit {int(limit)}").fetchall()
    except Error as exc:
        raise StoreError(f"reading request set {path}: {exc}") from exc
    finally:
        con.close()
    return int(count), [str(r[0]) for r in rows]


def compare(previous: Path, desired: Path, *, limit: int) -> SetComparison:
    """Key by key: which are new, changed (another request hash), removed, unchanged."""
    con = memory()
    try:
        con.execute(
            f"""
            create temp table pairs as
            select coalesce(n.key, o.key) as key, o.request_hash as old_hash,
                   n.request_hash as new_hash, o.request as old_request,
                   n.request as new_request
            from read_parquet({literal(str(previous))}) o
            full join read_parquet({literal(str(desired))}) n using (key)
            """
        )
        con.execute(
            """
            create temp table classified as
            select *, case when old_hash is null then 'new' when new_hash is null then 'removed'
                           when old_hash = new_hash then 'unchanged' else 'changed' end as what
            from pairs
            """
        )
        counts = dict(con.execute("select what, count(*) from classified group by 1").fetchall())

        def first(what: str) -> list[tuple[str, str | None, str | None]]:
            return [
                (str(k), o, n)
                for k, o, n in con.execute(
                    "select key, old_request, new_request from classified where what = ? "
                    f"order by key limit {int(limit)}",
                    [what],
                ).fetchall()
            ]

        new_keys = [k for k, _, _ in first("new")]
        removed_keys = [k for k, _, _ in first("removed")]
        changed = [ChangedRequest(k, str(o), str(n)) for k, o, n in first("changed")]
    except Error as exc:
        raise StoreError(f"comparing request sets {previous} and {desired}: {exc}") from exc
    finally:
        con.close()
    return SetComparison(
        new=int(counts.get("new", 0)),
        changed=int(counts.get("changed", 0)),
        removed=int(counts.get("removed", 0)),
        unchanged=int(counts.get("unchanged", 0)),
        new_keys=new_keys,
        changed_requests=changed,
        removed_keys=removed_keys,
    )
