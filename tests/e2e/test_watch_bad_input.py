"""`gbatch watch` meeting hostile or broken files: nothing stops the daemon, and a truncated
manifest is invalid (its last good version stays), never a deletion."""

from __future__ import annotations

import json

from runner.emulator import Emulator
from tests.conftest import Gbatch
from tests.e2e.test_watch import Daemon, daemons, manifest, rows, until

__all__ = ["daemons"]  # the fixture, shared with test_watch


def manifest_status(gbatch: Gbatch, name: str) -> tuple[str, str] | None:
    result = gbatch(
        "query",
        f"select status, last_error from gbatch_manifests where name = '{name}'",
        "--format",
        "json",
    )
    found = json.loads(result.out) if result.code == 0 else []
    return (found[0]["status"], found[0]["last_error"] or "") if found else None


def test_truncated_deep_and_nul_manifests_neither_stop_the_daemon_nor_delete_anything(
    gbatch: Gbatch, emulator: Emulator, daemons: list[Daemon]
) -> None:
    gbatch.write("cities.yaml", manifest(["Oslo"]))
    daemon = Daemon(gbatch, "manifests")
    daemons.append(daemon)
    until(lambda: rows(gbatch, "select count(*) from cities") == [(1,)], "first answers")
    (gbatch.manifests / "cities.yaml").write_text("")  # truncated, as `> cities.yaml` does
    gbatch.write("deep.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n")
    gbatch.write(
        "nul.yaml", 'model: gemini-2.5-flash\nsource: {path: "a\\0.csv"}\nprompt: {template: x}\n'
    )
    gbatch.write("towns.yaml", manifest(["Bergen"], name="towns"))
    until(lambda: rows(gbatch, "select count(*) from towns") == [(1,)], "the other manifest")
    until(
        lambda: (manifest_status(gbatch, "cities") or ("",))[0] in ("invalid", "removed"),
        "the truncated manifest's new status",
    )
    status, error = manifest_status(gbatch, "cities") or ("", "")
    assert status == "invalid"
    assert "cities.yaml: empty manifest" in error
    assert rows(gbatch, "select count(*) from cities") == [(1,)]
    log = daemon.output()
    assert "deep.yaml:1:68: nested deeper than 64 levels" in log
    assert "nul.yaml:2:16: source.path: 'a\\x00.csv' is not a usable path" in log
    assert daemon.process.poll() is None
    gbatch.write("cities.yaml", manifest(["Oslo"]))  # restored: the same version, valid again
    until(lambda: (manifest_status(gbatch, "cities") or ("",))[0] == "ok", "cities valid again")
    assert daemon.stop() == 0
    assert emulator.count("batches.create") == 2
