"""The engine's fixture: a Runtime over the fake backend with real SQLite and DuckDB files."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from runner.adapters.state import StateStore
from runner.core.clock import FakeClock
from runner.core.pricing import load_prices
from runner.engine.runtime import Runtime
from runner.settings import Settings
from tests.fakes import FakeBackend


@pytest.fixture
def rt(tmp_path: Path) -> Runtime:
    settings = Settings(
        db=tmp_path / "results.duckdb", state_dir=tmp_path / "state", max_backoff_s=0.01
    )
    return Runtime(
        settings=settings,
        state=StateStore(settings.state_db),
        backend=FakeBackend(),
        prices=load_prices(),
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def timed(tmp_path: Path, clock: FakeClock) -> Runtime:
    """A Runtime whose every time rule reads ``clock`` (the state's timestamps too)."""
    settings = Settings(
        db=tmp_path / "results.duckdb",
        state_dir=tmp_path / "state",
        max_backoff_s=0.01,
        adopt_grace_s=300,
    )
    return Runtime(
        settings=settings,
        state=StateStore(settings.state_db, clock=clock),
        backend=FakeBackend(clock),
        prices=load_prices(),
        clock=clock,
    )


def rows(rt: Runtime, sql: str) -> list[tuple[object, ...]]:
    """Rows of the results database, opened read-only as a user would."""
    con = duckdb.connect(str(rt.results_db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()
