"""`gbatch watch` as a real process: real file events, a real git repository, signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner.emulator import Emulator, Fault
from tests.conftest import API_KEY, Gbatch


def manifest(rows: list[str], name: str = "cities") -> str:
    body = "".join(f"    - {{city: {r}}}\n" for r in rows)
    return (
        f"name: {name}\nmodel: gemini-2.5-flash\nsource:\n  key: city\n  rows:\n{body}"
        "prompt: {template: 'Weather in {{ city }}?'}\n"
    )


def until(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Daemon:
    def __init__(self, gbatch: Gbatch, *args: str) -> None:
        self.log = (gbatch.root / f"watch-{time.monotonic_ns()}.log").open("w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runner", "watch", *args, "--settle", "0.5s"],
            cwd=gbatch.root,
            env={**os.environ, "GBATCH_POLL_INTERVAL_S": "0.1"},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(timeout=30)
        if not daemon.log.closed:
            daemon.log.close()


def rows(gbatch: Gbatch, sql: str) -> list[tuple[object, ...]]:
    try:
        return gbatch.sql(sql)
    except Exception:  # not created yet, or held by the daemon's write for a moment
        return []


def test_drop_edit_delete_with_real_file_events(
    gbatch: Gbatch, emulator: Emulator, daemons: list[Daemon]
) -> None:
    daemon = Daemon(gbatch, "manifests")
    daemons.append(daemon)
    target = gbatch.manifests / "cities.yaml"
    staged = gbatch.manifests / ".cities.yaml.swp"
    staged.write_text(manifest(["Oslo", "Lima"]))
    os.replace(staged, target)  # an editor's atomic save
    until(lambda: rows(gbatch, "select count(*) from cities") == [(2,)], "first answers")
    target.write_text(manifest(["Oslo", "Lima", "Pune"]))
    until(lambda: rows(gbatch, "select count(*) from cities") == [(3,)], "the added row")
    assert emulator.count("batches.create") == 2
    jobs = gbatch("query", "select requests from gbatch_jobs order by id", "--format", "csv")
    assert jobs.out.split() == ["requests", "2", "1"]  # the edit sent only the new row
    assert rows(gbatch, "select count(*) from cities_history") == [(3,)]
    target.unlink()
    until(lambda: "removed" in gbatch("status").out, "the removal")
    assert rows(gbatch, "select count(*) from cities") == [(3,)]  # results are kept
    assert daemon.stop() == 0
    assert emulator.count("batches.create") == 2


def test_a_second_daemon_on_the_same_state_is_refused(
    gbatch: Gbatch, daemons: list[Daemon]
) -> None:
    first = Daemon(gbatch, "manifests")
    daemons.append(first)
    until(lambda: "gbatch watch" in first.output(), "the first daemon")
    second = subprocess.run(
        [sys.executable, "-m", "runner", "watch", "manifests"],
        cwd=gbatch.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 5
    assert "in use by" in second.stderr
    assert first.stop() == 0


def test_an_invalid_edit_keeps_the_last_good_version_and_others_go_on(
    gbatch: Gbatch, emulator: Emulator, daemons: list[Daemon]
) -> None:
    gbatch.write("cities.yaml", manifest(["Oslo"]))
    daemon = Daemon(gbatch, "manifests")
    daemons.append(daemon)
    until(lambda: rows(gbatch, "select count(*) from cities") == [(1,)], "first answers")
    gbatch.write("cities.yaml", manifest(["Oslo"]) + "bogus_field: 1\n")
    gbatch.write("towns.yaml", manifest(["Bergen"], name="towns"))
    until(lambda: rows(gbatch, "select count(*) from towns") == [(1,)], "the other manifest")
    until(lambda: "invalid" in gbatch("status").out, "the invalid status")
    detail = gbatch(
        "query",
        "select status, last_error from gbatch_manifests where name = 'cities'",
        "--format",
        "json",
    ).out
    assert '"status": "invalid"' in detail
    assert "cities.yaml:8:1: bogus_field: unknown field 'bogus_field'" in detail
    assert rows(gbatch, "select count(*) from cities") == [(1,)]
    assert daemon.stop() == 0


def test_a_git_repository_drives_what_runs(
    gbatch: Gbatch, emulator: Emulator, daemons: list[Daemon], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    (repo / "jobs").mkdir(parents=True)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@e.com", *args],
            cwd=repo,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "--quiet", "--initial-branch=main")
    (repo / "jobs" / "cities.yaml").write_text(manifest(["Oslo"]))
    git("add", ".")
    git("commit", "--quiet", "-m", "add")
    first = git("rev-parse", "HEAD")
    daemon = Daemon(gbatch, "--git", str(repo), "--path", "jobs", "--interval", "0.2s")
    daemons.append(daemon)
    until(lambda: rows(gbatch, "select commit from cities") == [(first,)], "the first commit")
    (repo / "jobs" / "cities.yaml").write_text(manifest(["Oslo", "Lima"]))
    git("commit", "--quiet", "-am", "change")
    second = git("rev-parse", "HEAD")
    until(lambda: rows(gbatch, "select count(*) from cities") == [(2,)], "the second commit")
    assert rows(gbatch, "select key, commit from cities order by key") == [
        ("Lima", second),
        ("Oslo", first),
    ]
    git("rm", "--quiet", "jobs/cities.yaml")
    git("commit", "--quiet", "-m", "remove")
    until(lambda: "removed" in gbatch("status").out, "the removal")
    recorded = gbatch(
        "query", "select status, commit_sha from gbatch_manifests", "--format", "csv"
    ).out.split()
    assert recorded == ["status,commit_sha", f"removed,{second}"]  # the last applied commit
    assert rows(gbatch, "select count(*) from cities") == [(2,)]
    assert emulator.count("batches.create") == 2
    assert daemon.stop() == 0


def test_sigterm_mid_flight_then_restart_adopts_the_job_without_a_second_create(
    gbatch: Gbatch, daemons: list[Daemon], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner.emulator import EmulatorConfig

    with Emulator(EmulatorConfig(data_dir=tmp_path / "slow", pending_seconds=1000)) as slow:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", slow.base_url)
        gbatch.write("cities.yaml", manifest(["Oslo", "Lima"]))
        first = Daemon(gbatch, "manifests")
        daemons.append(first)
        until(lambda: slow.count("batches.create") == 1, "the create")
        until(lambda: "pending" in gbatch("status").out, "the job recorded")
        assert first.stop() == 0
        assert "Traceback" not in first.output()
        second = Daemon(gbatch, "manifests")
        daemons.append(second)
        until(lambda: slow.count("batches.list") >= 1 and second.output(), "the restart")
        slow.advance(2000)
        until(lambda: rows(gbatch, "select count(*) from cities") == [(2,)], "the answers")
        assert slow.count("batches.create") == 1
        assert second.stop() == 0


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_and_health_endpoints_report_the_daemon(
    gbatch: Gbatch, emulator: Emulator, daemons: list[Daemon]
) -> None:
    emulator.add_fault(Fault(endpoint="batches.list", status=503, times=1, retry_delay_s=0.01))
    daemon = Daemon(gbatch, "manifests", "--metrics-port", "0")
    daemons.append(daemon)
    until(lambda: re.search(r"metrics: (http://\S+)/metrics", daemon.output()), "the port")
    match = re.search(r"metrics: (http://\S+)/metrics", daemon.output())
    assert match is not None
    base = match.group(1)
    assert get(f"{base}/healthz") == (200, "ok\n")
    gbatch.write("cities.yaml", manifest(["Oslo", "Lima"]))
    until(lambda: rows(gbatch, "select count(*) from cities") == [(2,)], "the answers")

    def scraped() -> str:
        return get(f"{base}/metrics")[1]

    until(lambda: 'gbatch_jobs{phase="ingested",state="succeeded"} 1.0' in scraped(), "metrics")
    text = scraped()
    assert 'gbatch_manifests{status="ok"} 1.0' in text
    assert 'gbatch_requests{outcome="succeeded"} 2.0' in text
    assert re.search(r'gbatch_tokens_total\{kind="prompt"\} [1-9]', text)
    assert re.search(r"gbatch_cost_usd_total [0-9.e-]+", text)
    assert 'gbatch_api_errors_total{code="503"} 1.0' in text
    assert re.search(r"gbatch_reconcile_duration_seconds_count [1-9]", text)
    assert API_KEY not in text
    assert get(f"{base}/nothing")[0] == 404
    assert daemon.stop() == 0


def test_a_hundred_manifests_written_at_once_each_submit_once(
    gbatch: Gbatch, emulator: Emulator, daemons: list[Daemon]
) -> None:
    daemon = Daemon(gbatch, "manifests")
    daemons.append(daemon)
    until(lambda: "gbatch watch" in daemon.output(), "the daemon")
    for i in range(100):
        gbatch.write(f"m{i:03}.yaml", manifest([f"City{i}"], name=f"m{i:03}"))

    # `gbatch query` refuses a results file that does not exist (a typo'd GBATCH_DB); the
    # daemon's first cycle creates it, and from then on every query must succeed
    until(gbatch.db.exists, "the daemon's first cycle")

    def ingested() -> int:
        result = gbatch(
            "query", "select count(*) from gbatch_jobs where phase = 'ingested'", "--format", "csv"
        )
        assert result.code == 0, result.err
        return int(result.out.split()[-1])

    until(lambda: ingested() == 100, "every manifest's answers", timeout=110)
    assert emulator.count("batches.create") == 100
    assert rows(gbatch, "select count(*) from m042") == [(1,)]
    assert daemon.stop() == 0


def test_failed_lines_are_retried_as_soon_as_their_job_is_ingested(
    gbatch: Gbatch, emulator: Emulator, daemons: list[Daemon]
) -> None:
    emulator.add_fault(Fault(endpoint="batches.create", fail_lines_fraction=0.5, times=1))
    cities = [f"City{i}" for i in range(12)]  # each line fails with p = 0.5: some will
    gbatch.write("cities.yaml", manifest(cities))
    daemon = Daemon(gbatch, "manifests", "--resync", "1h")  # no resync will come to help
    daemons.append(daemon)
    until(
        lambda: (
            rows(gbatch, "select count(*) filter (status = 'succeeded') from cities") == [(12,)]
        ),
        "the retried lines",
    )
    assert emulator.count("batches.create") == 2
    jobs = gbatch(
        "query", "select requests, failed from gbatch_jobs order by id", "--format", "csv"
    ).out.split()[1:]
    (first_requests, first_failed), (second_requests, second_failed) = (
        map(int, line.split(",")) for line in jobs
    )
    assert first_requests == 12 and first_failed >= 1
    assert (second_requests, second_failed) == (first_failed, 0)  # only the failed went again
    assert daemon.stop() == 0


def test_the_daemon_answers_identical_requests_of_two_manifests_once(
    gbatch: Gbatch, emulator: Emulator, daemons: list[Daemon]
) -> None:
    gbatch.write("a.yaml", manifest(["Oslo", "Lima"], name="a"))
    gbatch.write("b.yaml", manifest(["Oslo", "Lima"], name="b"))
    daemon = Daemon(gbatch, "manifests", "--resync", "1h")
    daemons.append(daemon)
    until(
        lambda: (
            rows(gbatch, "select count(*) from a") == [(2,)]
            and rows(gbatch, "select count(*) from b") == [(2,)]
        ),
        "both tables",
    )
    assert emulator.count("batches.create") == 1
    # a is applied first (files in name order) and pays; b copies its answers
    assert rows(gbatch, "select sum(cost_usd) > 0 from a") == [(True,)]
    assert rows(gbatch, "select sum(cost_usd) from b") == [(0.0,)]
    assert daemon.stop() == 0
