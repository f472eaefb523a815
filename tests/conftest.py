"""Shared fixtures: a real emulator over HTTP, and the gbatch CLI run in-process against it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from runner.cli import main
from runner.emulator import Emulator, EmulatorConfig
from runner.emulator.service import StoredFile

API_KEY = "test-key-7f3a9c"  # tests assert it never leaks into output, logs or databases


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    emu = Emulator(EmulatorConfig(data_dir=tmp_path / "emulator"))
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def uploads(emulator: Emulator) -> list[StoredFile]:
    """Every file the client uploaded, deleted ones included (gbatch deletes its inputs)."""
    with emulator.service.lock:
        stored = [*emulator.service.files.values(), *emulator.service.deleted.values()]
    return [f for f in stored if f.source == "UPLOADED"]


@dataclass
class Result:
    code: int
    out: str
    err: str


class Gbatch:
    """Runs ``gbatch`` commands in this process with a test environment; reads the results."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self.manifests = root / "manifests"
        self.manifests.mkdir(exist_ok=True)
        self.db = root / "results.duckdb"
        self.state_dir = root / "state"
        self._capsys = capsys

    def __call__(self, *args: str) -> Result:
        self._capsys.readouterr()
        code = main(list(args))
        captured = self._capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def write(self, relative: str, text: str) -> Path:
        path = self.manifests / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def sql(self, query: str) -> list[tuple[object, ...]]:
        """Rows from the results database, opened read-only as a user would."""
        con = duckdb.connect(str(self.db), read_only=True)
        try:
            return con.execute(query).fetchall()
        finally:
            con.close()


@pytest.fixture
def gbatch(
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Gbatch:
    for name in ("GOOGLE_API_KEY", "GBATCH_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", API_KEY)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", emulator.base_url)
    monkeypatch.setenv("GBATCH_DB", str(tmp_path / "results.duckdb"))
    monkeypatch.setenv("GBATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("GBATCH_POLL_INTERVAL_S", "0.02")
    monkeypatch.setenv("GBATCH_HTTP_TIMEOUT_S", "5")
    monkeypatch.chdir(tmp_path)
    return Gbatch(tmp_path, capsys)
