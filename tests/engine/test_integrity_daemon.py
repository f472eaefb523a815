"""The daemon's side of gbatch#13, driven in-process: a manifest dropped in with a colliding
table is refused like an invalid one (and the owner keeps its table); a results file that
another state writes stops the daemon before it applies anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.adapters import results
from runner.engine import reconcile
from runner.engine.daemon import Daemon, DaemonOptions
from runner.engine.runtime import Runtime
from runner.errors import LockedError


def write(root: Path, name: str, table: str) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(
        f"model: gemini-2.5-flash\nsource: {{key: n, rows: [{{n: 1}}, {{n: 2}}]}}\n"
        f"prompt: {{template: 'Number {{{{ n }}}}'}}\noutput: {{table: {table}}}\n"
    )
    return path


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = reconcile.apply_manifest

    def spy(rt: Runtime, loaded: object) -> object:
        calls.append(loaded.manifest.name)  # type: ignore[attr-defined]
        return real(rt, loaded)  # type: ignore[arg-type]

    monkeypatch.setattr(reconcile, "apply_manifest", spy)
    return calls


def test_a_manifest_whose_table_collides_is_refused_and_the_owner_goes_on(
    rt: Runtime, tmp_path: Path, applied: list[str]
) -> None:
    root = tmp_path / "m"
    root.mkdir()
    write(root, "a", "t")
    d = Daemon(rt, DaemonOptions(root=root, settle_s=0.0))
    d.reconcile(None)
    intruder = write(root, "b", "t_current_keys")
    d.reconcile({intruder})
    d.reconcile(None)
    assert applied == ["a"]  # b never; a, unchanged, needs no second apply
    owner = rt.state.manifest("a")
    assert owner is not None and owner.status == "ok"
    events = [message for _, message in rt.state.events_of(("invalid",), limit=10)]
    assert events and all("'t_current_keys' would be both" in e for e in events)
    assert str(intruder) in events[0] and str(root / "a.yaml") in events[0]
    assert [(o.table_name, o.manifest) for o in rt.state.table_owners()] == [("t", "a")]


def test_a_results_file_of_another_state_stops_the_daemon_before_it_applies(
    rt: Runtime, tmp_path: Path, applied: list[str]
) -> None:
    root = tmp_path / "m"
    root.mkdir()
    write(root, "a", "t")
    results.claim(rt.settings.db, results.Owner("f" * 32, "/elsewhere"))
    d = Daemon(rt, DaemonOptions(root=root, settle_s=0.0))
    with pytest.raises(LockedError, match="/elsewhere"):
        d.reconcile(None)
    assert applied == []
