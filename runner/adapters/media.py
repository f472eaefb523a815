"""Local media files named by a source column (``prompt.media``), as ``fileData`` parts.

At build time every distinct path is confined to the manifest root, typed by its extension
and hashed (DuckDB ``read_blob``); each request gets a part naming the file by content hash,
so the request hash does not change when the file is uploaded again. The set keeps
``__media_<n>_{sha,path,mime}`` columns; at upload time ``files_of`` lists what a job needs
and ``uri_sql`` puts each uploaded file's uri in place of its hash.
Called by sources (build, write) and the engine's submit step.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from pathlib import Path

from runner.adapters.duck import Connection, Error, ident, literal, path_list, shared_memory
from runner.core.manifest import Manifest
from runner.core.paths import PathError, confine_file
from runner.core.requests import MEDIA_PLACEHOLDER
from runner.errors import ManifestError

PREFIX = "__media_"


def with_media(
    con: Connection,
    manifest: Manifest,
    *,
    relation: str,
    columns: list[tuple[str, str]],
    base_dir: Path,
    root: Path,
    forbidden: Sequence[Path] = (),
) -> tuple[str, str]:
    """(the source relation with each row's media columns, the SQL of its fileData parts)."""
    assert manifest.spec.prompt is not None
    names = {name.lower(): name for name, _ in columns}
    chosen = []
    for index, wanted in enumerate(manifest.spec.prompt.media):
        actual = names.get(wanted.lower())
        if actual is None:
            raise ManifestError(
                f"no column {wanted!r} for media (columns: {', '.join(names.values())})",
                field=f"prompt.media.{index}",
            )
        chosen.append(actual)
    paths = {
        str(row[0])
        for column in chosen
        for row in con.execute(
            f"select distinct cast({ident(column)} as varchar) from {relation} "
            f"where {ident(column)} is not null and cast({ident(column)} as varchar) != ''"
        ).fetchall()
    }
    _register(con, sorted(paths), base_dir=base_dir, root=root, forbidden=forbidden)
    joins, selected, parts = [], [], []
    for n, column in enumerate(chosen, start=1):
        alias = f"m{n}"
        joins.append(f"left join media {alias} on {alias}.rel = cast(s.{ident(column)} as varchar)")
        selected += [
            f"{alias}.sha as {PREFIX}{n}_sha",
            f"{alias}.path as {PREFIX}{n}_path",
            f"{alias}.mime as {PREFIX}{n}_mime",
        ]
        parts.append(
            f"""coalesce('{{"fileData":{{"mimeType":' || to_json({PREFIX}{n}_mime)::varchar
            || ',"fileUri":"{MEDIA_PLACEHOLDER}' || {PREFIX}{n}_sha || '"}}}},', '')"""
        )
    joined = f"(select s.*, {', '.join(selected)} from {relation} s {' '.join(joins)})"
    return joined, " || ".join(parts)


def _register(
    con: Connection, paths: list[str], *, base_dir: Path, root: Path, forbidden: Sequence[Path]
) -> None:
    """Temp table ``media(rel, path, mime, sha)`` for the distinct relative paths."""
    rows = []
    for rel in paths:
        try:
            path = confine_file(rel, base_dir=base_dir, root=root, forbidden=forbidden)
        except PathError as exc:
            raise ManifestError(f"media file {rel!r}: {exc}", field="prompt.media") from None
        mime = mimetypes.guess_type(path.name)[0]
        if mime is None:
            raise ManifestError(
                f"cannot tell the type of media file {rel!r} from its name", field="prompt.media"
            )
        rows.append((rel, str(path), mime))
    con.execute("create temp table media_files (rel varchar, path varchar, mime varchar)")
    if rows:
        con.executemany("insert into media_files values (?, ?, ?)", rows)
        blobs = f"read_blob({path_list([Path(r[1]) for r in rows])})"
    else:
        blobs = "(select ''::varchar filename, ''::blob content where false)"
    try:
        con.execute(
            f"create temp table media as select f.rel, f.path, f.mime, sha256(b.content) sha "
            f"from media_files f join {blobs} b on b.filename = f.path"
        )
    except Error as exc:
        raise ManifestError(f"cannot read media files: {exc}", field="prompt.media") from None


def media_columns(requests: Path) -> int:
    """How many media columns a request set carries."""
    con = shared_memory()
    try:
        described = con.execute(
            f"describe select * from read_parquet({literal(str(requests))})"
        ).fetchall()
        names = [str(r[0]) for r in described]
    finally:
        con.close()
    return sum(1 for name in names if name.startswith(PREFIX) and name.endswith("_sha"))


def files_of(requests: Path, count: int) -> list[tuple[str, str, str]]:
    """The distinct (sha, path, mime) a job's rows need uploaded."""
    if count == 0:
        return []
    selects = " union ".join(
        f"select {PREFIX}{n}_sha, {PREFIX}{n}_path, {PREFIX}{n}_mime "
        f"from read_parquet({literal(str(requests))}) where {PREFIX}{n}_sha is not null"
        for n in range(1, count + 1)
    )
    con = shared_memory()
    try:
        rows = con.execute(f"select distinct * from ({selects}) order by 1").fetchall()
    finally:
        con.close()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def with_uris(con: Connection, relation: str, uris: dict[str, str], count: int) -> tuple[str, str]:
    """(``relation`` joined to the uploaded files' uris, the request SQL with them in place)."""
    con.execute("create or replace temp table media_uris (sha varchar, uri varchar)")
    if uris:
        con.executemany("insert into media_uris values (?, ?)", list(uris.items()))
    joins, request = [], "r.request"
    for n in range(1, count + 1):
        joins.append(f"left join media_uris u{n} on u{n}.sha = r.{PREFIX}{n}_sha")
        request = (
            f"case when u{n}.uri is null then {request} else replace({request}, "
            f"{literal(MEDIA_PLACEHOLDER)} || u{n}.sha, u{n}.uri) end"
        )
    return f"{relation} r {' '.join(joins)}", request
