"""Every time rule of the job lifecycle under the fake clock: file lifetimes, the deadline,
the grace period for a lost create. A day passes in a call to ``clock.advance``; nothing
sleeps. Real SQLite and DuckDB files, the fake backend at the project's own port."""

from __future__ import annotations

from pathlib import Path

from runner.core.clock import FakeClock, parse_time
from runner.core.lifecycle import Phase
from runner.core.loader import load_paths
from runner.engine import cycle
from runner.engine.runtime import Runtime
from runner.errors import PermanentBackendError, TransientBackendError, UnclearCreateError
from tests.engine.conftest import rows
from tests.fakes import FakeBackend

HOUR = 3600.0


def manifests(tmp_path: Path, *, rows: int = 4, policy: str = "") -> dict[str, object]:
    root = tmp_path / "m"
    root.mkdir(exist_ok=True)
    body = "".join(f"  - {{n: {i}}}\n" for i in range(rows))
    (root / "nums.yaml").write_text(
        "model: gemini-2.5-flash\nsource:\n  key: n\n  rows:\n"
        + body
        + "prompt: {template: 'Number {{ n }}'}\n"
        + (f"policy: {{{policy}}}\n" if policy else "")
    )
    loaded, errors = load_paths([root])
    assert not errors
    return {item.manifest.name: item for item in loaded}


def fake(rt: Runtime) -> FakeBackend:
    assert isinstance(rt.backend, FakeBackend)
    return rt.backend


def test_an_upload_is_judged_by_its_own_expiry_not_by_later_status_writes(
    timed: Runtime, clock: FakeClock, tmp_path: Path
) -> None:
    """A job refused with 429 every hour keeps its row freshly written, but its upload ages
    all the same: with less than a day of its 48 h left it is uploaded again before the
    create, and the create names the new file."""
    loaded = manifests(tmp_path)
    backend = fake(timed)
    backend.enqueue("create", *[TransientBackendError("429", code=429, delay=1)] * 24)
    cycle.tick(timed, loaded, apply=list(loaded))  # type: ignore[arg-type]
    (job,) = timed.state.jobs()
    first_upload = job.input_file
    assert job.phase is Phase.UPLOADED and first_upload
    for _ in range(23):
        clock.advance(HOUR)
        cycle.tick(timed, loaded)  # type: ignore[arg-type]
    job = timed.state.job(job.id)
    assert (job.phase, job.input_file, backend.count("upload")) == (
        Phase.UPLOADED,
        first_upload,
        1,
    )  # 25 h of life left: kept
    clock.advance(2 * HOUR)
    report = cycle.tick(timed, loaded)  # type: ignore[arg-type]
    job = timed.state.job(job.id)
    assert backend.count("upload") == 2 and job.input_file != first_upload
    assert report.submitted.created == 1 and backend.count("create") == 25
    assert backend.inputs[job.remote_name or ""] == backend.files.get(
        job.input_file or "", backend.inputs[job.remote_name or ""]
    )
    assert [e for e in timed.state.jobs() if e.phase is Phase.ABANDONED] == []


def test_a_create_refused_because_its_file_is_gone_uploads_again_instead_of_abandoning(
    timed: Runtime, tmp_path: Path
) -> None:
    loaded = manifests(tmp_path)
    backend = fake(timed)
    original = backend.create_job

    def create_after_losing_the_file(**kwargs: object) -> object:
        if backend.count("create") == 0:
            backend.files.clear()  # the service deleted the upload (48 h, or a quota purge)
            backend.history.append(("create", "refused"))
            raise PermanentBackendError("file not found", code=400)
        return original(**kwargs)  # type: ignore[arg-type]

    backend.create_job = create_after_losing_the_file  # type: ignore[method-assign]
    for _ in range(4):
        report = cycle.tick(timed, loaded, apply=list(loaded))  # type: ignore[arg-type]
        if report.live == 0:
            break
    assert [j.phase for j in timed.state.jobs()] == [Phase.INGESTED]
    assert backend.count("upload") == 2
    assert rows(timed, "select count(*) filter (status = 'succeeded') from nums") == [(4,)]


def test_a_lost_create_is_looked_for_through_a_lagging_list_and_adopted_not_repeated(
    timed: Runtime, clock: FakeClock, tmp_path: Path
) -> None:
    loaded = manifests(tmp_path)
    backend = fake(timed)
    backend.list_lag = 3  # the new job shows up in the fourth listing only
    backend.enqueue("create_lost", UnclearCreateError("timed out"))
    cycle.tick(timed, loaded, apply=list(loaded))  # type: ignore[arg-type]
    (job,) = timed.state.jobs()
    assert job.phase is Phase.SUBMITTING and "looking for a create" not in (job.error or "")
    for _ in range(2):
        clock.advance(60)
        cycle.tick(timed, loaded)  # type: ignore[arg-type]
        job = timed.state.job(job.id)
        assert job.phase is Phase.SUBMITTING and "looking for a create" in (job.error or "")
    clock.advance(60)
    report = cycle.tick(timed, loaded)  # type: ignore[arg-type]
    assert backend.count("create") == 1 and len(backend.jobs) == 1
    assert report.submitted.adopted == 1
    assert rows(timed, "select count(*) from nums") == [(4,)]


def test_a_create_that_never_happened_is_made_once_the_grace_period_is_over(
    timed: Runtime, clock: FakeClock, tmp_path: Path
) -> None:
    loaded = manifests(tmp_path)
    backend = fake(timed)
    backend.enqueue("create", UnclearCreateError("connection reset before the reply"))
    cycle.tick(timed, loaded, apply=list(loaded))  # type: ignore[arg-type]
    assert backend.count("create") == 1 and not backend.jobs
    clock.advance(299)
    cycle.tick(timed, loaded)  # type: ignore[arg-type]
    assert backend.count("create") == 1  # still inside the grace: only looked for
    clock.advance(2)
    cycle.tick(timed, loaded)  # type: ignore[arg-type]
    assert backend.count("create") == 2 and len(backend.jobs) == 1


def test_a_job_past_its_deadline_is_cancelled_once_and_its_given_answers_are_kept(
    timed: Runtime, clock: FakeClock, tmp_path: Path
) -> None:
    """37 h pending: cancelled once; the 2 answers it gave before the cancel were paid for,
    so they are ingested and only the other 2 rows are sent again."""
    loaded = manifests(tmp_path, rows=4, policy="deadline: 36h")
    backend = fake(timed)
    backend.hold = True
    backend.answered_before_cancel = 2
    cycle.tick(timed, loaded, apply=list(loaded))  # type: ignore[arg-type]
    clock.advance(35 * HOUR)
    cycle.tick(timed, loaded)  # type: ignore[arg-type]
    assert backend.count("cancel") == 0
    clock.advance(2 * HOUR)
    cycle.tick(timed, loaded)  # type: ignore[arg-type]
    cycle.tick(timed, loaded)  # type: ignore[arg-type]
    assert backend.count("cancel") == 1
    history = rows(timed, "select key, status from nums_history order by key")
    assert history == [("0", "succeeded"), ("1", "succeeded"), ("2", "failed"), ("3", "failed")]
    backend.hold = False
    report = cycle.tick(timed, loaded, apply=list(loaded))  # type: ignore[arg-type]
    assert report.plans["nums"].diff.submit_requests == 2
    while report.live:
        report = cycle.tick(timed, loaded)  # type: ignore[arg-type]
    assert backend.count("cancel") == 1
    assert rows(timed, "select count(*) filter (status = 'succeeded') from nums") == [(4,)]
    second = list(backend.inputs.values())[-1]
    assert len(second) == 2


def cached(tmp_path: Path, *, ttl: str) -> dict[str, object]:
    root = tmp_path / "c"
    root.mkdir(exist_ok=True)
    (root / "guide.md").write_text("Our style: short sentences, active voice. " * 120)
    (root / "copy.yaml").write_text(
        "name: copy\nmodel: gemini-2.5-flash\nsource: {key: n, rows: [{n: 1}, {n: 2}]}\n"
        "prompt: {system: You write copy., template: 'Describe {{ n }}.'}\n"
        f"cache: {{files: [guide.md], ttl: {ttl}}}\n"
    )
    loaded, errors = load_paths([root])
    assert not errors
    return {item.manifest.name: item for item in loaded}


def test_a_cache_is_extended_while_its_job_waits_and_deleted_after(
    timed: Runtime, clock: FakeClock, tmp_path: Path
) -> None:
    """A 1 h cache and a job 5 h in the queue: extended each time half its TTL is gone,
    never allowed to lapse, deleted once the job is in."""
    loaded = cached(tmp_path, ttl="1h")
    backend = fake(timed)
    backend.hold = True
    cycle.tick(timed, loaded, apply=list(loaded))  # type: ignore[arg-type]
    assert backend.count("create_cache") == 1
    for _ in range(20):  # 5 h in steps of 15 min
        clock.advance(HOUR / 4)
        cycle.tick(timed, loaded)  # type: ignore[arg-type]
        (row,) = timed.state.caches()
        assert (parse_time(row.expire_time) - clock.now()).total_seconds() > 0  # never lapsed
    # extended when less than half is left: at 15-minute looks, every 45 minutes
    assert backend.count("extend_cache") == 6
    assert backend.count("delete_cache") == 0
    # storage is spend: the cached tokens for every hour the cache was kept, at the rate
    (row,) = timed.state.caches()
    kept_h = (parse_time(row.expire_time) - parse_time(row.created_at)).total_seconds() / 3600
    rate = timed.prices.for_model("gemini-2.5-flash").cache_storage  # type: ignore[union-attr]
    assert row.tokens > 1000 and rate
    assert abs(row.cost_usd - row.tokens * kept_h * rate / 1e6) < 1e-9
    assert timed.state.cache_cost("copy") == row.cost_usd > 0
    backend.release()
    report = cycle.tick(timed, loaded)  # type: ignore[arg-type]
    while report.live:
        report = cycle.tick(timed, loaded)  # type: ignore[arg-type]
    assert backend.count("delete_cache") == 1 and timed.state.caches() == []


def test_a_429_with_retry_info_holds_every_create_until_its_delay_has_passed(
    timed: Runtime, clock: FakeClock, tmp_path: Path
) -> None:
    timed.settings.max_backoff_s = 300
    loaded = manifests(tmp_path)
    backend = fake(timed)
    backend.enqueue("create", TransientBackendError("429", code=429, delay=23))
    cycle.tick(timed, loaded, apply=list(loaded))  # type: ignore[arg-type]
    (job,) = timed.state.jobs()
    for _ in range(2):
        clock.advance(11)
        cycle.tick(timed, loaded)  # type: ignore[arg-type]
        assert backend.count("create") == 1  # inside the 23 s: not tried
        assert "back off (429)" in (timed.state.job(job.id).error or "")
    clock.advance(2)
    cycle.tick(timed, loaded)  # type: ignore[arg-type]
    assert backend.count("create") == 2 and len(backend.jobs) == 1


def test_a_media_file_is_uploaded_again_when_less_than_a_queue_day_of_its_life_is_left(
    timed: Runtime, clock: FakeClock, tmp_path: Path
) -> None:
    """While jobs wait, a media upload is reused until it has less than 25 h of its 48 h
    left; once no job needs it, it is deleted from the Files API."""
    root = tmp_path / "p"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.png").write_bytes(bytes.fromhex("89504e470d0a1a0a0000000d49484452"))
    (root / "photos.yaml").write_text(
        "model: gemini-2.5-flash\nsource: {path: photos.csv, key: id}\n"
        "prompt: {template: 'Describe {{ id }}', media: [photo]}\n"
    )
    backend = fake(timed)
    backend.hold = True  # the jobs wait in the queue

    def apply_with_rows(count: int) -> dict[str, object]:
        (root / "photos.csv").write_text(
            "id,photo\n" + "".join(f"{i},img/a.png\n" for i in range(count))
        )
        loaded, errors = load_paths([root])
        assert not errors
        by_name = {item.manifest.name: item for item in loaded}
        cycle.tick(timed, by_name, apply=list(by_name))  # type: ignore[arg-type]
        return by_name  # type: ignore[return-value]

    apply_with_rows(1)
    assert backend.count("upload_media") == 1
    clock.advance(22 * HOUR)  # 26 h of its 48 left: enough for a day in the queue
    apply_with_rows(2)
    assert backend.count("upload_media") == 1
    clock.advance(2 * HOUR)  # 24 h left: not enough
    loaded = apply_with_rows(3)
    assert backend.count("upload_media") == 2
    backend.release()
    for _ in range(3):
        cycle.tick(timed, loaded)  # type: ignore[arg-type]
    assert {j.phase for j in timed.state.jobs()} == {Phase.INGESTED}
    assert timed.state.media_files() == []  # no job needs them: deleted
    assert backend.count("delete_file") >= 2
