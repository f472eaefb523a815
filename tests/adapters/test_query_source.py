"""Query sources as real child processes over real files: bounded in time and memory, gone
with their parent, sampled by validation, and unable to read gbatch's own files."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from runner.adapters import query_source
from runner.adapters.query_source import QueryStopped
from runner.adapters.sources import build_requests, private_paths
from runner.core.loader import load_text
from runner.core.manifest import Manifest
from runner.engine.validate import check_data
from runner.errors import ManifestError

NEVER_ENDING = "with recursive t(n) as (select 1 union all select n + 1 from t) select n from t"
SECRET = "hunter2-answer"


def manifest(sql: str, **source: Any) -> Manifest:
    spec = {"model": "gemini-2.5-flash", "source": {"query": sql, **source}}
    spec["prompt"] = {"template": "x"}
    return Manifest.model_validate({"metadata": {"name": "q"}, "spec": spec})


def build(
    root: Path, sql: str, *, out: Path | None = None, **options: Any
) -> tuple[int, list[tuple[Any, ...]]]:
    """Build a query manifest under ``root``; the count and the source rows in the set."""
    source = {k: options.pop(k) for k in ("timeout",) if k in options}
    target = out or root.parent / "out" / "set.parquet"
    built = build_requests(manifest(sql, **source), base_dir=root, root=root, out=target, **options)
    con = duckdb.connect()
    try:
        names = [name for name, _ in built.columns]
        rows = con.execute(
            f"select {', '.join(names)} from read_parquet('{target}') order by all"
        ).fetchall()
    finally:
        con.close()
    return built.count, rows


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # fields after the command name


def query_children(parent: int) -> list[tuple[int, str]]:
    """(pid, start time) of every query child of ``parent`` (the start time tells reuse)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if fields and int(fields[1]) == parent and b"runner.adapters.query_source" in cmdline:
            found.append((int(entry.name), fields[19]))
    return found


def alive(child: tuple[int, str]) -> bool:
    fields = _stat(child[0])
    return fields is not None and fields[19] == child[1] and fields[0] not in ("Z", "X")


def until(condition: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def children() -> Iterator[list[tuple[int, str]]]:
    """Query children of this process, recorded while the test runs; none may outlive it."""
    seen: list[tuple[int, str]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.extend(c for c in query_children(os.getpid()) if c not in seen)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    yield seen
    done.set()
    watcher.join()
    for child in seen:  # never leave one burning CPU, even when the test failed
        if alive(child):
            os.kill(child[0], 9)


def test_a_never_ending_query_is_stopped_at_its_timeout_with_its_process(
    tmp_path: Path, children: list[tuple[int, str]]
) -> None:
    started = time.monotonic()
    with pytest.raises(ManifestError) as caught:
        build(tmp_path, NEVER_ENDING, timeout="1s")
    assert time.monotonic() - started < 30
    assert caught.value.field == "source.query"
    assert "the query did not finish within 1s (source.timeout) and was stopped" in str(
        caught.value
    )
    until(lambda: children, "the child to be seen")
    assert not any(alive(child) for child in children)


def test_the_timeout_error_names_the_manifest_file_line_and_field(
    tmp_path: Path, children: list[tuple[int, str]]
) -> None:
    text = f'model: gemini-2.5-flash\nsource:\n  query: "{NEVER_ENDING}"\n  timeout: 1s\n'
    (loaded,) = load_text(text + "prompt: {template: x}\n", path=tmp_path / "q.yaml", root=tmp_path)
    # validation only samples the query, so it ends; building the whole set does not
    assert check_data(loaded) is None
    with pytest.raises(ManifestError) as caught:
        build_requests(
            loaded.manifest, base_dir=tmp_path, root=tmp_path, out=tmp_path.parent / "o.parquet"
        )
    assert caught.value.field == "source.query"
    assert not any(alive(child) for child in children)


def test_validation_samples_a_query_instead_of_running_it_whole(tmp_path: Path) -> None:
    (loaded,) = load_text(
        f'model: gemini-2.5-flash\nsource: {{query: "{NEVER_ENDING}", key: n}}\n'
        "prompt: {template: '{{ n }}'}\n",
        path=tmp_path / "q.yaml",
        root=tmp_path,
    )
    assert check_data(loaded) is None  # the default timeout is minutes: a whole run fails the test


def test_cancel_stops_a_running_query_and_its_process(
    tmp_path: Path, children: list[tuple[int, str]]
) -> None:
    cancel = threading.Event()

    def stop_once_running() -> None:
        until(lambda: children, "the query child")
        cancel.set()

    stopper = threading.Thread(target=stop_once_running)
    stopper.start()
    with pytest.raises(QueryStopped, match="gbatch is stopping"):
        build(tmp_path, NEVER_ENDING, cancel=cancel)
    stopper.join()
    assert not any(alive(child) for child in children)


def test_the_query_process_dies_with_its_parent_even_after_kill_9(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path\n"
        "from tests.adapters.test_query_source import NEVER_ENDING, manifest\n"
        "from runner.adapters.sources import build_requests\n"
        "root = Path(sys.argv[1])\n"
        "build_requests(manifest(NEVER_ENDING), base_dir=root, root=root, out=root / 'o.pq')\n"
    )
    repo = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=repo)
    found: list[tuple[int, str]] = []
    try:
        until(lambda: found.extend(query_children(parent.pid)) or found, "the query child")
        parent.kill()
        parent.wait(timeout=30)
        until(lambda: not alive(found[0]), "the orphaned query child to die", timeout=10)
    finally:
        if parent.poll() is None:
            parent.kill()
        for child in found:
            if alive(child):
                os.kill(child[0], 9)


def test_a_query_over_its_memory_limit_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(query_source, "MEMORY_LIMIT", "64MB")
    with pytest.raises(ManifestError, match="the query failed: Out of Memory Error") as caught:
        build(tmp_path, "select list(i) as l from range(100000000) t(i)")
    assert caught.value.field == "source.query"


@pytest.fixture
def state_in_root(tmp_path: Path) -> tuple[Path, tuple[Path, ...]]:
    """The default layout (`gbatch apply .`): state dir and results file under the root,
    holding a previous manifest's answers, beside the data a query should read."""
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "data" / "people.csv").write_text("name\nAda\nBo\n")
    answers = root / ".gbatch" / "answers"
    answers.mkdir(parents=True)
    con = duckdb.connect()
    con.execute(f"copy (select '{SECRET}' as response) to '{answers / 'job.parquet'}'")
    con.close()
    results = duckdb.connect(str(root / "gbatch.duckdb"))
    results.execute(f"create table other as select '{SECRET}' as text")
    results.close()
    (root / "data" / "sneak.parquet").symlink_to(answers / "job.parquet")
    return root, private_paths(state_dir=root / ".gbatch", db=root / "gbatch.duckdb")


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        (
            "select content from read_blob('**')",
            "'**': it would reach gbatch's own files (.gbatch, gbatch.duckdb). Read inside",
        ),
        (
            "select content from read_text('*')",
            "'*': it would reach gbatch's own files (.gbatch, gbatch.duckdb)",
        ),
        (
            "select * from read_parquet('.gbatch/answers/*.parquet')",
            "'.gbatch/answers/*.parquet': .gbatch is off limits to sources",
        ),
        (
            "select content from read_blob('gbatch.duckdb')",
            "gbatch.duckdb is off limits to sources",
        ),
        ("select * from read_parquet('data/sneak.parquet')", ".gbatch is off limits to sources"),
        (
            "select * from read_parquet('data/../.gbatch/answers/job.parquet')",
            ".gbatch is off limits to sources",
        ),
        ("select * from read_parquet('ROOT/.gbatch/answers/job.parquet')", ".gbatch is off limits"),
        (
            "select content from read_blob('*/answers/*')",
            "'*/answers/*': it would reach gbatch's own files",
        ),
    ],
)
def test_a_query_cannot_read_gbatchs_own_files_under_its_root(
    state_in_root: tuple[Path, tuple[Path, ...]], sql: str, why: str
) -> None:
    root, forbidden = state_in_root
    sql = sql.replace("ROOT", str(root))
    out = root / ".gbatch" / "sets" / "q" / "set.parquet"  # where apply builds it
    with pytest.raises(ManifestError) as caught:
        build(root, sql, out=out, forbidden=forbidden)
    assert caught.value.field == "source.query"
    assert "the query may not read" in str(caught.value) and why in str(caught.value)
    assert SECRET not in str(caught.value)


def test_the_same_root_still_serves_the_data_beside_gbatchs_files(
    state_in_root: tuple[Path, tuple[Path, ...]],
) -> None:
    root, forbidden = state_in_root
    out = root / ".gbatch" / "sets" / "q" / "set.parquet"
    sql = "select name from read_csv('data/*.csv')"
    assert build(root, sql, out=out, forbidden=forbidden) == (2, [("Ada",), ("Bo",)])


def test_a_query_refuses_a_hard_linked_file_and_names_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside.csv"
    outside.write_text("secret\nhunter2\n")
    os.link(outside, root / "linked.csv")
    (root / "fine.csv").write_text("name\nAda\n")
    with pytest.raises(ManifestError) as caught:
        build(root, "select * from read_csv('linked.csv')")
    assert "may not read 'linked.csv': linked.csv has 2 hard links" in str(caught.value)
    with pytest.raises(ManifestError) as caught:
        build(root, "select * from read_csv('*.csv')")
    assert "'*.csv': it would reach linked.csv, which has 2 hard links" in str(caught.value)
    assert build(root, "select * from read_csv('fine.csv')") == (1, [("Ada",)])


def test_a_git_checkout_inside_the_state_dir_reads_its_files_but_not_its_git_dir(
    tmp_path: Path,
) -> None:
    state = tmp_path / ".gbatch"
    checkout = state / "checkout"  # where `gbatch watch --git` keeps it
    (checkout / ".git").mkdir(parents=True)
    (checkout / ".git" / "config").write_text("url = https://user:token-123@example.com/x\n")
    (checkout / "people.csv").write_text("name\nAda\n")
    (state / "answers").mkdir()
    forbidden = private_paths(state_dir=state, db=tmp_path / "gbatch.duckdb", git_checkout=checkout)
    out = state / "sets" / "q" / "set.parquet"
    sql = "select name from read_csv('people.csv')"
    assert build(checkout, sql, out=out, forbidden=forbidden) == (1, [("Ada",)])
    with pytest.raises(ManifestError) as caught:
        build(
            checkout, "select content from read_text('.git/config')", out=out, forbidden=forbidden
        )
    assert "may not read '.git/config': .git is off limits to sources" in str(caught.value)
    assert "token-123" not in str(caught.value)
