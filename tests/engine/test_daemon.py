"""The daemon's decisions, driven in-process (no watcher thread) against the fake backend:
what a resync re-applies, the mass-delete guard, and the health checks. Real files, real
DuckDB and SQLite; the watcher and the HTTP path are covered by tests/e2e/test_watch.py."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from runner.adapters import sources
from runner.adapters.watcher import ManifestWatcher
from runner.core.clock import FakeClock
from runner.core.lifecycle import Phase
from runner.engine import reconcile
from runner.engine.daemon import Daemon, DaemonOptions
from runner.engine.runtime import Runtime
from runner.engine.selection import Selector
from tests.fakes import FakeBackend


def write(root: Path, name: str, rows: list[int], *, extra: str = "") -> Path:
    body = "".join(f"  - {{n: {i}}}\n" for i in rows)
    path = root / f"{name}.yaml"
    path.write_text(
        "model: gemini-2.5-flash\nsource:\n  key: n\n  rows:\n"
        + body
        + "prompt: {template: 'Number {{ n }}'}\n"
        + extra
    )
    return path


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the manifests ``reconcile.apply_manifest`` was called for, in order."""
    calls: list[str] = []
    real = reconcile.apply_manifest

    def spy(rt: Runtime, loaded: object) -> object:
        calls.append(loaded.manifest.name)  # type: ignore[attr-defined]
        return real(rt, loaded)  # type: ignore[arg-type]

    monkeypatch.setattr(reconcile, "apply_manifest", spy)
    return calls


def daemon(rt: Runtime, root: Path, **options: object) -> Daemon:
    return Daemon(rt, DaemonOptions(root=root, settle_s=0.0, **options))  # type: ignore[arg-type]


def test_a_resync_applies_only_manifests_whose_content_or_data_changed(
    rt: Runtime,
    tmp_path: Path,
    applied: list[str],
) -> None:
    root = tmp_path / "m"
    root.mkdir()
    write(root, "inline", [1, 2])
    (root / "data.csv").write_text("n\n1\n2\n")
    (root / "file.yaml").write_text(
        "model: gemini-2.5-flash\nsource: {path: data.csv, key: n}\n"
        "prompt: {template: 'Number {{ n }}'}\n"
    )
    (root / "query.yaml").write_text(
        'model: gemini-2.5-flash\nsource: {query: "select 1 as n", key: n}\n'
        "prompt: {template: 'Number {{ n }}'}\n"
    )
    d = daemon(rt, root)
    d.reconcile(None)
    assert sorted(applied) == ["file", "inline", "query"]
    applied.clear()
    d.reconcile(None)
    assert applied == ["query"]  # a query's inputs are unknowable: always rebuilt
    applied.clear()
    (root / "data.csv").write_text("n\n1\n2\n3\n")
    write(root, "inline", [1, 2])  # rewritten with the same content
    d.reconcile(None)
    assert sorted(applied) == ["file", "query"]
    applied.clear()
    d.reconcile(set(), again={"inline"})  # a job of inline's was ingested: look again
    assert applied == ["inline"]


def test_a_data_file_rewritten_with_the_same_size_and_mtime_is_applied_again_on_resync(
    rt: Runtime,
    tmp_path: Path,
    applied: list[str],
) -> None:
    root = tmp_path / "m"
    root.mkdir()
    data = root / "data.csv"
    data.write_text("n\n1\n2\n")
    (root / "file.yaml").write_text(
        "model: gemini-2.5-flash\nsource: {path: data.csv, key: n}\n"
        "prompt: {template: 'Number {{ n }}'}\n"
    )
    d = daemon(rt, root)
    d.reconcile(None)
    before = data.stat()
    data.write_text("n\n1\n3\n")  # same size; the mtime is put back below
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    d.reconcile(None)
    assert applied == ["file", "file"]  # the content digest differs
    assert rt.state.manifest("file") is not None
    assert sorted(j.requests for j in rt.state.jobs(manifest="file")) == [1, 2]


def test_a_manifest_applied_again_unchanged_is_not_built_again(
    rt: Runtime, tmp_path: Path, applied: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "m"
    root.mkdir()
    (root / "data.csv").write_text("n\n1\n2\n")
    (root / "file.yaml").write_text(
        "model: gemini-2.5-flash\nsource: {path: data.csv, key: n}\n"
        "prompt: {template: 'Number {{ n }}'}\n"
    )
    builds: list[str] = []
    real = sources.build_requests

    def counting(manifest: Any, **kwargs: Any) -> Any:
        builds.append(manifest.name)
        return real(manifest, **kwargs)

    monkeypatch.setattr(sources, "build_requests", counting)
    d = daemon(rt, root)
    d.reconcile(None)
    assert builds == ["file"]  # validation built it; the apply took it over
    d.reconcile(set(), again={"file"})  # a job came back with failed lines: apply again
    assert applied == ["file", "file"]
    assert builds == ["file"]  # the inputs are those of the recorded set: nothing rebuilt


def test_an_invalid_manifest_restored_to_its_last_good_content_is_applied_again(
    rt: Runtime,
    tmp_path: Path,
    applied: list[str],
) -> None:
    root = tmp_path / "m"
    root.mkdir()
    path = write(root, "nums", [1])
    good = path.read_text()
    d = daemon(rt, root)
    d.reconcile(None)
    path.write_text(good.replace("model:", "modle:"))
    d.reconcile({path})
    row = rt.state.manifest("nums")
    assert row is not None and row.status == "invalid"
    path.write_text(good)
    d.reconcile({path})
    row = rt.state.manifest("nums")
    assert row is not None and row.status == "ok"
    assert applied == ["nums", "nums"]


def test_the_mass_delete_guard_holds_vanished_manifests_until_they_return(
    rt: Runtime,
    tmp_path: Path,
) -> None:
    root = tmp_path / "m"
    root.mkdir()
    paths = [write(root, f"m{i}", [i]) for i in range(4)]
    texts = [p.read_text() for p in paths]
    d = daemon(rt, root)
    d.reconcile(None)
    for path in paths[:3]:
        path.unlink()
    d.reconcile(None)
    d.reconcile(None)  # past the (zero) settle window: still held
    statuses = {m.name: (m.status, m.last_error or "") for m in rt.state.manifests()}
    for name in ("m0", "m1", "m2"):
        assert statuses[name][0] == "missing"
        assert "3 of 4 manifests vanished at once" in statuses[name][1]
    assert statuses["m3"] == ("ok", "")
    for path, text in zip(paths[:3], texts[:3], strict=True):
        path.write_text(text)
    d.reconcile(None)
    assert {m.status for m in rt.state.manifests()} == {"ok"}
    assert d.health_problems() == []


def test_confirmed_deletions_are_removed_and_results_rows_are_not_touched(
    rt: Runtime,
    tmp_path: Path,
) -> None:
    root = tmp_path / "m"
    root.mkdir()
    paths = [write(root, f"m{i}", [i]) for i in range(3)]
    d = daemon(rt, root, confirm_deletions=True)
    d.reconcile(None)
    for path in paths[:2]:
        path.unlink()
    d.reconcile(None)
    statuses = {m.name: m.status for m in rt.state.manifests()}
    assert statuses == {"m0": "removed", "m1": "removed", "m2": "ok"}


def test_a_single_deletion_waits_out_the_settle_window(
    rt: Runtime,
    tmp_path: Path,
) -> None:
    root = tmp_path / "m"
    root.mkdir()
    paths = [write(root, f"m{i}", [i]) for i in range(3)]
    d = Daemon(rt, DaemonOptions(root=root, settle_s=3600))
    d.reconcile(None)
    paths[0].unlink()
    d.reconcile(None)
    row = rt.state.manifest("m0")
    assert row is not None and row.status == "missing"
    d._missing["m0"].since -= 3601  # the settle window has passed
    d.reconcile(None)
    row = rt.state.manifest("m0")
    assert row is not None and row.status == "removed"


def test_health_fails_when_the_watcher_dies_or_the_loop_stops_turning(
    rt: Runtime,
    tmp_path: Path,
) -> None:
    root = tmp_path / "m"
    root.mkdir()
    d = daemon(rt, root, stale_after_s=60.0)
    watcher = ManifestWatcher(root, on_path=lambda path: None)
    watcher.start()
    d._watcher = watcher
    assert d.health_problems() == []
    d._beat = time.monotonic() - 120
    assert d.health_problems() == ["the reconcile loop has not turned for 120s"]
    d._beat = time.monotonic()
    watcher.stop()
    assert d.health_problems() == ["the file watcher is dead"]


def test_a_changed_cache_file_or_media_manifest_is_applied_again_on_resync(
    rt: Runtime,
    tmp_path: Path,
    applied: list[str],
) -> None:
    root = tmp_path / "m"
    root.mkdir()
    (root / "guide.md").write_text("guide " * 1000)
    write(root, "cached", [1], extra="cache: {files: [guide.md]}\n")
    d = daemon(rt, root)
    d.reconcile(None)
    d.reconcile(None)
    assert applied == ["cached"]  # unchanged: skipped
    (root / "guide.md").write_text("a new guide " * 1000)
    d.reconcile(None)
    assert applied == ["cached", "cached"]


def test_one_job_raising_an_unforeseen_error_does_not_stop_the_others(
    rt: Runtime, tmp_path: Path
) -> None:
    """A fault boundary around every job: the error is that job's, the cycle goes on, the
    job is tried again next cycle, and nothing is created twice."""
    root = tmp_path / "m"
    root.mkdir()
    write(root, "first", [1, 2])
    write(root, "second", [3, 4])
    fake = rt.backend
    assert isinstance(fake, FakeBackend)
    fake.enqueue("upload", RuntimeError("an SDK bug nobody mapped"))
    d = daemon(rt, root)
    d.reconcile(None)  # does not raise
    jobs = {j.manifest: j for j in rt.state.jobs()}
    assert "internal error: RuntimeError: an SDK bug nobody mapped" in (jobs["first"].error or "")
    assert jobs["second"].remote_name is not None  # the other manifest went on
    row = rt.state.manifest("first")
    assert row is not None and "RuntimeError" in (row.last_error or "")
    d._follow()
    d._follow()
    assert {j.phase for j in rt.state.jobs()} == {Phase.INGESTED}
    assert fake.count("create") == 2
    assert d.health_problems() == []


def test_an_emptied_manifest_file_is_invalid_not_deleted(rt: Runtime, tmp_path: Path) -> None:
    """A failed editor write leaves 0 bytes: the last good version keeps running (no
    cancel even with on_delete: cancel) and status lists the file as invalid."""
    root = tmp_path / "m"
    root.mkdir()
    path = write(root, "keep", [1, 2], extra="policy: {on_delete: cancel}\n")
    fake = rt.backend
    assert isinstance(fake, FakeBackend)
    fake.hold = True
    d = daemon(rt, root)
    d.reconcile(None)
    path.write_text("")
    d.reconcile(None)
    d.reconcile(None)  # past the (zero) settle window: still not a deletion
    row = rt.state.manifest("keep")
    assert row is not None and row.status == "invalid"
    assert fake.count("cancel") == 0
    ((invalid_path, error, _),) = rt.state.invalid_files()
    assert invalid_path == str(path) and "empty" in error.lower()
    write(root, "keep", [1, 2], extra="policy: {on_delete: cancel}\n")
    d.reconcile(None)
    assert rt.state.invalid_files() == []


def test_the_settle_window_and_the_health_staleness_run_on_the_clock(
    timed: Runtime, clock: FakeClock, tmp_path: Path
) -> None:
    root = tmp_path / "m"
    root.mkdir()
    write(root, "a", [1])
    path = write(root, "b", [2])
    d = Daemon(timed, DaemonOptions(root=root, settle_s=30.0, mass_delete_fraction=1.0))
    d.reconcile(None)
    path.unlink()
    d.reconcile(None)
    clock.advance(29)
    d.reconcile(None)
    row = timed.state.manifest("b")
    assert row is not None and row.status == "missing"  # inside the settle window
    clock.advance(2)
    d.reconcile(None)
    row = timed.state.manifest("b")
    assert row is not None and row.status == "removed"
    d._beat = clock.monotonic()
    clock.advance(599)
    assert d.health_problems() == []
    clock.advance(2)
    assert d.health_problems() == ["the reconcile loop has not turned for 601s"]


def test_a_daemon_with_a_selector_serves_only_the_manifests_it_picks(
    rt: Runtime, tmp_path: Path, applied: list[str]
) -> None:
    root = tmp_path / "m"
    root.mkdir()
    for name, team in (("mine", "a"), ("theirs", "b")):
        (root / f"{name}.yaml").write_text(
            "apiVersion: gbatch/v1\nkind: Batch\n"
            f"metadata: {{name: {name}, labels: {{team: {team}}}}}\n"
            "spec:\n  model: gemini-2.5-flash\n  source: {key: n, rows: [{n: 1}]}\n"
            "  prompt: {template: 'Number {{ n }}'}\n"
        )
    d = daemon(rt, root, selector=Selector.parse(["team=a"]))
    d.reconcile(None)
    assert applied == ["mine"]
    assert [m.name for m in rt.state.manifests()] == ["mine"]
