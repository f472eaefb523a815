"""Rows in, request set out: a manifest's source rendered into requests, all inside DuckDB.

The template compiles to one SQL string expression and the constant parts of the request
(``runner.core.requests.RequestShape``) are glued around the escaped text, so a million rows
never pass through a Python loop. The result is a Parquet file of key, request_hash, request,
request_bytes and the source row's own columns, in no particular order (keys name the rows).
Every file a source names is checked by ``runner.core.paths`` (confined to the root, one
link, none of gbatch's own files: ``private_paths``). Called by validate, reconcile
(build_requests), caching (cache_files) and submit (write_jsonl).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.adapters import media, query_source
from runner.adapters.duck import (
    Connection,
    Error,
    duckdb_version,
    ident,
    literal,
    memory,
    path_list,
)
from runner.core import requests as core_requests
from runner.core import schema_types, template
from runner.core.atomic import replacing
from runner.core.manifest import RESERVED_COLUMNS, Manifest
from runner.core.paths import PathError, confine_file, confine_glob
from runner.core.requests import (
    CACHE_PLACEHOLDER,
    EMBED_DIMENSIONS_COLUMN,
    PARTS_OPEN,
    hash_salt,
    request_shape,
)
from runner.errors import ManifestError

FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}
ROW_HASH_CHARS = 16
# Row groups capped by size: both cores write their own, and wide rows (long texts) cannot
# hold more than ~32 MB per core in memory (bench/build_requests.py: 1M rows at ~400 MB).
SET_FORMAT = "format parquet, row_group_size_bytes '32MB'"


@dataclass(frozen=True)
class _Build:
    """What one build reads and may not read, threaded through the helpers below."""

    base_dir: Path
    root: Path
    scratch: Path
    forbidden: tuple[Path, ...]
    query_rows: int | None  # a query source's rows are cut to this many (validation)
    cancel: threading.Event | None


@dataclass(frozen=True)
class RequestSet:
    path: Path
    count: int
    total_bytes: int
    columns: list[tuple[str, str]]


def _files(
    manifest: Manifest, *, field: str, base_dir: Path, root: Path, forbidden: Sequence[Path] = ()
) -> list[Path]:
    pattern = getattr(manifest.spec.source, field)
    try:
        if any(ch in pattern for ch in "*?["):
            return confine_glob(pattern, base_dir=base_dir, root=root, forbidden=forbidden)
        return [confine_file(pattern, base_dir=base_dir, root=root, forbidden=forbidden)]
    except PathError as exc:
        raise ManifestError(str(exc), field=f"source.{field}") from None


def private_paths(
    *, state_dir: Path, db: Path, git_checkout: Path | None = None
) -> tuple[Path, ...]:
    """gbatch's own files, which no source may read: the state directory, the results file
    and the files DuckDB keeps beside it (write-ahead log, spill directory), and a git
    checkout's ``.git`` (its config may hold credentials), resolved. A manifest root inside
    one of them (the checkout lives in the state directory) still reads its own files."""
    paths = [state_dir, db, db.with_name(db.name + ".wal"), db.with_suffix(".tmp")]
    if git_checkout is not None:
        paths.append(git_checkout / ".git")
    return tuple(p.resolve() for p in paths)


def input_files(
    manifest: Manifest, *, base_dir: Path, root: Path, forbidden: Sequence[Path] = ()
) -> list[Path] | None:
    """The files a manifest's requests are built from (source and cache); None when unknowable.

    ``input_stamps`` fingerprints these (with the manifest's digest) to skip unchanged ones.
    """
    source = manifest.spec.source
    if source.query is not None or (manifest.spec.prompt and manifest.spec.prompt.media):
        return None  # a query's inputs, or media files named in rows, are not listed here
    files = []
    if source.rows is None:
        field = "path" if source.path is not None else "requests"
        files = _files(manifest, field=field, base_dir=base_dir, root=root, forbidden=forbidden)
    if manifest.spec.cache is not None:
        named = cache_files(manifest, base_dir=base_dir, root=root, forbidden=forbidden)
        files += [root / name for name, _ in named]
    return files


Stamp = tuple[str, int, int, str]  # path, size, mtime (ns), sha256 of the content


def input_stamps(
    manifest: Manifest, *, base_dir: Path, root: Path, forbidden: Sequence[Path] = ()
) -> list[Stamp] | None:
    """Each input file's path, size, mtime and content digest; None when unknowable.

    The content digest is what makes the stamp safe: a file rewritten with the same size and
    mtime (``touch -r``, a coarse-mtime filesystem, a fast rewrite) still stamps anew. Take
    stamps before building from the files: a file that changes during the build then stamps
    differently next time, so the change is never mistaken for the set already built.
    Raises ManifestError (a path refused) or OSError (a file unreadable).
    """
    files = input_files(manifest, base_dir=base_dir, root=root, forbidden=forbidden)
    if files is None:
        return None
    stamps = []
    for path in files:
        info = path.stat()
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        stamps.append((str(path), info.st_size, info.st_mtime_ns, digest))
    return stamps


@functools.cache
def builder_version() -> str:
    """What a set depends on besides its inputs: the code that renders requests and the
    DuckDB that runs it. A set recorded by other code is built again, never assumed equal."""
    digest = hashlib.sha256(duckdb_version().encode())
    for module in (sys.modules[__name__], media, core_requests, template, schema_types):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()


def cache_files(
    manifest: Manifest, *, base_dir: Path, root: Path, forbidden: Sequence[Path] = ()
) -> list[tuple[str, str]]:
    """The text of each file named in the ``cache`` block, as (relative name, text)."""
    assert manifest.spec.cache is not None
    found = []
    for index, pattern in enumerate(manifest.spec.cache.files):
        field = f"cache.files.{index}"
        try:
            if any(ch in pattern for ch in "*?["):
                paths = confine_glob(pattern, base_dir=base_dir, root=root, forbidden=forbidden)
            else:
                paths = [confine_file(pattern, base_dir=base_dir, root=root, forbidden=forbidden)]
        except PathError as exc:
            raise ManifestError(str(exc), field=field) from None
        for path in paths:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise ManifestError(
                    f"{path.name} is not UTF-8 text; only text files can be cached", field=field
                ) from None
            except OSError as exc:
                reason = f"cannot read {path.name}: {exc.strerror}"
                raise ManifestError(reason, field=field) from None
            found.append((str(path.relative_to(root)), text))
    return found


def _relation(con: Connection, manifest: Manifest, build: _Build) -> str:
    """SQL for the source's rows (a table function call or a temp table name)."""
    source = manifest.spec.source
    if source.path is not None:
        files = _files(
            manifest,
            field="path",
            base_dir=build.base_dir,
            root=build.root,
            forbidden=build.forbidden,
        )
        kind = source.format or FORMATS.get(files[0].suffix.lower())
        if kind is None:
            raise ManifestError(
                f"cannot tell the format of {files[0].name}; set source.format "
                "(csv, jsonl or parquet)",
                field="source.format",
            )
        # union_by_name lines up the columns of several files, but slows a single one
        union = ", union_by_name = true" if len(files) > 1 else ""
        reader = {
            "csv": "read_csv({}, header = true{})",
            "jsonl": "read_json({}, format = 'newline_delimited'{})",
            "parquet": "read_parquet({}{})",
        }[kind]
        return reader.format(path_list(files), union)
    if source.rows is not None:
        if not source.rows:
            raise ManifestError("rows is empty", field="source.rows")
        inline = build.scratch / "rows.json"
        inline.write_text(json.dumps(source.rows, ensure_ascii=False, default=str))
        return f"read_json({literal(str(inline))}, format = 'array')"
    if source.query is not None:
        rows = query_source.run(
            source.query,
            base_dir=build.base_dir,
            root=build.root,
            scratch=build.scratch,
            timeout_s=source.timeout_s,
            forbidden=build.forbidden,
            max_rows=build.query_rows,
            cancel=build.cancel,
        )
        return f"read_parquet({literal(str(rows))})"
    raise AssertionError("requests sources are read by _passthrough")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]


def _load(con: Connection, manifest: Manifest, build: _Build) -> tuple[str, list[tuple[str, str]]]:
    """The source's rows as SQL (read when the set is written) and their columns.

    Binding a CSV reader sniffs the file (~60 ms), so it is bound twice only: here and in
    the one statement that writes the set.
    """
    relation = _relation(con, manifest, build)
    try:
        described = con.execute(f"describe select * from {relation}").fetchall()
    except Error as exc:
        raise _unreadable(manifest, exc) from None
    return relation, [(str(r[0]), str(r[1])) for r in described]


def _unreadable(manifest: Manifest, exc: Exception) -> ManifestError:
    field = f"source.{manifest.spec.source.kind}"
    return ManifestError(f"cannot read the source: {_first_line(exc)}", field=field)


def _render_sql(manifest: Manifest, columns: list[tuple[str, str]]) -> str:
    """The template as one SQL expression over the source's columns; unknown ones are errors."""
    assert manifest.spec.prompt is not None
    names = {name.lower(): name for name, _ in columns}
    pieces = []
    for part in template.parse(manifest.spec.prompt.template):
        if isinstance(part, template.Literal):
            pieces.append(literal(part.text))
            continue
        actual = names.get(part.name.lower())
        if actual is None:
            available = ", ".join(name for name, _ in columns)
            raise ManifestError(
                f"the template uses {{{{ {part.name} }}}} but the source has no such column "
                f"(columns: {available})",
                field="prompt.template",
            )
        pieces.append(f"coalesce(cast({ident(actual)} as varchar), '')")
    return "concat(" + ", ".join(pieces or ["''"]) + ")"


def _column(name: str, columns: list[tuple[str, str]], *, field: str, what: str) -> str:
    """The source column called ``name`` (case-insensitively), as SQL; else a located error."""
    names = {n.lower(): n for n, _ in columns}
    if name.lower() not in names:
        available = ", ".join(n for n, _ in columns)
        raise ManifestError(f"no column {name!r} for {what} (columns: {available})", field=field)
    return ident(names[name.lower()])


def _embedding_sql(manifest: Manifest, columns: list[tuple[str, str]]) -> tuple[str, str]:
    """SQL for an embedding's per-row title (`` || ...``: ``,"title":<json>``, or nothing when
    NULL) and for the set's vector-size column; two empty strings for generation."""
    spec = manifest.spec
    if spec.task != "embed":
        return "", ""
    title = ""
    if spec.embedding is not None and spec.embedding.title_column is not None:
        column = _column(
            spec.embedding.title_column,
            columns,
            field="embedding.title_column",
            what="the title",
        )
        named = literal(',"title":')
        title = f" || coalesce({named} || to_json(cast({column} as varchar))::varchar, '')"
    return title, f", {int(spec.dimensions or 0)}::integer as {ident(EMBED_DIMENSIONS_COLUMN)}"


def _key_sql(manifest: Manifest, columns: list[tuple[str, str]]) -> str:
    key = manifest.spec.source.key
    if key is None:
        return f"substr(sha256(to_json(struct_pack({_all_columns(columns)}))), 1, {ROW_HASH_CHARS})"
    names = {name.lower(): name for name, _ in columns}
    if key.lower() not in names:
        available = ", ".join(name for name, _ in columns)
        raise ManifestError(
            f"no column {key!r} for the key (columns: {available})", field="source.key"
        )
    return f"cast({ident(names[key.lower()])} as varchar)"


def _all_columns(columns: list[tuple[str, str]]) -> str:
    return ", ".join(f"{ident(name)} := {ident(name)}" for name, _ in columns)


def _renamed(
    columns: list[tuple[str, str]], answer_columns: set[str]
) -> tuple[str, list[tuple[str, str]]]:
    """Source columns for the set, renamed ``source_<name>`` where they clash with ours or
    with the answer's (output_schema) columns."""
    selected, stored = [], []
    for name, kind in columns:
        clash = name.lower() in RESERVED_COLUMNS or name.lower() in answer_columns
        target = f"source_{name}" if clash else name
        selected.append(f"{ident(name)} as {ident(target)}")
        stored.append((target, kind))
    return (", " + ", ".join(selected)) if selected else "", stored


def _check_keys(con: Connection, written: str, source_keys: str) -> None:
    """Every row has a key and no key repeats.

    The set is written out of source order, so a failure is located on ``source_keys``
    (the keys as the source lists them), read again in order: the rare path pays for it.
    """
    bad = con.execute(
        f"select count(*) filter (key is null), count(*) - count(distinct key) from {written}"
    ).fetchone()
    if not bad or (bad[0] == 0 and bad[1] == 0):
        return
    con.execute("set preserve_insertion_order = true")
    con.execute(
        "create temp table numbered as "
        f"select row_number() over () as row_number, key from {source_keys}"
    )
    if bad[0]:
        (first,) = con.execute(
            "select min(row_number) from numbered where key is null"
        ).fetchone() or (0,)
        raise ManifestError(f"row {first} has no key (the key column is empty)", field="source.key")
    dupes = con.execute(
        "select key, list(row_number order by row_number) from numbered group by key "
        "having count(*) > 1 order by min(row_number) limit 3"
    ).fetchall()
    detail = "; ".join(f"{key!r} at rows {', '.join(map(str, rows[:5]))}" for key, rows in dupes)
    raise ManifestError(f"duplicate keys: {detail}", field="source.key")


def build_requests(
    manifest: Manifest,
    *,
    base_dir: Path,
    root: Path,
    out: Path,
    cache_digest: str = "",
    forbidden: Sequence[Path] = (),
    query_rows: int | None = None,
    cancel: threading.Event | None = None,
) -> RequestSet:
    """Render every source row into a request; write the set to ``out`` (Parquet, atomic).

    ``forbidden`` (see ``private_paths``) are files no source may read. ``query_rows`` cuts
    a query source to that many rows (validation needs columns and a sample, not the whole
    query); ``cancel`` stops a running query (the daemon's stop event).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gbatch-build-", dir=out.parent) as scratch_dir:
        build = _Build(
            base_dir=base_dir,
            root=root,
            scratch=Path(scratch_dir),
            forbidden=tuple(p.resolve() for p in forbidden),
            query_rows=query_rows,
            cancel=cancel,
        )
        con = memory(temp_dir=build.scratch / "spill", ordered=False)
        try:
            if manifest.spec.source.requests is not None:
                select, source_keys, columns = _passthrough(
                    con, manifest, build, salt=hash_salt(manifest, cache_digest)
                )
            else:
                select, source_keys, columns = _templated(
                    con, manifest, build, cache_digest=cache_digest
                )
            # Rendered, hashed and written in one streaming pass; checked on the file after.
            with replacing(out) as partial:
                try:
                    con.execute(f"copy ({select}) to {literal(str(partial))} ({SET_FORMAT})")
                except Error as exc:
                    raise _unreadable(manifest, exc) from None
                written = f"read_parquet({literal(str(partial))})"
                _check_keys(con, written, source_keys)
                count, size = con.execute(
                    f"select count(*), coalesce(sum(request_bytes), 0) from {written}"
                ).fetchone() or (0, 0)
        finally:
            con.close()
    return RequestSet(path=out, count=int(count), total_bytes=int(size), columns=columns)


def _templated(
    con: Connection, manifest: Manifest, build: _Build, *, cache_digest: str
) -> tuple[str, str, list[tuple[str, str]]]:
    """The SELECT that renders every source row into a request, the source's keys in order
    (for error messages), and the stored source columns."""
    relation, columns = _load(con, manifest, build)
    shape = request_shape(manifest, cache_digest=cache_digest)
    text = _render_sql(manifest, columns)
    key = _key_sql(manifest, columns)
    source_keys = f"(select {key} as key from {relation})"
    schema = manifest.spec.output_schema
    answers = {n.lower() for n, _ in schema_types.columns(schema)} if schema else set()
    if manifest.spec.task == "embed":
        answers.add("embedding")  # the vector's column
    extra, stored = _renamed(columns, answers)
    title, dimensions = _embedding_sql(manifest, columns)
    extra += dimensions
    closing = (f"{literal(shape.close)}{title} || " if shape.close else "") + literal(shape.suffix)
    opening = literal(shape.prefix)
    assert manifest.spec.prompt is not None
    if manifest.spec.prompt.media:
        relation, parts = media.with_media(
            con,
            manifest,
            relation=relation,
            columns=columns,
            base_dir=build.base_dir,
            root=build.root,
            forbidden=build.forbidden,
        )
        extra += ", columns('^__media_')"
        opening = f"{literal(PARTS_OPEN)} || {parts} || {literal(shape.prefix[len(PARTS_OPEN) :])}"
    select = f"""
        select key, sha256({literal(shape.salt)} || request) as request_hash, request,
               strlen(request) as request_bytes{extra}
        from (
            select {key} as key,
                   {opening} || to_json({text})::varchar || {closing} as request,
                   *
            from {relation}
        )
        """
    return select, source_keys, stored


def _passthrough(
    con: Connection, manifest: Manifest, build: _Build, *, salt: str
) -> tuple[str, str, list[tuple[str, str]]]:
    """The SELECT over a ready-made requests JSONL (checked line by line first), its keys
    in line order, and no source columns."""
    paths = _files(
        manifest,
        field="requests",
        base_dir=build.base_dir,
        root=build.root,
        forbidden=build.forbidden,
    )
    if len(paths) != 1:  # line numbers in messages must name one file
        raise ManifestError(
            f"requests names one file; {len(paths)} match {manifest.spec.source.requests!r}",
            field="source.requests",
        )
    (path,) = paths
    try:
        con.execute(
            f"""
            create temp table lines as
            select row_number() over () as row_number, key, request
            from read_json({literal(str(path))}, format = 'newline_delimited',
                           columns = {{'key': 'VARCHAR', 'request': 'JSON'}})
            """
        )
    except Error as exc:
        raise ManifestError(
            f"cannot read {path.name}: {_first_line(exc)}", field="source.requests"
        ) from None
    bad = con.execute(
        "select row_number from lines where request is null or json_type(request) != 'OBJECT' "
        "order by row_number limit 1"
    ).fetchone()
    if bad:
        raise ManifestError(
            f"line {bad[0]} of {path.name} has no request object", field="source.requests"
        )
    _, dimensions = _embedding_sql(manifest, [])
    select = f"""
        select key, sha256({literal(salt)} || request::varchar) as request_hash,
               request::varchar as request, strlen(request::varchar) as request_bytes
               {dimensions}
        from lines
        """
    return select, "(select key from lines order by row_number)", []


def write_jsonl(
    requests: Path,
    out: Path,
    *,
    cache_name: str | None = None,
    media_uris: dict[str, str] | None = None,
) -> tuple[int, int]:
    """The set's rows as ``{"key", "request"}`` JSONL lines.

    The request is already JSON text, so each line is glued as text (no re-parsing) and
    written with the CSV writer in a mode that adds nothing: one column, no quoting. Lines
    come out of order (keys name them), on every core.
    ``cache_name`` replaces the cache placeholder the set was built with, ``media_uris``
    (sha256 -> uploaded file uri) the media placeholders.
    """
    con = memory(ordered=False)
    relation, request = f"read_parquet({literal(str(requests))}) r", "r.request"
    count = media.media_columns(requests)
    if count:
        relation, request = media.with_uris(
            con, f"read_parquet({literal(str(requests))})", media_uris or {}, count
        )
    if cache_name is not None:
        placeholder = json.dumps(CACHE_PLACEHOLDER)
        request = f"replace({request}, {literal(placeholder)}, {literal(json.dumps(cache_name))})"
    try:
        with replacing(out) as partial:
            con.execute(
                f"""
                copy (
                    select '{{"key":' || to_json(r.key::varchar) || ',"request":' || {request}
                        || '}}'
                    from {relation}
                ) to {literal(str(partial))}
                (format csv, header false, quote '', escape '', delimiter '\x1f')
                """
            )
        row = con.execute(f"select count(*) from read_parquet({literal(str(requests))})").fetchone()
    finally:
        con.close()
    return int(row[0]) if row else 0, out.stat().st_size
