"""Several `gbatch watch` processes over one Postgres state and one DuckLake: one leads, the
others stand by and take over; kill -9 and SIGSTOP of the leader create nothing twice and lose
nothing, and a reader process never sees a partial job."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from runner.emulator import Emulator, EmulatorConfig
from tests import pg
from tests.conftest import Gbatch

postgres_server, postgres_url = pg.postgres_server, pg.postgres_url  # the fixtures

ROWS, PER_JOB, MANIFESTS, KILLS = 6, 2, 5, 10
LEASE_S = 1.5
WATCH = (sys.executable, "-m", "runner", "watch", "manifests")


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    """Jobs that take a second or two, so that kills land while they are in flight."""
    config = EmulatorConfig(
        data_dir=tmp_path / "emulator", pending_seconds=0.6, running_seconds=0.6
    )
    with Emulator(config) as emu:
        yield emu


def manifest(name: str) -> str:
    body = "".join(f"    - {{n: {i}}}\n" for i in range(ROWS))
    return (
        f"name: {name}\nmodel: gemini-2.5-flash\nsource:\n  key: n\n  rows:\n{body}"
        f"prompt: {{template: '{name} number {{{{ n }}}}'}}\n"
        f"policy: {{max_requests_per_job: {PER_JOB}}}\n"
    )


def until(condition: Callable[[], object], what: str, timeout: float = 30) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)
    return time.monotonic() - started


class Team:
    """Daemons over one shared state and lake, started and killed as processes."""

    def __init__(self, gbatch: Gbatch, state_url: str) -> None:
        self.gbatch = gbatch
        self.state_url = state_url
        self.daemons: dict[int, subprocess.Popen[str]] = {}
        self.logs: list[Path] = []

    def start(self) -> subprocess.Popen[str]:
        log = self.gbatch.root / f"watch-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("w") as out:
            process = subprocess.Popen(
                [*WATCH, "--settle", "0.5s", "--metrics-port", "0"],
                cwd=self.gbatch.root,
                env={**os.environ, "GBATCH_POLL_INTERVAL_S": "0.1"},
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        self.daemons[process.pid] = process
        return process

    def leader(self) -> tuple[int, int]:
        """(epoch, pid) of the leader as the shared state names it."""
        try:
            with psycopg.connect(self.state_url) as db:
                row = db.execute("select epoch, holder from leader").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0, 0  # no daemon has migrated the fresh database yet
        assert row is not None
        return int(row[0]), int(str(row[1]).rsplit(":", 1)[-1] or 0) if row[1] else 0

    def new_leader(self, after_epoch: int) -> tuple[int, int]:
        found: list[tuple[int, int]] = []

        def moved() -> bool:
            epoch, pid = self.leader()
            if epoch > after_epoch and pid in self.daemons:
                found.append((epoch, pid))
                return True
            return False

        until(moved, f"a leader after epoch {after_epoch}")
        return found[-1]

    def metrics_port(self, process: subprocess.Popen[str]) -> int:
        log = self.logs[list(self.daemons).index(process.pid)]
        ports: list[int] = []

        def printed() -> bool:
            for line in log.read_text().splitlines():
                if line.startswith("metrics: http://"):
                    ports.append(int(line.rsplit(":", 1)[1].split("/")[0]))
            return bool(ports)

        until(printed, "the metrics address")
        return ports[0]

    def output(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()}" for log in self.logs)

    def stop_all(self) -> None:
        for process in self.daemons.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
            process.wait(timeout=30)


READER = """
import json, os, sys, time
import duckdb
import duckdb_extension_ducklake as ducklake, duckdb_extension_postgres as postgres
catalog, data, per_job, stop, ext = sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:]
con = duckdb.connect(config={"autoinstall_known_extensions": False,
                             "autoload_known_extensions": False, "extension_directory": ext})
for module, name in ((ducklake, "ducklake"), (postgres, "postgres")):
    base = os.path.join(os.path.dirname(module.__file__), "extensions", "v" + duckdb.__version__)
    con.execute(f"install '{os.path.join(base, os.listdir(base)[0])}'")
    con.execute(f"load {name}")
seen = {"looks": 0, "jobs_seen": 0, "bad": []}
while True:
    try:
        con.execute(
            f"attach 'ducklake:postgres:{catalog}' as lake (data_path '{data}/', read_only)"
        )
        break
    except duckdb.Error:
        time.sleep(0.05)
while not os.path.exists(stop):
    con.execute("begin")
    tables = [r[0] for r in con.execute(
        "select table_name from duckdb_tables() where database_name = 'lake' "
        "and table_name like '%_history'").fetchall()]
    for history in tables:
        view = history[: -len("_history")]
        jobs = con.execute(f'select job, count(*) from lake."{history}" group by job')
        for job, rows in jobs.fetchall():
            seen["jobs_seen"] += 1
            if rows != per_job:
                seen["bad"].append(f"{history}: job {job} has {rows} rows")
        keys = con.execute(f'select count(*), count(distinct key) from lake."{history}"').fetchone()
        try:
            current = con.execute(f'select count(*) from lake."{view}"').fetchone()
        except duckdb.Error:
            current = keys  # the view comes with the first ingest's commit
        if current[0] != keys[0] or keys[0] != keys[1]:
            seen["bad"].append(f"{view}: {current[0]} current rows, history {keys}")
    con.execute("commit")
    seen["looks"] += 1
    time.sleep(0.02)
print(json.dumps(seen))
"""


def test_two_daemons_over_one_state_and_lake_survive_kills_and_a_stall(
    gbatch: Gbatch, emulator: Emulator, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = int(os.environ.get("GBATCH_TEST_SEED", time.time_ns() % 100_000))
    chance = random.Random(seed)
    lake_data = gbatch.root / "lake"
    monkeypatch.setenv("GBATCH_STATE_URL", postgres_url)
    monkeypatch.setenv("GBATCH_DB", f"ducklake:postgres:{pg.conninfo(postgres_url)}")
    monkeypatch.setenv("GBATCH_LAKE_DATA_PATH", str(lake_data))
    monkeypatch.setenv("GBATCH_LEADER_LEASE_S", str(LEASE_S))
    monkeypatch.setenv("GBATCH_ADOPT_GRACE_S", "1")  # a create never sent is made again soon
    team = Team(gbatch, postgres_url)
    stop_reader = gbatch.root / "reader.stop"
    reader_args = (pg.conninfo(postgres_url), lake_data, PER_JOB, stop_reader, "reader-ext")
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, *map(str, reader_args)],
        cwd=gbatch.root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        gbatch.write("m0.yaml", manifest("m0"))
        first, second = team.start(), team.start()
        epoch, pid = team.new_leader(0)
        standby = second if pid == first.pid else first
        health = urllib.request.urlopen(
            f"http://127.0.0.1:{team.metrics_port(standby)}/healthz", timeout=10
        )
        assert health.status == 200  # a standby is healthy, and serves
        takeovers = []
        for kill in range(KILLS):
            time.sleep(chance.uniform(0.3, 2.5))  # a random moment of the leader's work
            os.kill(pid, signal.SIGKILL)
            team.daemons[pid].wait(timeout=10)
            killed = time.monotonic()
            if kill + 1 < MANIFESTS:
                gbatch.write(f"m{kill + 1}.yaml", manifest(f"m{kill + 1}"))
            epoch, pid = team.new_leader(epoch)
            takeovers.append(time.monotonic() - killed)
            team.start()  # two daemons again
        # a stall: the leader stops past its lease, the standby takes over, the old one wakes
        stalled = pid
        os.kill(stalled, signal.SIGSTOP)
        epoch, pid = team.new_leader(epoch)
        os.kill(stalled, signal.SIGCONT)
        with psycopg.connect(postgres_url) as db:

            def done() -> bool:
                row = db.execute(
                    "select count(distinct manifest), count(*) filter (where phase <> 'ingested') "
                    "from jobs"
                ).fetchone()
                return row == (MANIFESTS, 0)

            until(done, "every job ingested", timeout=60)
            jobs = db.execute("select display_name, requests, remote_name from jobs").fetchall()
        assert team.daemons[stalled].poll() is None  # woken, fenced, standing by again
    except BaseException:
        print(f"seed {seed}\n{team.output()}")
        raise
    finally:
        stop_reader.touch()
        printed = reader.communicate(timeout=60)[0]
        team.stop_all()
    # the lock goes with a killed leader's connection: a standby leads within its poll
    assert max(takeovers) < 5, f"seed {seed}: takeovers {takeovers}"
    # every job created once, whatever the interleaving (creates counted at the emulator)
    with emulator.service.lock:
        created = [b.display_name for b in emulator.service.batches.values()]
    assert len(created) == len(set(created)) == emulator.count("batches.create")
    assert sorted(created) == sorted(name for name, _, _ in jobs)
    assert len(jobs) == MANIFESTS * ROWS // PER_JOB and {r for _, r, _ in jobs} == {PER_JOB}
    # every key answered once, in the lake
    for m in range(MANIFESTS):
        answered = gbatch(
            "query",
            f"select count(*), count(distinct key), count(*) filter (status = 'succeeded') "
            f"from m{m}_history",
            "--format",
            "csv",
        )
        assert answered.out.splitlines()[1] == f"{ROWS},{ROWS},{ROWS}", answered
        current = gbatch("query", f"select count(*) from m{m}", "--format", "csv")
        assert current.out.splitlines()[1] == str(ROWS)
    # the reader, looking all along, never saw part of a job
    assert reader.returncode == 0, printed
    seen = json.loads(printed)
    assert seen["bad"] == [] and seen["looks"] > 20 and seen["jobs_seen"] > 0, seen
    status = gbatch("status")
    assert status.code == 0 and "DuckLake" in status.out and "leader" in status.out


def test_apply_into_a_lake_then_status_and_query_read_it(
    gbatch: Gbatch, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One host, nothing to start: a SQLite-catalog lake behind the same commands."""
    monkeypatch.setenv("GBATCH_DB", f"ducklake:sqlite:{gbatch.root / 'catalog.sqlite'}")
    monkeypatch.setenv("GBATCH_LAKE_DATA_PATH", str(gbatch.root / "lake"))
    gbatch.write("m0.yaml", manifest("m0"))
    applied = gbatch("apply", "manifests", "--wait")
    assert applied.code == 0, applied.err
    assert emulator.count("batches.create") == ROWS // PER_JOB
    answered = gbatch("query", "select count(*), count(distinct key) from m0", "--format", "csv")
    assert answered.out.splitlines()[1] == f"{ROWS},{ROWS}"
    status = gbatch("status")
    assert "DuckLake ducklake:sqlite:" in status.out and "m0_history" in status.out
    again = gbatch("apply", "manifests", "--wait")  # nothing new: nothing created
    assert again.code == 0 and emulator.count("batches.create") == ROWS // PER_JOB


def test_a_postgres_state_behind_every_command_with_a_results_file(
    gbatch: Gbatch, emulator: Emulator, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """apply, status, events, query and rebuild read and write the state GBATCH_STATE_URL
    names; the results file is checked against it and rebuilt from the rows it kept."""
    monkeypatch.setenv("GBATCH_STATE_URL", postgres_url)
    gbatch.write("m0.yaml", manifest("m0"))
    applied = gbatch("apply", "manifests", "--wait")
    assert applied.code == 0, applied.err
    assert emulator.count("batches.create") == ROWS // PER_JOB
    with psycopg.connect(postgres_url) as db:
        row = db.execute("select count(*) filter (where phase = 'ingested') from jobs").fetchone()
        assert row == (ROWS // PER_JOB,)
    assert not (gbatch.state_dir / "state.sqlite").exists()  # nothing kept beside it
    status = gbatch("status")
    assert status.code == 0 and "leader" in status.out, status.err
    assert "ok, every ingested answer is there" in status.out
    events = gbatch("events", "--output", "json")
    assert events.code == 0 and '"kind": "ingested"' in events.out.replace('":"', '": "')
    gbatch.db.unlink()  # the results file lost: rebuilt from the state, sending nothing
    rebuilt = gbatch("rebuild")
    assert rebuilt.code == 0, rebuilt.err
    answered = gbatch("query", "select count(*), count(distinct key) from m0", "--format", "csv")
    assert answered.out.splitlines()[1] == f"{ROWS},{ROWS}"
    assert emulator.count("batches.create") == ROWS // PER_JOB
