"""Request sets over real files: written on every core in no particular order, yet every row
is there once with its own request, and a bad key is located at its row in the source."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pytest

from runner.adapters.sources import build_requests, cache_files, private_paths, write_jsonl
from runner.core.manifest import Manifest
from runner.core.requests import request_hash, request_shape
from runner.errors import ManifestError

ROWS = 300_000  # several row groups, so both cores write parts of the set


def _manifest(path: str) -> Manifest:
    spec = {
        "model": "gemini-2.5-flash",
        "source": {"path": path, "key": "id"},
        "prompt": {"template": "Describe {{ name }}"},
    }
    return Manifest.model_validate({"metadata": {"name": "m"}, "spec": spec})


def _csv(path: Path, duplicate_at: int | None = None) -> Path:
    con = duckdb.connect()
    ids = "i" if duplicate_at is None else f"case when i = {duplicate_at - 1} then 7 else i end"
    con.execute(
        f"copy (select {ids} as id, 'item ' || i || ' ' || repeat('x', i % 50) as name "
        f"from range({ROWS}) t(i)) to '{path}' (format csv, header true)"
    )
    con.close()
    return path


def test_every_row_is_in_the_set_and_the_upload_once_with_its_own_request(
    tmp_path: Path,
) -> None:
    _csv(tmp_path / "rows.csv")
    manifest = _manifest("rows.csv")
    built = build_requests(manifest, base_dir=tmp_path, root=tmp_path, out=tmp_path / "set.pq")
    assert built.count == ROWS
    shape = request_shape(manifest)
    con = duckdb.connect()
    wrong = con.execute(
        f"select count(*), count(distinct key) from read_parquet('{tmp_path / 'set.pq'}') "
        "where request != ? || to_json('Describe ' || name)::varchar || ? "
        "or request_hash != sha256(? || request)",
        [shape.prefix, shape.suffix, shape.salt],
    ).fetchone()
    assert wrong == (0, 0)
    count, _ = write_jsonl(tmp_path / "set.pq", tmp_path / "upload.jsonl")
    lines = (tmp_path / "upload.jsonl").read_text().splitlines()
    assert count == len(lines) == ROWS
    sample = {json.loads(line)["key"]: json.loads(line)["request"] for line in lines[::997]}
    assert len(sample) == len(lines[::997])
    for key, request in sample.items():
        name = f"item {key} {'x' * (int(key) % 50)}"
        assert request == json.loads(shape.render(f"Describe {name}"))
    key, request = next(iter(sample.items()))  # lines come in no particular order
    one = json.dumps(request, ensure_ascii=False, separators=(",", ":"))
    stored = con.execute(
        f"select request_hash from read_parquet('{tmp_path / 'set.pq'}') where key = ?", [key]
    ).fetchone()
    assert stored == (request_hash(shape.salt, one),)
    con.close()


def test_a_duplicate_key_far_down_a_large_file_is_reported_at_its_source_row(
    tmp_path: Path,
) -> None:
    _csv(tmp_path / "rows.csv", duplicate_at=ROWS - 10)
    with pytest.raises(ManifestError) as caught:
        build_requests(
            _manifest("rows.csv"), base_dir=tmp_path, root=tmp_path, out=tmp_path / "set.pq"
        )
    assert f"duplicate keys: '7' at rows 8, {ROWS - 10}" in str(caught.value)
    assert not (tmp_path / "set.pq").exists()


def _spec_manifest(**spec: object) -> Manifest:
    body = {"model": "gemini-2.5-flash", "prompt": {"template": "x"}, **spec}
    return Manifest.model_validate({"metadata": {"name": "m"}, "spec": body})


@pytest.fixture
def linked_root(tmp_path: Path) -> Path:
    """A root whose files are each a hard link to a file outside it."""
    root = tmp_path / "root"
    root.mkdir()
    for name, text in {
        "data.csv": "name\nAda\n",
        "lines.jsonl": '{"key": "a", "request": {"contents": []}}\n',
        "style.md": "house style\n",
        "photo.png": "not really a png",
    }.items():
        outside = tmp_path / f"outside-{name}"
        outside.write_text(text)
        os.link(outside, root / name)
    return root


@pytest.mark.parametrize(
    ("spec", "field", "shown"),
    [
        ({"source": {"path": "data.csv"}}, "source.path", "data.csv"),
        ({"source": {"path": "*.csv"}}, "source.path", "data.csv"),
        ({"source": {"requests": "lines.jsonl"}, "prompt": None}, "source.requests", "lines.jsonl"),
        (
            {"source": {"rows": [{"p": "photo.png"}]}, "prompt": {"template": "x", "media": ["p"]}},
            "prompt.media",
            "photo.png",
        ),
    ],
)
def test_a_hard_linked_source_file_is_refused_with_its_name_and_field(
    linked_root: Path, spec: dict[str, object], field: str, shown: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        build_requests(
            _spec_manifest(**spec),
            base_dir=linked_root,
            root=linked_root,
            out=linked_root.parent / "set.pq",
        )
    assert caught.value.field == field
    assert f"{shown} has 2 hard links; source files must have exactly one" in str(caught.value)


def test_a_hard_linked_cache_file_is_refused(linked_root: Path) -> None:
    manifest = _spec_manifest(source={"rows": [{"a": 1}]}, cache={"files": ["style.md"]})
    with pytest.raises(ManifestError) as caught:
        cache_files(manifest, base_dir=linked_root, root=linked_root)
    assert caught.value.field == "cache.files.0"
    assert "style.md has 2 hard links" in str(caught.value)


def test_no_source_may_read_gbatchs_own_files(tmp_path: Path) -> None:
    state, db = tmp_path / ".gbatch", tmp_path / "gbatch.duckdb"
    (state / "answers").mkdir(parents=True)
    (state / "answers" / "job.jsonl").write_text('{"key": "a", "request": {"contents": []}}\n')
    db.write_text("x")
    forbidden = private_paths(state_dir=state, db=db)
    cases = [
        ({"source": {"path": ".gbatch/answers/job.jsonl"}}, "source.path"),
        ({"source": {"path": "gbatch.duckdb", "format": "csv"}}, "source.path"),
        ({"source": {"requests": ".gbatch/answers/*.jsonl"}, "prompt": None}, "source.requests"),
        (
            {
                "source": {"rows": [{"p": "gbatch.duckdb"}]},
                "prompt": {"template": "x", "media": ["p"]},
            },
            "prompt.media",
        ),
    ]
    for spec, field in cases:
        with pytest.raises(ManifestError) as caught:
            build_requests(
                _spec_manifest(**spec),
                base_dir=tmp_path,
                root=tmp_path,
                out=state / "sets" / "m" / "set.pq",
                forbidden=forbidden,
            )
        assert caught.value.field == field
        assert "is inside gbatch's own files" in str(caught.value), spec
    manifest = _spec_manifest(source={"rows": [{"a": 1}]}, cache={"files": [".gbatch/**/*"]})
    with pytest.raises(ManifestError, match="is inside gbatch's own files"):
        cache_files(manifest, base_dir=tmp_path, root=tmp_path, forbidden=forbidden)


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"source": {"path": "x" * 300 + ".csv"}}, "source.path", "file name too long"),
        (
            {"source": {"rows": [{"p": "a\x00.png"}]}, "prompt": {"template": "x", "media": ["p"]}},
            "prompt.media",
            "is not a usable path: embedded null byte",
        ),
        (
            {
                "source": {"rows": [{"p": "y" * 300 + ".png"}]},
                "prompt": {"template": "x", "media": ["p"]},
            },
            "prompt.media",
            "file name too long",
        ),
    ],
)
def test_a_path_the_os_refuses_is_a_located_error_not_a_crash(
    tmp_path: Path, spec: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        build_requests(
            _spec_manifest(**spec), base_dir=tmp_path, root=tmp_path, out=tmp_path / "set.pq"
        )
    assert caught.value.field == field and message in str(caught.value)


def test_a_root_inside_the_state_dir_reads_its_own_files(tmp_path: Path) -> None:
    state = tmp_path / ".gbatch"
    checkout = state / "checkout"  # `gbatch watch --git` keeps its checkout here
    (checkout / ".git").mkdir(parents=True)
    (checkout / "rows.csv").write_text("id,name\n1,Ada\n")
    (checkout / ".git" / "config").write_text("[remote]\n")
    forbidden = private_paths(state_dir=state, db=tmp_path / "gbatch.duckdb", git_checkout=checkout)
    built = build_requests(
        _manifest("rows.csv"),
        base_dir=checkout,
        root=checkout,
        out=state / "sets" / "m" / "set.pq",
        forbidden=forbidden,
    )
    assert built.count == 1
    with pytest.raises(ManifestError, match="is inside gbatch's own files"):
        build_requests(
            _manifest(".git/config"),
            base_dir=checkout,
            root=checkout,
            out=state / "sets" / "m" / "set.pq",
            forbidden=forbidden,
        )
