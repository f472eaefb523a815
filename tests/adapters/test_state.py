"""The SQLite state store and the process lock, with real files and a real second process."""

import subprocess
import sys
from pathlib import Path

import pytest

from runner.adapters.state import ProcessLock, StateStore
from runner.core.lifecycle import IllegalMove, Phase
from runner.errors import LockedError


def intent(name: str) -> dict[str, object]:
    return {
        "intent": name,
        "manifest": "m",
        "digest": "d",
        "display_name": f"gbatch-m-{name}",
        "model": "gemini-2.5-flash",
        "request_file": f"/x/{name}.parquet",
        "requests": 3,
        "bytes": 30,
    }


def test_intents_are_recorded_once_and_advance_through_phases(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.sqlite")
    store.add_jobs([intent("a"), intent("b")])
    store.add_jobs([intent("a")])
    jobs = store.jobs(manifest="m")
    assert [j.phase for j in jobs] == ["planned", "planned"]
    walk(store, jobs[0].id, SUBMITTED)
    store.update_job(jobs[0].id, remote_name="batches/1")
    walk(store, jobs[1].id, [*SUBMITTED, Phase.DOWNLOADED, Phase.INGESTED])
    assert [j.remote_name for j in store.jobs(live=True)] == ["batches/1"]
    assert [j.phase for j in store.jobs(live=False)] == ["ingested"]
    store.close()


SUBMITTED = [Phase.UPLOADED, Phase.SUBMITTING, Phase.SUBMITTED]


def walk(store: StateStore, job_id: int, phases: list[Phase]) -> None:
    for phase in phases:
        store.transition(job_id, phase)


def test_a_job_moves_only_along_the_lifecycle(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.sqlite")
    store.add_jobs([intent("a")])
    (job,) = store.jobs()
    with pytest.raises(IllegalMove, match="from planned to submitted"):
        store.transition(job.id, Phase.SUBMITTED)  # a create never recorded as sent
    with pytest.raises(ValueError, match="transition"):
        store.update_job(job.id, phase="ingested")
    walk(store, job.id, [*SUBMITTED, Phase.DOWNLOADED, Phase.INGESTED])
    with pytest.raises(IllegalMove):
        store.transition(job.id, Phase.PLANNED)  # an ingested job is never redone
    assert store.job(job.id).phase is Phase.INGESTED
    store.close()


def test_state_survives_reopening_and_migrations_run_once(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.sqlite")
    store.upsert_manifest(name="m", path="m.yaml", table_name="m", model="x", digest="d1")
    store.upsert_manifest(name="m", path="m.yaml", table_name="m", model="x", digest="d2")
    store.close()
    again = StateStore(tmp_path / "state.sqlite")
    assert [m.digest for m in again.manifests()] == ["d2"]
    assert again.tables()["gbatch_manifests"][1][0][0] == "m"
    again.close()


def test_a_reader_process_sees_committed_state_while_the_writer_holds_it_open(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path / "state.sqlite")
    store.add_jobs([intent("a")])
    reader = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sqlite3,sys; db=sqlite3.connect(sys.argv[1]); "
            "print(db.execute('select count(*) from jobs').fetchone()[0])",
            str(tmp_path / "state.sqlite"),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert reader.stdout.strip() == "1"
    store.close()


def test_a_second_lock_holder_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from runner.adapters.state import ProcessLock; "
            "lock = ProcessLock(Path(sys.argv[1])); lock.acquire(); print('held', flush=True); "
            "sys.stdin.readline()",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=f"pid.*{holder.pid}"):
            ProcessLock(tmp_path).acquire()
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()
    with ProcessLock(tmp_path):
        pass
