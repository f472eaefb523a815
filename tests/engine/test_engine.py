"""The engine against the fake backend: reconcile, submit, adopt, follow, ingest, with real
DuckDB and SQLite files. The HTTP path is covered by the e2e tests against the emulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.core.loader import load_paths
from runner.engine import cycle, integrity, lifecycle, reconcile
from runner.engine.runtime import Runtime
from runner.errors import StoreBusyError, TransientBackendError, UnclearCreateError
from tests.engine.conftest import rows
from tests.fakes import FakeBackend


def manifests(tmp_path: Path, rows: int = 3, per_job: int = 100) -> dict[str, object]:
    root = tmp_path / "m"
    root.mkdir(exist_ok=True)
    body = "".join(f"  - {{n: {i}}}\n" for i in range(rows))
    (root / "nums.yaml").write_text(
        "model: gemini-2.5-flash\nsource:\n  key: n\n  rows:\n"
        + body
        + "prompt: {template: 'Number {{ n }}'}\n"
        + f"policy: {{max_requests_per_job: {per_job}}}\n"
    )
    loaded, errors = load_paths([root])
    assert not errors
    return {item.manifest.name: item for item in loaded}


def run_to_end(rt: Runtime, loaded: dict[str, object]) -> None:
    report = cycle.tick(rt, loaded, apply=list(loaded))  # type: ignore[arg-type]
    for _ in range(10):
        if report.live == 0:
            return
        report = cycle.tick(rt, loaded)  # type: ignore[arg-type]
    raise AssertionError("jobs did not finish")


def test_apply_follow_ingest_and_reapply_creates_nothing(rt: Runtime, tmp_path: Path) -> None:
    loaded = manifests(tmp_path, rows=5, per_job=2)
    run_to_end(rt, loaded)
    fake = rt.backend
    assert isinstance(fake, FakeBackend)
    assert fake.count("create") == 3
    assert rows(rt, "select count(*), count(*) filter (status = 'succeeded') from nums") == [(5, 5)]
    assert rows(rt, "select text from nums where key = '3'") == [("echo: Number 3",)]
    run_to_end(rt, loaded)
    assert fake.count("create") == 3
    assert {j.phase for j in rt.state.jobs()} == {"ingested"}


def test_a_create_whose_reply_is_lost_is_adopted_not_repeated(rt: Runtime, tmp_path: Path) -> None:
    loaded = manifests(tmp_path)
    fake = rt.backend
    assert isinstance(fake, FakeBackend)
    fake.enqueue("create_lost", UnclearCreateError("timed out"))
    run_to_end(rt, loaded)
    assert fake.count("create") == 1 and len(fake.jobs) == 1
    assert rows(rt, "select count(*) from nums") == [(3,)]


def test_a_crash_after_create_sent_is_resolved_by_listing(rt: Runtime, tmp_path: Path) -> None:
    loaded = manifests(tmp_path)
    fake = rt.backend
    assert isinstance(fake, FakeBackend)
    fake.enqueue("create_lost", UnclearCreateError("timed out"))
    fake.enqueue("list", TransientBackendError("503", delay=0.0))  # adoption cannot list yet
    (item,) = loaded.values()
    reconcile.apply_manifest(rt, item)  # type: ignore[arg-type]
    report = lifecycle.submit_pending(rt)
    assert report.waiting == 1
    assert [j.phase for j in rt.state.jobs()] == ["submitting"]
    rt.backoff_until = 0.0
    run_to_end(rt, loaded)
    assert fake.count("create") == 1
    assert [j.phase for j in rt.state.jobs()] == ["ingested"]


def test_a_429_on_create_waits_and_then_creates_once(rt: Runtime, tmp_path: Path) -> None:
    loaded = manifests(tmp_path)
    fake = rt.backend
    assert isinstance(fake, FakeBackend)
    fake.enqueue("create", *[TransientBackendError("429", code=429, delay=0.0)] * 3)
    (item,) = loaded.values()
    reconcile.apply_manifest(rt, item)  # type: ignore[arg-type]
    for _ in range(3):
        assert lifecycle.submit_pending(rt).waiting == 1
        assert [j.phase for j in rt.state.jobs()] == ["uploaded"]
    run_to_end(rt, loaded)
    assert fake.count("create") == 4 and len(fake.jobs) == 1
    assert fake.count("upload") == 1


def test_the_enqueued_token_budget_holds_jobs_in_a_visible_queue(
    rt: Runtime, tmp_path: Path
) -> None:
    loaded = manifests(tmp_path, rows=6, per_job=2)
    for item in loaded.values():
        reconcile.apply_manifest(rt, item)  # type: ignore[arg-type]
    jobs = rt.state.jobs()
    assert len(jobs) == 3 and all(j.input_tokens_est > 0 for j in jobs)
    rt.settings.enqueued_tokens = {"gemini-2.5-flash": jobs[0].input_tokens_est + 1}
    report = lifecycle.submit_pending(rt)
    assert (report.created, report.waiting) == (1, 2)
    queued = [j for j in rt.state.jobs() if j.phase == "planned"]
    assert len(queued) == 2
    assert all("enqueued-token budget of gemini-2.5-flash" in (j.error or "") for j in queued)
    run_to_end(rt, loaded)  # each finished job frees the budget for the next
    fake = rt.backend
    assert isinstance(fake, FakeBackend)
    assert fake.count("create") == 3
    assert {j.phase for j in rt.state.jobs()} == {"ingested"}


def test_a_new_version_drops_the_old_request_sets_but_keeps_the_recorded_one(
    rt: Runtime, tmp_path: Path
) -> None:
    run_to_end(rt, manifests(tmp_path, rows=3))
    sets = rt.sets_dir("nums")
    (first,) = [p for p in sets.glob("*.parquet") if len(p.stem) == 64]
    run_to_end(rt, manifests(tmp_path, rows=4))  # a new version: a new set
    recorded = rt.state.manifest("nums")
    assert recorded is not None and recorded.request_set
    kept = [p.name for p in sets.glob("*.parquet") if len(p.stem) == 64]
    assert kept == [Path(recorded.request_set).name]
    assert not first.exists()
    assert rows(rt, "select count(*) from nums") == [(4,)]  # the kept set still serves ingest


def test_rows_that_render_the_same_request_are_sent_once_and_share_its_answer(
    rt: Runtime, tmp_path: Path
) -> None:
    root = tmp_path / "m"
    root.mkdir()
    (root / "same.yaml").write_text(
        "model: gemini-2.5-flash\nsource:\n  key: n\n  rows: [{n: 1}, {n: 2}, {n: 3}]\n"
        "prompt: {template: 'The same question'}\n"
    )
    loaded, errors = load_paths([root])
    assert not errors
    by_name = {item.manifest.name: item for item in loaded}
    plan = reconcile.apply_manifest(rt, by_name["same"])
    assert (plan.diff.submit_requests, plan.diff.waiting) == (1, 2)
    run_to_end(rt, by_name)
    run_to_end(rt, by_name)  # the next round reuses the one answer for the other two
    fake = rt.backend
    assert isinstance(fake, FakeBackend)
    assert fake.count("create") == 1
    assert sorted((j.kind, j.requests) for j in rt.state.jobs()) == [("batch", 1), ("reuse", 2)]
    assert rows(rt, "select key, status, text, cost_usd > 0 from same order by key") == [
        ("1", "succeeded", "echo: The same question", True),
        ("2", "succeeded", "echo: The same question", False),
        ("3", "succeeded", "echo: The same question", False),
    ]


def _busy_once(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """The results file is held by a reader when the next version is switched to."""
    store = rt.results
    real = store.show_current
    calls: list[str] = []

    def held(**kwargs: object) -> None:
        calls.append(str(kwargs["table"]))
        if len(calls) == 1:
            raise StoreBusyError(f"{rt.results_db} is held by another process (PID 1)")
        real(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "show_current", held)


def test_a_busy_switch_is_reported_until_an_ingest_catches_the_view_up(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_to_end(rt, manifests(tmp_path, rows=3))
    _busy_once(rt, monkeypatch)
    loaded = manifests(tmp_path, rows=4)  # a new version, with one new row to send
    reconcile.apply_manifest(rt, loaded["nums"])  # type: ignore[arg-type]
    row = rt.state.manifest("nums")
    assert row is not None and (row.last_error or "").startswith("results busy")
    while cycle.tick(rt, loaded).live:  # type: ignore[arg-type]  # follow, no re-apply
        pass
    assert rows(rt, "select count(*) from nums") == [(4,)]
    row = rt.state.manifest("nums")
    assert row is not None and row.last_error is None  # the ingest showed the new version


def test_a_busy_switch_is_reported_until_the_results_check_re_points_the_view(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_to_end(rt, manifests(tmp_path, rows=3))
    _busy_once(rt, monkeypatch)
    loaded = manifests(tmp_path, rows=2)  # a new version that only drops a row: no job
    cycle.tick(rt, loaded, apply=list(loaded))  # type: ignore[arg-type]
    assert rows(rt, "select count(*) from nums") == [(3,)]  # still the old version
    report = integrity.ensure(rt, list(loaded.values()))  # type: ignore[arg-type]
    assert report.repointed == ["nums"]
    assert rows(rt, "select count(*) from nums") == [(2,)]
    row = rt.state.manifest("nums")
    assert row is not None and row.last_error is None
