"""Query sources through the CLI: the default relative state directory, and a query that never
ends (stopped at its timeout with a located error, no process left behind)."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pytest

from runner.emulator import Emulator
from tests.adapters.test_query_source import NEVER_ENDING, alive, query_children
from tests.conftest import Gbatch

QUERY = (
    "model: gemini-2.5-flash\nsource:\n  key: name\n  query: "
    "\"select * from read_csv('data/people.csv') where lang = 'en'\"\n"
    "prompt: {template: 'Hi {{ name }}'}\n"
)


def test_a_query_source_applies_with_the_default_relative_state_dir(
    gbatch: Gbatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    gbatch.write("jobs/data/people.csv", "name,lang\nAda,en\nBo,sv\nCy,en\n")
    gbatch.write("jobs/q.yaml", QUERY)  # the query runs in jobs/, gbatch in the root
    monkeypatch.setenv("GBATCH_STATE_DIR", ".gbatch")  # the defaults, as `gbatch apply .` has
    monkeypatch.setenv("GBATCH_DB", "gbatch.duckdb")
    monkeypatch.chdir(gbatch.manifests)
    result = gbatch("apply", ".", "--wait")
    assert result.code == 0, result.err
    con = duckdb.connect(str(gbatch.manifests / "gbatch.duckdb"), read_only=True)
    try:
        assert con.execute("select name, text from q order by name").fetchall() == [
            ("Ada", "echo: Hi Ada"),
            ("Cy", "echo: Hi Cy"),
        ]
    finally:
        con.close()
    assert (gbatch.manifests / ".gbatch" / "state.sqlite").exists()


def test_a_never_ending_query_stops_at_its_timeout_with_a_located_error(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    gbatch.write(
        "q.yaml",
        f'model: gemini-2.5-flash\nsource:\n  query: "{NEVER_ENDING}"\n  timeout: 1s\n'
        "prompt: {template: '{{ n }}'}\n",
    )
    assert gbatch("validate", "manifests").code == 0  # validation samples the query: it ends
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 2
    path = Path(gbatch.manifests / "q.yaml")
    assert (
        f"{path}:3:10: source.query: the query did not finish within 1s (source.timeout)"
        in result.err
    ), result.err
    assert not [c for c in query_children(os.getpid()) if alive(c)]
    assert emulator.count("batches.create") == 0
