"""Real watchdog events on real files: writes, atomic renames, deletes; ignored paths."""

from __future__ import annotations

import os
import queue
import time
from pathlib import Path

import pytest

from runner.adapters.watcher import ManifestWatcher, ignored


def collect(events: queue.Queue[Path], want: Path, deadline_s: float = 10.0) -> set[Path]:
    """Paths seen until ``want`` shows up (or the deadline passes)."""
    seen: set[Path] = set()
    end = time.monotonic() + deadline_s
    while want not in seen and time.monotonic() < end:
        try:
            seen.add(events.get(timeout=0.1))
        except queue.Empty:
            continue
    return seen


@pytest.mark.parametrize("poll", [False, True], ids=["native", "polling"])
def test_writes_renames_and_deletes_are_reported(tmp_path: Path, poll: bool) -> None:
    events: queue.Queue[Path] = queue.Queue()
    root = tmp_path.resolve()
    watcher = ManifestWatcher(root, on_path=events.put, poll=poll, poll_interval_s=0.1)
    watcher.start()
    try:
        assert watcher.is_alive()
        (root / "a.yaml").write_text("model: x\n")
        assert root / "a.yaml" in collect(events, root / "a.yaml")
        staged = root / ".a.yaml.swp"
        staged.write_text("model: y\n")
        os.replace(staged, root / "a.yaml")  # how editors save: write aside, rename over
        assert root / "a.yaml" in collect(events, root / "a.yaml")
        (root / "a.yaml").unlink()
        assert root / "a.yaml" in collect(events, root / "a.yaml")
    finally:
        watcher.stop()
    assert not watcher.is_alive()


def test_hidden_swap_and_git_paths_are_ignored(tmp_path: Path) -> None:
    for name in (".git/HEAD", ".a.yaml.swp", "a.yaml~", "4913", "sub/.hidden.yaml", "x.tmp"):
        assert ignored(tmp_path / name, tmp_path), name
    for name in ("a.yaml", "sub/b.yml", "data/rows.csv"):
        assert not ignored(tmp_path / name, tmp_path), name
    assert ignored(Path("/elsewhere/a.yaml"), tmp_path)
