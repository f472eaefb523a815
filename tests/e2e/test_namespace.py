"""Table names are a namespace manifests own (gbatch#13), through the CLI: a table that would
collide with another manifest's table or its derived names, or with a bookkeeping table, is
refused at validate time naming both manifests and both files; moving a table is explicit."""

from __future__ import annotations

import pytest

from runner.emulator import Emulator
from tests.conftest import Gbatch


def manifest(name: str, table: str | None = None, rows: int = 3) -> str:
    body = ", ".join(f"{{n: {i}}}" for i in range(rows))
    output = f"output: {{table: {table}}}\n" if table else ""
    return (
        f"name: {name}\nmodel: gemini-2.5-flash\nsource: {{key: n, rows: [{body}]}}\n"
        f"prompt: {{template: 'Number {{{{ n }}}}'}}\n{output}"
    )


@pytest.mark.parametrize("derived", ["t_history", "t_current_keys", "t_sources"])
def test_a_table_named_like_another_manifests_derived_table_is_refused_later(
    gbatch: Gbatch, emulator: Emulator, derived: str
) -> None:
    a = gbatch.write("a/a.yaml", manifest("a", "t"))
    assert gbatch("apply", "manifests/a", "--wait").code == 0
    b = gbatch.write("b/b.yaml", manifest("b", derived))
    for command in ("validate", "apply"):
        result = gbatch(command, "manifests/b", *(["--wait"] if command == "apply" else []))
        assert result.code == 2, result.err
        assert f"{b}:" in result.err and "output.table" in result.err
        assert "'a'" in result.err and str(a) in result.err and "'b'" in result.err
    assert gbatch.sql("select count(*) from t") == [(3,)]  # a's answers untouched
    assert gbatch.sql("select count(*) from t_history") == [(3,)]
    assert emulator.count("batches.create") == 1
    plan = gbatch("plan", "manifests/a")
    assert plan.code == 0 and "3 unchanged" in plan.out


def test_colliding_tables_in_one_invocation_are_both_refused(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    a = gbatch.write("a.yaml", manifest("a", "t"))
    b = gbatch.write("b.yaml", manifest("b", "t_history"))
    result = gbatch("validate", "manifests")
    assert result.code == 2
    lines = result.err.splitlines()
    assert any(line.startswith(f"{a}:") and str(b) in line for line in lines), result.err
    assert any(line.startswith(f"{b}:") and str(a) in line for line in lines), result.err
    assert gbatch("apply", "manifests", "--wait").code == 2
    assert emulator.count("batches.create") == 0


def test_a_second_manifest_cannot_take_a_table_over_until_it_is_moved(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    a = gbatch.write("A/a.yaml", manifest("a", "shared", rows=2))
    gbatch.write("B/b.yaml", manifest("b", "shared", rows=4))
    assert gbatch("apply", "manifests/A", "--wait").code == 0
    taken = gbatch("apply", "manifests/B", "--wait")
    assert taken.code == 2
    assert "belongs to manifest 'a'" in taken.err and str(a) in taken.err
    assert "gbatch rebuild --table shared --move-to b" in taken.err
    assert gbatch("apply", "manifests/A", "--wait").code == 0  # the owner keeps writing it
    assert gbatch.sql("select count(*), min(manifest) from shared") == [(2, "a")]
    assert emulator.count("batches.create") == 1

    moved = gbatch("rebuild", "--table", "shared", "--move-to", "b")
    assert moved.code == 0, moved.err
    assert gbatch("apply", "manifests/B", "--wait").code == 0
    assert gbatch.sql("select count(*), min(manifest) from shared") == [(4, "b")]
    assert gbatch.sql("select count(*) from shared_history where manifest = 'a'") == [(2,)]
    back = gbatch("apply", "manifests/A", "--wait")
    assert back.code == 2 and "belongs to manifest 'b'" in back.err


@pytest.mark.parametrize("table", ["gbatch_jobs", "gbatch_owner"])
def test_a_bookkeeping_table_name_is_refused(
    gbatch: Gbatch, emulator: Emulator, table: str
) -> None:
    path = gbatch.write("m.yaml", manifest("m", table))
    result = gbatch("validate", "manifests")
    assert result.code == 2
    assert f"{path}:" in result.err and "bookkeeping" in result.err
    assert gbatch("apply", "manifests", "--wait").code == 2
    assert emulator.count("batches.create") == 0


def test_a_manifest_name_that_defaults_to_a_derived_table_is_located_at_its_name(
    gbatch: Gbatch,
) -> None:
    gbatch.write("a.yaml", manifest("nums"))
    assert gbatch("apply", "manifests", "--wait").code == 0
    path = gbatch.write("b.yaml", manifest("nums-history"))  # table nums_history
    result = gbatch("validate", "manifests/b.yaml")
    assert result.code == 2
    assert f"{path}:1:7: metadata.name:" in result.err, result.err
