"""The operations files: the systemd unit is hardened and verifies, installs are pinned, the
pre-commit hook and the CI example work as written (no API key)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import yaml

from tests.conftest import Gbatch

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "gbatch.service"
MAX_EXPOSURE = 3.0


def test_the_systemd_unit_is_hardened_and_verifies(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for directive in (
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "RestartPreventExitStatus=5",
    ):
        assert re.search(rf"^{re.escape(directive)}$", text, re.M), directive
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # no systemd here: the directives above are what can be checked
        return
    security = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    level = re.search(r"Overall exposure level for gbatch.service: ([\d.]+)", security.stdout)
    assert level, security.stdout + security.stderr
    assert float(level[1]) <= MAX_EXPOSURE, security.stdout
    # verify checks every directive and that ExecStart runs: point it at this checkout's gbatch
    local = tmp_path / "gbatch.service"
    gbatch = Path(sys.executable).with_name("gbatch")
    local.write_text(text.replace("/var/lib/gbatch/venv/bin/gbatch", str(gbatch)))
    verify = subprocess.run(
        [analyze, "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0, verify.stderr


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_dependency_is_pinned_and_installed_at_its_pin() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {_name(r) for r in project["dependencies"] + extras["dev"]}
    for own in [r for r in extras["dev"] if _name(r) == project["name"]]:  # gbatch[team]
        wanted.remove(project["name"])
        for extra in re.findall(r"\[(.*)\]", own)[0].split(","):
            wanted |= {_name(r) for r in extras[extra.strip()]}
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_name(name)] = version
    assert wanted <= set(pins), wanted - set(pins)
    for name, version in pins.items():
        assert metadata.version(name) == version, name  # dev.py installed with the constraints
    assert "-c constraints.txt" in (ROOT / "deploy" / "Containerfile").read_text()


def test_the_pre_commit_hook_runs_gbatch_validate(gbatch: Gbatch) -> None:
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "gbatch-validate" and hook["pass_filenames"] is True
    good = gbatch.write("good.yaml", "model: gemini-2.5-flash\nsource: {requests: r.jsonl}\n")
    gbatch.write("r.jsonl", '{"key": "a", "request": {"contents": [{"parts": [{"text": "x"}]}]}}\n')
    bad = gbatch.write("bad.yaml", "model: gemini-2.5-flash\n")
    command = [Path(sys.executable).with_name(hook["entry"].split()[0]), *hook["entry"].split()[1:]]
    env = {k: v for k, v in os.environ.items() if "API_KEY" not in k}

    def run(*files: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*map(str, command), *map(str, files)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=gbatch.root,
        )

    assert run(good).returncode == 0
    failed = run(good, bad)
    assert failed.returncode == 2 and "bad.yaml:1:1" in failed.stderr


def test_the_ci_example_validates_and_plans_with_no_api_key(tmp_path: Path) -> None:
    workflow = yaml.safe_load((ROOT / "docs" / "ci-example.yml").read_text())
    steps = workflow["jobs"]["check"]["steps"]
    commands = [s["run"] for s in steps if "run" in s and "gbatch " in s["run"]]
    commands = [c for c in commands if not c.startswith("pip ")]
    assert any("validate" in c for c in commands) and any(
        "--no-count-tokens" in c for c in commands
    )
    env = {k: v for k, v in os.environ.items() if "API_KEY" not in k}
    env.update(
        MANIFESTS=str(ROOT / "manifests"),
        GBATCH_STATE_DIR=str(tmp_path / "state"),
        GBATCH_DB=str(tmp_path / "gbatch.duckdb"),
        GITHUB_STEP_SUMMARY=str(tmp_path / "summary.md"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
    )
    for command in commands:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=tmp_path,
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
    assert "seed_requests -> table seed_requests" in (tmp_path / "summary.md").read_text()
