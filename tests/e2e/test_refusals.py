"""What the user sees when the API or the state refuses: the right exit code, the error on
the manifest in ``status``, nothing created twice and nothing forgotten. Through the CLI,
against the emulator over HTTP, with real SQLite files."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.emulator import Emulator, Fault
from tests.conftest import Gbatch

MANIFEST = (
    "model: gemini-2.5-flash\nsource: {key: city, rows: [{city: Oslo}, {city: Lima}]}\n"
    "prompt: {template: 'Weather in {{ city }}?'}\n"
)


@pytest.mark.parametrize(
    ("endpoint", "code"), [("batches.create", 401), ("files.upload", 403)], ids=["401", "403"]
)
def test_a_permanent_refusal_exits_3_and_the_manifest_carries_the_error(
    gbatch: Gbatch, emulator: Emulator, endpoint: str, code: int
) -> None:
    gbatch.write("cities.yaml", MANIFEST)
    emulator.add_fault(Fault(endpoint=endpoint, status=code, times=None))
    result = gbatch("apply", "manifests")
    assert result.code == 3, result.out + result.err
    assert str(code) in result.err
    assert gbatch("status").code == 0
    shown = gbatch("query", "select status, last_error from gbatch_manifests", "--format", "csv")
    (row,) = shown.out.splitlines()[1:]
    assert str(code) in row  # the last error, on the manifest's own row
    assert emulator.count("batches.create") == (1 if endpoint == "batches.create" else 0)


def test_an_unreachable_api_exits_3_naming_where_it_looked(
    gbatch: Gbatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    gbatch.write("cities.yaml", MANIFEST)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:9")  # discard: refused
    monkeypatch.setenv("GBATCH_HTTP_TIMEOUT_S", "2")
    monkeypatch.setenv("GBATCH_RETRY_DELAY_S", "0.01")  # the reads' own retries, kept short
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 3, result.out + result.err
    assert "127.0.0.1:9" in result.err
    assert "429" not in result.err  # a refused connection is not a request to back off


def test_a_corrupt_state_database_is_refused_with_exit_4_not_taken_for_a_fresh_start(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    gbatch.write("cities.yaml", MANIFEST)
    assert gbatch("apply", "manifests", "--wait").code == 0
    db = gbatch.state_dir / "state.sqlite"
    for name in ("state.sqlite-wal", "state.sqlite-shm"):
        (gbatch.state_dir / name).unlink(missing_ok=True)
    db.write_bytes(b"")  # a full disk, a bad copy: the file is there but empty
    for command in (["status"], ["apply", "manifests"]):
        result = gbatch(*command)
        assert result.code == 4, result.out + result.err
        assert "state.sqlite" in result.err and "refusing" in result.err
    db.write_bytes(b"this is not a database" * 100)
    result = gbatch("status")
    assert result.code == 4 and "unreadable" in result.err
    assert emulator.count("batches.create") == 1  # nothing was created again


def test_the_state_is_copied_before_a_migration(tmp_path: Path) -> None:
    import sqlite3

    from runner.adapters.state import StateStore

    path = tmp_path / "state.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        "create table migrations (id integer primary key, at text);"
        "insert into migrations values (1, 'then');"
    )
    old.close()
    with pytest.raises(Exception, match="manifests"):
        StateStore(path)  # migration 2 needs migration 1's tables: it fails, the copy stays
    (backup,) = tmp_path.glob("state.sqlite.before-*")
    con = sqlite3.connect(backup)
    assert con.execute("select id from migrations").fetchall() == [(1,)]
    con.close()


def test_an_upload_answered_with_an_error_body_is_retried_and_every_key_answered_once(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    """The real service has answered the finalize chunk with HTTP 200 and an error body
    (python-genai #1547): a failed upload to retry, not a crash of apply or the daemon."""
    gbatch.write("cities.yaml", MANIFEST)
    emulator.add_fault(Fault(endpoint="files.upload", kind="error_body", times=1))
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert emulator.count("batches.create") == 1
    assert gbatch.sql("select key, status from cities order by key") == [
        ("Lima", "succeeded"),
        ("Oslo", "succeeded"),
    ]


def test_inline_answers_without_metadata_are_matched_by_position_never_paid_twice(
    gbatch: Gbatch, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """python-genai #2008: inline answers may come back without their keys; the docs
    promise input order, so they are matched by position (the adapter's tests show that
    answers in another number are kept raw and never resent)."""
    monkeypatch.setenv("GBATCH_INLINE_MAX_BYTES", "1000000")
    gbatch.write("cities.yaml", MANIFEST)
    emulator.add_fault(Fault(endpoint="batches.create", drop_inline_metadata=True, times=1))
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert emulator.count("batches.create") == 1  # never a second, paid job
    assert gbatch.sql("select key, status, text from cities order by key") == [
        ("Lima", "succeeded", "echo: Weather in Lima?"),
        ("Oslo", "succeeded", "echo: Weather in Oslo?"),
    ]
    assert gbatch("apply", "manifests").code == 0 and emulator.count("batches.create") == 1
