"""The command line as a kubectl / dbt user expects it: parsing, exit codes, help, completion,
``invoke`` results, ``-o json`` against its documented schema, fixed-notation numbers, JSON
logs, selectors, diff, events, init, cancel, prune. Through the CLI, against the emulator."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from runner.cli import invoke, views
from runner.emulator import Emulator, EmulatorConfig
from tests.conftest import API_KEY, Gbatch

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "docs" / "cli-output.schema.json"


def cities(name: str, rows: list[str], labels: str = "{}", extra: str = "") -> str:
    listed = ", ".join(f"{{city: {r}}}" for r in rows)
    return (
        f"apiVersion: gbatch/v1\nkind: Batch\nmetadata: {{name: {name}, labels: {labels}}}\n"
        f"spec:\n  model: gemini-2.5-flash\n  source: {{key: city, rows: [{listed}]}}\n"
        f"  prompt: {{template: 'Weather in {{{{ city }}}}?'}}\n{extra}"
    )


def test_bad_arguments_exit_2_with_the_usage_line(gbatch: Gbatch) -> None:
    for args in (
        ["apply"],  # no PATH
        ["plan", "manifests", "--bogus"],
        ["status", "-o", "yaml"],
        ["watch"],  # neither a folder nor --git: was exit 1
        ["watch", "manifests", "--resync", "soon"],
        ["nonsense"],
    ):
        result = gbatch(*args)
        assert result.code == 2, (args, result.out, result.err)
        assert result.err.strip(), args


def test_options_go_anywhere_and_help_shows_defaults_and_examples(gbatch: Gbatch) -> None:
    gbatch.write("a.yaml", cities("a", ["Oslo"]))
    assert gbatch("validate", "manifests", "-v", "--log-format", "text").code == 0
    assert gbatch("-v", "validate", "manifests").code == 0
    help_text = gbatch("apply", "--help")
    assert help_text.code == 0
    assert "[default: 10.0; x>=0]" in " ".join(help_text.out.split())  # --confirm-above
    assert "Examples:" in help_text.out and "gbatch apply manifests/ --wait" in help_text.out
    assert gbatch("--version").out.startswith("gbatch ")


def test_shell_completion_completes_commands_and_choices(tmp_path: Path) -> None:
    env = {**os.environ, "_GBATCH_COMPLETE": "bash_complete", "COMP_CWORD": "1"}
    words = subprocess.run(
        [sys.executable, "-m", "runner"],
        env={**env, "COMP_WORDS": "gbatch ap"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    ).stdout
    assert "plain,apply" in words.splitlines()
    choices = subprocess.run(
        [sys.executable, "-m", "runner"],
        env={**env, "COMP_WORDS": "gbatch status -o ", "COMP_CWORD": "3"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    ).stdout.splitlines()
    assert choices == ["plain,text", "plain,json"]
    script = subprocess.run(
        [sys.executable, "-m", "runner", "completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "_GBATCH_COMPLETE=bash_complete" in script


def test_invoke_returns_the_structured_outcome(gbatch: Gbatch, emulator: Emulator) -> None:
    gbatch.write("a.yaml", cities("a", ["Oslo", "Lima"]))
    planned = invoke(["plan", "manifests"])
    assert planned.success and planned.error is None
    assert isinstance(planned.result, views.Plan)
    (item,) = planned.result.items
    assert (item.name, item.requests.new, len(item.jobs)) == ("a", 2, 1)
    applied = invoke(["apply", "manifests", "--wait"])
    assert applied.code == 0
    assert applied.result.status.manifests[0].succeeded == 2
    status = invoke(["status", "--jobs"])
    assert isinstance(status.result, views.Status)
    assert [(j.manifest, j.phase, j.remote_state) for j in status.result.jobs] == [
        ("a", "ingested", "succeeded")
    ]
    refused = invoke(["plan", "nowhere"])
    assert refused.code == 2 and refused.error is not None
    usage = invoke(["status", "--bogus"])
    assert usage.code == 2 and usage.result is None


def test_json_output_follows_the_documented_schema(gbatch: Gbatch, emulator: Emulator) -> None:
    documented = json.loads(SCHEMA_FILE.read_text())
    assert documented == views.output_schema(), "regenerate docs/cli-output.schema.json"
    gbatch.write("a.yaml", cities("a", ["Oslo", "Lima"], labels="{team: x}"))
    gbatch.write("bad.yaml", "model: gemini-2.5-flash\nbogus: 1\n")
    validation = gbatch("validate", "manifests", "-o", "json")
    assert validation.code == 2
    (gbatch.manifests / "bad.yaml").unlink()
    outputs = [validation.out]
    for args in (
        ["plan", "manifests", "-o", "json"],
        ["diff", "manifests", "-o", "json"],
        ["status", "-o", "json"],
    ):
        result = gbatch(*args)
        assert result.code == 0, result.err
        outputs.append(result.out)
    assert gbatch("apply", "manifests", "--wait").code == 0
    for args in (["status", "--jobs", "-o", "json"], ["events", "-o", "json"]):
        outputs.append(gbatch(*args).out)
    kinds = []
    for text in outputs:
        document = json.loads(text)
        jsonschema.validate(document, documented)
        assert document["apiVersion"] == "gbatch/v1"
        kinds.append(document["kind"])
    assert kinds == ["Validation", "Plan", "Diff", "Status", "Status", "Events"]
    errors = json.loads(validation.out)["errors"]
    assert [(e["line"], e["column"]) for e in errors if e["field"] == "bogus"] == [(2, 1)]
    jobs = json.loads(outputs[4])["jobs"]
    assert jobs[0]["remote_state"] == "succeeded" and jobs[0]["age_s"] >= 0


def test_costs_are_shown_in_fixed_notation_without_colour(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    gbatch.write("a.yaml", cities("a", ["Oslo"]))
    assert gbatch("apply", "manifests", "--wait").code == 0
    for args in (["status", "--jobs"], ["query", "select cost_usd, 3.01e-05 as tiny from a"]):
        out = gbatch(*args).out
        # a number in scientific notation, standing alone (remote ids such as
        # batches/xq9e9xq are random letters and digits and must not match)
        assert not re.search(r"(?<![\w/])\d+(\.\d+)?[eE][-+]?\d+(?!\w)", out), out
        assert "\x1b[" not in out  # not a terminal: no colour
    assert "0.0000301" in gbatch("query", "select 3.01e-05 as tiny").out


def test_plan_without_counting_tokens_needs_no_api_key(
    gbatch: Gbatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    gbatch.write("a.yaml", cities("a", ["Oslo", "Lima"]))
    monkeypatch.delenv("GEMINI_API_KEY")
    result = gbatch("plan", "manifests", "--no-count-tokens")
    assert result.code == 0, result.err
    assert "2 new" in result.out and "characters / 4" in result.out
    counted = gbatch("plan", "manifests")
    assert counted.code == 2 and "--no-count-tokens" in counted.err


def test_an_unknown_model_warns_at_validate_naming_the_known_ones(gbatch: Gbatch) -> None:
    gbatch.write("a.yaml", cities("a", ["Oslo"]).replace("gemini-2.5-flash", "gemini-2.5-flsh"))
    result = gbatch("validate", "manifests")
    assert result.code == 0, result.err  # a warning, not an error: a price file may come later
    assert "a.yaml:5:10: spec.model: unknown model 'gemini-2.5-flsh'" in result.err
    assert "did you mean 'gemini-2.5-flash'?" in result.err
    assert "gemini-2.5-pro" in result.err  # the known models are listed


def test_json_logs_have_one_shape_on_every_line(gbatch: Gbatch, emulator: Emulator) -> None:
    gbatch.write("a.yaml", cities("a", ["Oslo", "Lima"]))
    result = gbatch("apply", "manifests", "--wait", "--log-format", "json", "-v")
    assert result.code == 0, result.err
    lines = result.err.splitlines()
    assert lines
    entries = [json.loads(line) for line in lines]  # every line, progress included
    for entry in entries:
        assert {"time", "level", "logger", "event", "message", "manifest", "job", "phase"} <= set(
            entry
        )
        assert re.search(r"[+-]\d\d:\d\d$", entry["time"]), entry["time"]  # timezone-aware
    by_event = {e["event"]: e for e in entries}
    for event in ("created", "ingested"):  # the engine's lines carry their manifest and job
        assert by_event[event]["manifest"] == "a" and isinstance(by_event[event]["job"], int)
    assert by_event["ingested"]["phase"] == "ingested"
    progress = [e for e in entries if e["event"] == "progress"]
    assert progress and progress[-1]["manifest"] == "a"
    assert "2/2 done, 0 failed" in progress[-1]["message"]
    assert API_KEY not in result.err


def test_apply_wait_shows_progress_per_manifest_when_not_a_terminal(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    gbatch.write("a.yaml", cities("a", ["Oslo", "Lima"]))
    gbatch.write("b.yaml", cities("b", ["Pune"]))
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    finals = [line for line in result.err.splitlines() if "done," in line]
    assert any(re.match(r"\[\d+:\d\d:\d\d\] a: 2/2 done, 0 failed · ", f) for f in finals), finals
    assert any(" b: 1/1 done, 0 failed" in f for f in finals), finals


def test_selectors_pick_manifests_by_label(gbatch: Gbatch, emulator: Emulator) -> None:
    gbatch.write("a.yaml", cities("a", ["Oslo"], labels="{team: north}"))
    gbatch.write("b.yaml", cities("b", ["Lima"], labels="{team: south}"))
    planned = invoke(["plan", "manifests", "-l", "team=north"])
    assert [p.name for p in planned.result.items] == ["a"]
    assert [p.name for p in invoke(["plan", "manifests", "-l", "team!=north"]).result.items] == [
        "b"
    ]
    assert gbatch("apply", "manifests", "--selector", "team=south", "--wait").code == 0
    assert emulator.count("batches.create") == 1
    assert gbatch("apply", "manifests", "--wait").code == 0
    status = invoke(["status", "-l", "team=south"]).result
    assert [m.name for m in status.manifests] == ["b"]
    assert gbatch("plan", "manifests", "-l", "team").code == 2
    nobody = gbatch("plan", "manifests", "-l", "team=west")
    assert nobody.code == 2 and "matches team=west" in nobody.err


PRODUCTS = "sku,name\nA-1,Trail shoe\nA-2,Wool sock\nB-1,Tent\n"


def product_manifest(template: str = "Describe {{ name }}.", extra: str = "") -> str:
    return (
        "name: products\nmodel: gemini-2.5-flash\nsource: {path: products.csv, key: sku}\n"
        f"prompt: {{template: '{template}'}}\n{extra}"
    )


def test_diff_names_new_changed_and_removed_keys_and_what_changed(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    gbatch.write("products.csv", PRODUCTS)
    gbatch.write("products.yaml", product_manifest())
    first = invoke(["diff", "manifests"]).result.items[0]
    assert (first.status, first.new, first.new_keys) == ("new", 3, ["A-1", "A-2", "B-1"])
    assert gbatch("apply", "manifests", "--wait").code == 0
    gbatch.write("products.csv", "sku,name\nA-1,Trail shoe\nB-1,Big tent\nC-1,Stove\n")
    (item,) = invoke(["diff", "manifests"]).result.items
    assert (item.status, item.new, item.changed, item.removed, item.unchanged) == (
        "changed",
        1,
        1,
        1,
        1,
    )
    assert (item.new_keys, item.removed_keys) == (["C-1"], ["A-2"])
    assert [(c.key, c.parts) for c in item.changed_keys] == [("B-1", ["prompt"])]
    text = gbatch("diff", "manifests").out
    assert "+ C-1" in text and "- A-2" in text and "~ B-1  (prompt)" in text
    gbatch.write("products.csv", PRODUCTS)
    gbatch.write(
        "products.yaml",
        product_manifest(extra="generation: {temperature: 0.9}\n").replace(
            "gemini-2.5-flash", "gemini-2.5-pro"
        ),
    )
    (item,) = invoke(["diff", "manifests", "--limit", "2"]).result.items
    assert item.changed == 3 and len(item.changed_keys) == 2
    assert item.changed_keys[0].parts == ["generation", "model"]
    assert "1 more (--limit)" in gbatch("diff", "manifests", "--limit", "2").out
    gbatch.write("products.yaml", product_manifest(extra="system: Be brief.\n"))
    assert gbatch("validate", "manifests").code == 2  # system sits under prompt
    gbatch.write(
        "products.yaml",
        "name: products\nmodel: gemini-2.5-flash\nsource: {path: products.csv, key: sku}\n"
        "prompt: {system: Be brief., template: 'Describe {{ name }}.'}\n"
        "output_schema: {type: object, properties: {title: {type: string}}}\n",
    )
    (item,) = invoke(["diff", "manifests"]).result.items
    assert item.changed_keys[0].parts == ["schema", "system"]
    assert emulator.count("batches.create") == 1  # diff changed nothing


def test_events_lists_and_follows_the_event_log(gbatch: Gbatch, emulator: Emulator) -> None:
    gbatch.write("a.yaml", cities("a", ["Oslo"]))
    with subprocess.Popen(
        [sys.executable, "-m", "runner", "events", "--follow", "-o", "json"],
        cwd=gbatch.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as follower:
        assert gbatch("apply", "manifests", "--wait").code == 0
        kinds: list[str] = []
        deadline = time.monotonic() + 60
        while "ingested" not in kinds:
            assert time.monotonic() < deadline, kinds
            assert follower.stdout is not None
            entry = json.loads(follower.stdout.readline())
            assert entry["manifest"] in ("a", None)
            kinds.append(entry["kind"])
        assert kinds[:2] == ["version", "planned"]
        follower.terminate()
    listed = gbatch("events", "a")
    assert listed.code == 0
    assert re.search(r"^\S+  a  version: version \w{12}: 1 requests", listed.out, re.M)
    assert gbatch("events", "nobody").out == ""
    assert len(invoke(["events", "--limit", "2"]).result.items) == 2


def test_init_writes_a_valid_manifest_for_each_kind_of_data_file(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    import duckdb

    data = gbatch.manifests / "data"
    data.mkdir()
    (data / "products.csv").write_text("name,sku,price\nShoe,A-1,10.5\nSock,A-2,10.5\n")
    result = gbatch("init", "manifests/data/products.csv")
    assert result.code == 0, result.err
    written = (data / "products.yaml").read_text()
    assert 'key: "sku"' in written and "name: {{ name }}" in written
    assert "price (double)" in written
    assert "next: gbatch plan manifests/data/products.yaml" in result.out
    assert gbatch("init", "manifests/data/products.csv").code == 2  # no overwrite
    seed = {"key": "r1", "request": {"contents": [{"parts": [{"text": "Hi"}]}]}}
    (data / "batch_requests.jsonl").write_text(json.dumps(seed) + "\n")
    assert gbatch("init", "manifests/data/batch_requests.jsonl").code == 0
    assert 'requests: "batch_requests.jsonl"' in (data / "batch_requests.yaml").read_text()
    con = duckdb.connect()
    con.execute(f"copy (select 'same' as lang, i as n from range(3) t(i)) to '{data}/rows.parquet'")
    con.close()
    assert gbatch("init", "manifests/data/rows.parquet", "--key", "n").code == 0
    assert 'key: "n"' in (data / "rows.yaml").read_text()
    assert gbatch("init", "manifests/data/rows.parquet", "--key", "nope", "--force").code == 2
    applied = gbatch("apply", "manifests", "--wait")
    assert applied.code == 0, applied.err
    assert gbatch.sql("select count(*) from products") == [(2,)]
    assert gbatch.sql("select count(*) from rows") == [(3,)]


def test_apply_dir_reports_manifests_gone_and_prune_removes_them_under_the_guard(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    for name in ("a", "b", "c"):
        gbatch.write(f"{name}.yaml", cities(name, [name.upper()]))
    assert gbatch("apply", "manifests", "--wait").code == 0
    (gbatch.manifests / "c.yaml").unlink()
    reported = gbatch("apply", "manifests")
    assert reported.code == 0
    assert "applied before and no longer in the folder: c" in reported.out
    assert [m.status for m in invoke(["status"]).result.manifests] == ["ok", "ok", "ok"]
    pruned = invoke(["apply", "manifests", "--prune"])
    assert pruned.code == 0 and pruned.result.pruned == ["c"]
    assert {m.name: m.status for m in invoke(["status"]).result.manifests}["c"] == "removed"
    assert gbatch.sql("select count(*) from c") == [(1,)]  # results kept
    for name in ("a", "b"):
        (gbatch.manifests / f"{name}.yaml").unlink()
    gbatch.write("d.yaml", cities("d", ["D"]))
    held = gbatch("apply", "manifests", "--prune")
    assert held.code == 2 and "--confirm-deletions" in held.err
    assert gbatch("apply", "manifests", "--prune", "--confirm-deletions").code == 0
    statuses = {m.name: m.status for m in invoke(["status"]).result.manifests}
    assert statuses == {"a": "removed", "b": "removed", "c": "removed", "d": "ok"}


def test_cancel_cancels_the_running_jobs(
    gbatch: Gbatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Emulator(EmulatorConfig(data_dir=tmp_path / "slow", pending_seconds=1000)) as slow:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", slow.base_url)
        gbatch.write("a.yaml", cities("a", ["Oslo", "Lima"]))
        assert gbatch("apply", "manifests").code == 0
        result = gbatch("cancel", "a")
        assert result.code == 0, result.err
        assert "cancel asked for 1 running job(s)" in result.out
        assert slow.count("batches.cancel") == 1
        again = gbatch("cancel", "a")
        assert "cancel asked for 0 running job(s)" in again.out
        assert slow.count("batches.cancel") == 1
        waited = gbatch("apply", "manifests", "--wait")  # follows the job to its end
        assert waited.code in (0, 1), waited.err
        kinds = [e.kind for e in invoke(["events", "a"]).result.items]
        assert "cancelled" in kinds
        unknown = gbatch("cancel", "nobody")
        assert unknown.code == 2 and "applied: a" in unknown.err


def taken_port() -> tuple[socket.socket, int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder, int(holder.getsockname()[1])


def test_a_port_in_use_is_a_clear_error_not_a_traceback(gbatch: Gbatch) -> None:
    holder, port = taken_port()
    with holder:
        emulator = gbatch("emulator", "--port", str(port))
        assert emulator.code == 2
        assert f"127.0.0.1:{port}: the port is already in use" in emulator.err
        watch = gbatch("watch", "manifests", "--metrics-port", str(port))
        assert watch.code == 2, watch.err
        assert "already in use" in watch.err and "Traceback" not in watch.err


def test_a_git_repository_or_branch_that_does_not_exist_fails_at_start(
    gbatch: Gbatch, tmp_path: Path
) -> None:
    missing = gbatch("watch", "--git", str(tmp_path / "no-such-repo"))
    assert missing.code == 2 and "--git: cannot follow" in missing.err
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@e.com", *args],
            cwd=repo,
            check=True,
            capture_output=True,
        )

    git("init", "--quiet", "--initial-branch=main")
    (repo / "a.yaml").write_text(cities("a", ["Oslo"]))
    git("add", ".")
    git("commit", "--quiet", "-m", "add")
    branch = gbatch("watch", "--git", str(repo), "--branch", "nope")
    assert branch.code == 2 and "branch 'nope'" in branch.err, branch.err


def run_in_a_terminal(
    gbatch: Gbatch, args: list[str], answer: bytes | None, timeout: float = 60
) -> tuple[int, str]:
    """``python -m runner ARGS`` on a pseudo-terminal (stdin and stdout are TTYs), typing
    ``answer`` once it asks; (exit code, everything it wrote)."""
    import pty

    primary, secondary = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=gbatch.root,
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
    ) as process:
        os.close(secondary)
        seen = b""
        deadline = time.monotonic() + timeout
        answered = False
        while True:  # until the terminal closes: every process holding it has ended
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the terminal closed: the process ended
                break
            seen += chunk
            if answer is not None and not answered and b"[y/N]" in seen:
                os.write(primary, answer)
                answered = True
        code = process.wait(timeout=timeout)
    os.close(primary)
    return code, seen.decode(errors="replace")


def test_apply_on_a_terminal_shows_the_plan_and_asks_above_the_threshold(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    gbatch.write("a.yaml", cities("a", ["Oslo", "Lima"]))
    code, screen = run_in_a_terminal(gbatch, ["apply", "manifests", "--confirm-above", "0"], b"n\n")
    assert code == 1, screen
    assert "a -> table a" in screen and "over --confirm-above $0" in screen
    assert "nothing applied (declined)" in screen
    assert emulator.count("batches.create") == 0
    code, screen = run_in_a_terminal(gbatch, ["apply", "manifests", "--wait"], None)
    assert code == 0, screen  # under the default $10: no question
    assert "[y/N]" not in screen and "2/2" in screen  # the rich progress line
    assert emulator.count("batches.create") == 1
    gbatch.write("b.yaml", cities("b", ["Pune"]))
    code, screen = run_in_a_terminal(
        gbatch, ["apply", "manifests", "--confirm-above", "0", "--yes"], None
    )
    assert code == 0 and "[y/N]" not in screen, screen
    assert emulator.count("batches.create") == 2


JSON_LOGS = ("--log-format", "json")


def test_the_daemon_logs_json_from_its_first_line(gbatch: Gbatch, emulator: Emulator) -> None:
    gbatch.write("a.yaml", cities("a", ["Oslo"]))
    with subprocess.Popen(
        [sys.executable, "-m", "runner", "watch", "manifests", *JSON_LOGS, "--metrics-port", "0"],
        cwd=gbatch.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as daemon:
        assert daemon.stdout is not None
        entries = []
        while not any(e["message"].startswith("a: created") for e in entries):
            entries.append(json.loads(daemon.stdout.readline()))  # every line is JSON
        daemon.terminate()
        rest = daemon.stdout.read().splitlines()
    entries += [json.loads(line) for line in rest]
    startup = [e["message"] for e in entries if e["event"] == "startup"]
    assert [m.split(":")[0] for m in startup] == ["metrics", "status page", "gbatch watch"]
    assert all(re.search(r"[+-]\d\d:\d\d$", e["time"]) for e in entries)
