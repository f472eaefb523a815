"""The Postgres state store over a real server: the state port's behaviour (the same as the
SQLite store's, checked on both), leadership with a lease, fencing and the intent lock, with
real processes killed and stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from runner.adapters.pg_state import MIGRATIONS, PgLeadership, PgState
from runner.adapters.state import MIGRATIONS as SQLITE_MIGRATIONS
from runner.adapters.state import StateStore
from runner.core.lifecycle import IllegalMove, Phase
from runner.core.ports import State
from runner.core.pricing import load_prices
from runner.engine import lifecycle
from runner.engine.runtime import Runtime
from runner.errors import LockedError
from runner.settings import Settings
from tests import pg
from tests.adapters.test_state import SUBMITTED, intent, walk
from tests.fakes import FakeBackend

postgres_server, postgres_url = pg.postgres_server, pg.postgres_url  # the fixtures


def leading(url: str, *, lease_s: float = 15.0, name: str = "test") -> PgState:
    state = PgState(url, lease_s=lease_s)
    leadership = PgLeadership(state, name=name)
    assert leadership.lead()
    state._test_leadership = leadership  # type: ignore[attr-defined]  # released by close()
    return state


def close(state: State) -> None:
    leadership = getattr(state, "_test_leadership", None)
    if leadership is not None:
        leadership.release()
    state.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[State]:
    """Each store behind the port: what one does, the other does too."""
    if request.param == "sqlite":
        state: State = StateStore(tmp_path / "state.sqlite")
    else:
        state = leading(request.getfixturevalue("postgres_url"))
    yield state
    close(state)


def test_intents_are_recorded_once_and_move_only_along_the_lifecycle(store: State) -> None:
    store.add_jobs([intent("a"), intent("b")])
    store.add_jobs([intent("a")])  # the unique intent: known ones are kept as they are
    jobs = store.jobs(manifest="m")
    assert [(j.intent, j.phase) for j in jobs] == [("a", "planned"), ("b", "planned")]
    with pytest.raises(IllegalMove, match="from planned to submitted"):
        store.transition(jobs[0].id, Phase.SUBMITTED)
    with pytest.raises(ValueError, match="transition"):
        store.update_job(jobs[0].id, phase="ingested")
    walk(store, jobs[0].id, SUBMITTED)  # type: ignore[arg-type]
    store.update_job(jobs[0].id, remote_name="batches/1", cost_usd=0.125, error=None)
    moved = store.transition(jobs[1].id, Phase.UPLOADED, input_file="files/x", inline=1)
    assert (moved.phase, moved.input_file, moved.inline) == (Phase.UPLOADED, "files/x", 1)
    assert [j.remote_name for j in store.jobs(live=True)] == ["batches/1", None]
    assert [j.intent for j in store.jobs(phases=(Phase.SUBMITTED,))] == ["a"]
    assert [j.intent for j in store.jobs(phases=(Phase.UPLOADED, Phase.SUBMITTED))] == ["a", "b"]
    assert store.jobs(phases=()) == [] and store.jobs(manifest="x", phases=(Phase.UPLOADED,)) == []
    walk(store, jobs[1].id, [Phase.SUBMITTING, Phase.SUBMITTED, Phase.DOWNLOADED])  # type: ignore[arg-type]
    store.transition(jobs[1].id, Phase.INGESTED)
    assert [j.intent for j in store.jobs(live=False)] == ["b"]
    assert store.job(jobs[0].id).cost_usd == 0.125
    with pytest.raises(IllegalMove):
        store.transition(jobs[1].id, Phase.PLANNED)  # an ingested job is never redone


def test_manifests_caches_media_invalid_files_and_events_round_trip(store: State) -> None:
    store.upsert_manifest(name="m", path="m.yaml", table_name="t", model="x", digest="d1")
    store.upsert_manifest(name="m", path="m.yaml", table_name="t", model="x", digest="d2")
    store.update_manifest("m", status="invalid", last_error="bad")
    row = store.manifest("m")
    assert row is not None and (row.digest, row.status, row.last_error) == ("d2", "invalid", "bad")
    assert store.manifest("nope") is None and [m.name for m in store.manifests()] == ["m"]
    store.add_cache(name="cachedContents/1", manifest="m", digest="c", model="x", expire="e1")
    store.update_cache("cachedContents/1", expire_time="e2")
    assert [(c.name, c.expire_time) for c in store.caches(manifest="m")] == [
        ("cachedContents/1", "e2")
    ]
    store.update_cache("cachedContents/1", deleted_at=store.now())
    assert store.caches() == []
    store.add_media_file("sha", "uri1", "exp1", name="files/1", size=7)
    store.add_media_file("sha", "uri2", "exp2", name="files/2", size=8)  # a new upload wins
    assert store.media_file("sha") == ("uri2", "exp2")
    assert store.media_files() == [("sha", "files/2", 8, "exp2")]
    store.media_deleted("sha")
    assert store.media_file("sha") is None and store.media_files() == []
    store.set_invalid("a.yaml", "e1")
    store.set_invalid("a.yaml", "e2")
    store.set_invalid("b.yaml", "e3")
    assert [(p, e) for p, e, _ in store.invalid_files()] == [("a.yaml", "e2"), ("b.yaml", "e3")]
    store.clear_invalid(keep={"b.yaml"})
    assert [p for p, _, _ in store.invalid_files()] == ["b.yaml"]
    store.event("planned", "1 job", manifest="m")
    store.add_jobs([intent("a")])
    summary = store.summary()
    assert summary["manifests"] == [("invalid", 1)]
    assert [tuple(r[:4]) for r in summary["jobs"]] == [("planned", "", 1, 3)]
    tables = store.tables()
    assert sorted(tables) == ["gbatch_caches", "gbatch_events", "gbatch_jobs", "gbatch_manifests"]
    columns, rows = tables["gbatch_events"]
    assert rows[0][columns.index("message")] == "1 job"


def test_cache_costs_job_tasks_and_events_read_with_a_limit(store: State) -> None:
    store.add_cache(
        name="cachedContents/1", manifest="m", digest="c", model="x", expire="e", tokens=900
    )
    store.add_cache(
        name="cachedContents/2", manifest="m", digest="d", model="x", expire="e", cost_usd=0.25
    )
    store.update_cache("cachedContents/1", cost_usd=0.5, deleted_at=store.now())
    assert store.cache_cost("m") == 0.75 and store.cache_cost("other") == 0.0  # deleted: counted
    assert [(c.name, c.tokens, c.cost_usd) for c in store.caches()] == [
        ("cachedContents/2", 0, 0.25)
    ]
    store.add_jobs([intent("a"), {**intent("b"), "task": "embed"}])
    assert [(j.intent, j.task) for j in store.jobs()] == [("a", "generate"), ("b", "embed")]
    assert store.job(store.jobs()[1].id).facts().phase is Phase.PLANNED
    for number in range(5):
        store.event("busy" if number % 2 else "rebuilt", f"e{number}", manifest="m")
    store.event("planned", "other", manifest="n")
    rows = store.events()
    assert [r[5] for r in rows] == ["e0", "e1", "e2", "e3", "e4", "other"]
    assert [r[5] for r in store.events(manifest="m", after=int(rows[1][0]))] == ["e2", "e3", "e4"]
    assert [r[5] for r in store.events(newest=2)] == ["e4", "other"]  # the latest, oldest first
    assert [m for _, m in store.events_of(("rebuilt",), limit=2)] == ["e4", "e2"]


def test_identity_table_owners_and_kept_rows(store: State) -> None:
    identity = store.identity()
    assert len(identity) == 32 and identity == store.identity()
    assert store.verified_results() is None
    store.set_verified_results("/r/gbatch.duckdb")
    assert store.verified_results() == "/r/gbatch.duckdb"
    store.upsert_manifest(name="old", path="o.yaml", table_name="t0", model="x", digest="d")
    assert [(o.table_name, o.manifest) for o in store.table_owners()] == [("t0", "old")]
    store.record_owners([("t0", "old", "o.yaml")])
    store.record_owners([("t1", "m", "m.yaml"), ("t0", "m", "m.yaml")])  # t0 is old's
    store.record_owners([("t1", "m", "moved/m.yaml")])  # the owner's path kept current
    owners = {o.table_name: (o.manifest, o.path) for o in store.table_owners()}
    assert owners == {"t0": ("old", "o.yaml"), "t1": ("m", "moved/m.yaml")}
    before = store.move_table("t0", "m")
    assert before is not None and before.manifest == "old"
    assert {o.table_name: o.manifest for o in store.table_owners()} == {"t0": "m", "t1": "m"}
    store.record_kept(job=1, table="t1", label="batches/1", rows=10, kind="lines")
    store.record_kept(job=1, table="t1", label="batches/1", rows=0, kind="lost")  # replaced
    store.record_kept(job=2, table="t1", label="batches/2", rows=3, kind="ledger")
    kept = store.kept_rows()
    assert [(k.job, k.rows, k.kind) for k in kept.values()] == [(1, 0, "lost"), (2, 3, "ledger")]


def test_the_postgres_store_has_every_migration_of_the_sqlite_store_by_name(
    postgres_url: str,
) -> None:
    assert [name for name, _ in MIGRATIONS][: len(SQLITE_MIGRATIONS)] == [
        name for name, _ in SQLITE_MIGRATIONS
    ]
    first = PgState(postgres_url)
    first.close()
    again = PgState(postgres_url)  # nothing is applied twice
    again.close()
    with psycopg.connect(postgres_url) as db:
        names = [r[0] for r in db.execute("select name from applied_migrations order by name")]
    assert sorted(names) == sorted(name for name, _ in MIGRATIONS)


def test_a_store_that_does_not_lead_reads_but_never_writes(postgres_url: str) -> None:
    leader = leading(postgres_url)
    leader.add_jobs([intent("a")])
    reader = PgState(postgres_url)  # status, query, metrics: nobody made it lead
    try:
        assert [j.intent for j in reader.jobs()] == ["a"]
        with pytest.raises(LockedError, match="does not lead"):
            reader.add_jobs([intent("b")])
        with pytest.raises(LockedError):
            reader.event("x", "y")
        assert [j.intent for j in leader.jobs()] == ["a"]
    finally:
        reader.close()
        close(leader)


def test_one_of_two_leads_and_the_other_takes_over_when_it_lets_go(postgres_url: str) -> None:
    first, second = PgState(postgres_url), PgState(postgres_url)
    one, two = PgLeadership(first, name="one"), PgLeadership(second, name="two")
    try:
        assert one.lead() and not two.lead()
        assert two.holder() == "one"
        first.add_jobs([intent("a")])
        one.release()
        assert two.lead() and not one.lead()
        assert second.leader()[:2] == (2, "two")  # the epoch moved on with the lead
        with pytest.raises(LockedError):
            first.add_jobs([intent("b")])  # the old leader is fenced
        second.add_jobs([intent("b")])
        assert [j.intent for j in second.jobs()] == ["a", "b"]
    finally:
        one.release()
        two.release()
        first.close()
        second.close()


def test_an_intent_is_held_by_one_process_at_a_time(postgres_url: str) -> None:
    first, second = PgState(postgres_url), PgState(postgres_url)
    try:
        with first.intent_lock("i1") as held:
            assert held
            with second.intent_lock("i1") as other, second.intent_lock("i2") as free:
                assert (other, free) == (False, True)
        with second.intent_lock("i1") as held:
            assert held  # released with the block
    finally:
        first.close()
        second.close()


# -- real processes: a leader killed, a leader stopped past its lease ---------------------
LEADER = """
import json, sys
from runner.adapters.pg_state import PgLeadership, PgState
from tests.adapters.test_state import intent
state = PgState(sys.argv[1], lease_s=float(sys.argv[2]))
leadership = PgLeadership(state, name="child")
assert leadership.lead()
state.add_jobs([intent("by-child")])
with state.intent_lock("held-by-child") as held:
    print(json.dumps({"leading": True, "intent": held}), flush=True)
    for line in sys.stdin:  # each line: try one write, say how it went
        try:
            state.add_jobs([intent(line.strip())])
            print(json.dumps({"wrote": line.strip()}), flush=True)
        except Exception as exc:
            print(json.dumps({"refused": type(exc).__name__, "why": str(exc)}), flush=True)
"""


def child(url: str, lease_s: float) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", LEADER, url, str(lease_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert process.stdout is not None
    assert json.loads(process.stdout.readline()) == {"leading": True, "intent": True}
    return process


def end(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGCONT)
        process.kill()
    process.wait(timeout=10)
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            pipe.close()


def until(condition: Callable[[], bool], what: str, timeout: float = 30) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_leader_killed_dead_is_taken_over_at_once(postgres_url: str) -> None:
    process = child(postgres_url, lease_s=30)
    state = PgState(postgres_url, lease_s=30)
    standby = PgLeadership(state, name="standby")
    try:
        assert not standby.lead() and standby.holder() == "child"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        took = until(standby.lead, "the standby to lead")
        assert took < 5  # the lock went with the connection, long before the 30 s lease
        with state.intent_lock("held-by-child") as held:
            assert held  # a dead process holds no intent
        state.add_jobs([intent("by-standby")])
        assert [j.intent for j in state.jobs()] == ["by-child", "by-standby"]
    finally:
        end(process)
        standby.release()
        state.close()


def test_a_leader_stopped_past_its_lease_is_fenced_when_it_wakes(postgres_url: str) -> None:
    lease = 1.0
    process = child(postgres_url, lease_s=lease)
    assert process.stdin is not None and process.stdout is not None
    state = PgState(postgres_url, lease_s=lease)
    standby = PgLeadership(state, name="standby")
    try:
        assert not standby.lead()  # the heartbeat is fresh
        os.kill(process.pid, signal.SIGSTOP)
        until(standby.lead, "the standby to take the lead from the stopped leader")
        with state.intent_lock("held-by-child") as held:
            assert not held  # a stopped process may still send its create: it keeps the intent
        state.add_jobs([intent("by-standby")])
        os.kill(process.pid, signal.SIGCONT)
        process.stdin.write("after-waking\n")
        process.stdin.flush()
        answer = json.loads(process.stdout.readline())
        assert answer["refused"] == "NotLeaderError", answer  # a LockedError: fenced
        assert [j.intent for j in state.jobs()] == ["by-child", "by-standby"]
        assert state.leader()[1] == "standby"
    finally:
        end(process)
        standby.release()
        state.close()


# -- the engine over the shared state -------------------------------------------------------
def test_the_engine_creates_nothing_for_an_intent_another_process_holds(
    postgres_url: str, tmp_path: Path
) -> None:
    """A paused old leader holds the intent across its create: the new leader waits for it
    rather than create the same job too (a split brain's double create)."""
    paused = PgState(postgres_url)
    state = leading(postgres_url)
    backend = FakeBackend()
    backend.files["files/input"] = ["{}"]
    settings = Settings(db=tmp_path / "results.duckdb", state_dir=tmp_path / "state")
    rt = Runtime(settings=settings, state=state, backend=backend, prices=load_prices())
    try:
        state.add_jobs([intent("a")])
        (job,) = state.jobs()
        state.transition(job.id, Phase.UPLOADED, input_file="files/input")
        with paused.intent_lock("a") as held:
            assert held
            report = lifecycle.submit_pending(rt)
            assert (backend.count("create"), report.waiting) == (0, 1)
            assert state.job(job.id).phase is Phase.UPLOADED
        report = lifecycle.submit_pending(rt)  # once it lets go (or dies)
        assert (backend.count("create"), report.created) == (1, 1)
        assert state.job(job.id).phase is Phase.SUBMITTED
    finally:
        paused.close()
        close(state)
