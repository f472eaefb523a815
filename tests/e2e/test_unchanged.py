"""Unchanged inputs are not built twice, and no real change is ever taken for unchanged.

A request set is built once per apply (validation builds it, planning takes it over) and not
at all when the manifest and every input file are unchanged by size, mtime and content
digest; the diff is skipped too while the ledger is the one the set was settled against.
Builds are counted by wrapping ``sources.build_requests``; requests at the emulator.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest

from runner.adapters import ledger, sources
from runner.core.loader import load_file
from runner.emulator import Emulator
from runner.engine import validate
from tests.conftest import Gbatch
from tests.e2e.test_incremental import requests_received

ROWS = 200
MANIFEST = (
    "model: gemini-2.5-flash\nsource: {path: rows.csv, key: id}\n"
    "prompt: {template: 'Say {{ word }}'}\n"
)


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The manifests whose request set was built (validation or planning), in order."""
    seen: list[str] = []
    real: Callable[..., Any] = sources.build_requests

    def counting(manifest: Any, **kwargs: Any) -> Any:
        seen.append(manifest.name)
        return real(manifest, **kwargs)

    monkeypatch.setattr(sources, "build_requests", counting)
    return seen


def write_rows(gbatch: Gbatch, words: dict[int, str] | None = None) -> Path:
    data = gbatch.manifests / "rows.csv"
    words = words or {}
    data.write_text("id,word\n" + "".join(f"{i},{words.get(i, f'w{i:03}')}\n" for i in range(ROWS)))
    gbatch.write("rows.yaml", MANIFEST)
    return data


def apply(gbatch: Gbatch) -> str:
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    return result.out


def test_a_set_is_built_once_per_apply_and_not_at_all_when_nothing_changed(
    gbatch: Gbatch, emulator: Emulator, builds: list[str]
) -> None:
    write_rows(gbatch)
    apply(gbatch)
    assert builds == ["rows"]  # validation built it; planning (and the retry round) took it
    assert requests_received(emulator) == [ROWS]
    builds.clear()
    out = apply(gbatch)
    assert f"{ROWS} total, 0 new, 0 changed, 0 retry, {ROWS} unchanged" in out
    plan = gbatch("plan", "--no-count-tokens", "manifests")
    assert plan.code == 0, plan.err
    assert f"{ROWS} unchanged" in plan.out
    assert gbatch("validate", "manifests").code == 0
    assert builds == []
    assert requests_received(emulator) == [ROWS]
    assert gbatch.sql("select count(*) from rows") == [(ROWS,)]


def test_a_file_rewritten_with_the_same_size_and_mtime_is_built_again(
    gbatch: Gbatch, emulator: Emulator, builds: list[str]
) -> None:
    data = write_rows(gbatch)
    apply(gbatch)
    apply(gbatch)  # settled
    before = data.stat()
    write_rows(gbatch, {7: "x007"})  # same length as w007
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (data.stat().st_size, data.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    builds.clear()
    out = apply(gbatch)
    assert builds == ["rows"]  # the content digest differs
    assert "1 changed" in out
    assert requests_received(emulator) == [ROWS, 1]
    assert gbatch.sql("select text from rows where key = '7'") == [("echo: Say x007",)]


def test_a_ledger_that_lost_a_row_is_diffed_again(gbatch: Gbatch, emulator: Emulator) -> None:
    write_rows(gbatch)
    apply(gbatch)
    apply(gbatch)  # settled against this ledger
    (outcome,) = sorted((gbatch.state_dir / "ledger" / "rows").glob("*.parquet"))
    con = duckdb.connect()
    con.execute(
        f"copy (select * from read_parquet('{outcome}') where key != '42') "
        f"to '{outcome}.part' (format parquet)"
    )
    con.close()
    os.replace(f"{outcome}.part", outcome)
    out = apply(gbatch)
    assert f"{ROWS - 1} unchanged" in out  # diffed again: the row is missing ...
    assert "1 answered before (copied, not paid again)" in out  # ... and copied, not resent
    assert requests_received(emulator) == [ROWS]
    assert gbatch.sql("select status from rows where key = '42'") == [("succeeded",)]
    assert f"{ROWS} unchanged" in apply(gbatch)  # settled again
    assert requests_received(emulator) == [ROWS]


def test_a_changed_manifest_is_built_again(
    gbatch: Gbatch, emulator: Emulator, builds: list[str]
) -> None:
    write_rows(gbatch)
    apply(gbatch)
    apply(gbatch)
    gbatch.write("rows.yaml", MANIFEST.replace("Say", "Spell"))
    builds.clear()
    out = apply(gbatch)
    assert builds == ["rows"]
    assert f"{ROWS} changed" in out
    assert requests_received(emulator) == [ROWS, ROWS]


def test_sets_that_cannot_be_fingerprinted_are_always_built(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("id,word\n1,a\n")
    query = tmp_path / "query.yaml"
    query.write_text(
        "model: gemini-2.5-flash\nsource: {query: \"select * from read_csv('rows.csv')\", "
        "key: id}\nprompt: {template: 'Say {{ word }}'}\n"
    )
    (loaded,) = load_file(query, root=tmp_path)
    assert validate.fingerprint(loaded, cache_digest="") is None
    csv = tmp_path / "csv.yaml"
    csv.write_text(MANIFEST)
    (loaded,) = load_file(csv, root=tmp_path)
    first = validate.fingerprint(loaded, cache_digest="")
    assert first is not None
    assert validate.fingerprint(loaded, cache_digest="other") != first


def test_the_streamed_set_digest_is_the_one_recorded_states_hold(tmp_path: Path) -> None:
    path = tmp_path / "set.parquet"
    con = duckdb.connect()
    con.execute(
        f"copy (select 'k' || (i * 7919 % 120001) as key, sha256(i::varchar) as request_hash "
        f"from range(120000) t(i)) to '{path}' (format parquet)"
    )
    (recorded,) = con.execute(
        "select sha256(coalesce(string_agg(key || chr(9) || request_hash, chr(10) order by key),"
        f" '')) from read_parquet('{path}')"
    ).fetchone() or ("",)
    con.close()
    assert ledger.set_digest(path) == recorded


def test_validation_hands_over_nothing_for_a_file_changed_since(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("id,word\n1,a\n")
    path = tmp_path / "rows.yaml"
    path.write_text(MANIFEST)
    (loaded,) = load_file(path, root=tmp_path)
    handover = validate.Handover()
    assert validate.check_data(loaded, handover=handover) is None
    taken = handover.take(loaded, "")
    assert taken is not None and taken[1] is not None and taken[1].exists()
    assert taken[0] == validate.fingerprint(loaded, cache_digest="")
    assert validate.check_data(loaded, handover=handover) is None
    (tmp_path / "rows.csv").write_text("id,word\n1,b\n2,c\n")  # changed before the plan
    assert handover.take(loaded, "") is None  # the plan stamps and builds anew
