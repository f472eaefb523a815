"""Request sets over real files: written on every core in no particular order, yet every row
is there once with its own request, and a bad key is located at its row in the source."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from runner.adapters.sources import build_requests, write_jsonl
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
