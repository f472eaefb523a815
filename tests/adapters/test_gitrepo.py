"""A real local git repository followed by GitCheckout: commits, branches, bad URLs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runner.adapters.gitrepo import GitCheckout, GitError


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    repo = tmp_path / "origin"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    (repo / "a.yaml").write_text("one\n")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "add a")
    return repo


def test_sync_follows_the_branch_tip_and_reports_each_commit(origin: Path, tmp_path: Path) -> None:
    checkout = GitCheckout(str(origin), workdir=tmp_path / "checkout")
    first = checkout.sync()
    assert first == git(origin, "rev-parse", "HEAD")
    assert (checkout.path / "a.yaml").read_text() == "one\n"
    (origin / "a.yaml").write_text("two\n")
    git(origin, "commit", "--quiet", "-am", "change a")
    git(origin, "rm", "--quiet", "a.yaml")
    (origin / "b.yaml").write_text("b\n")
    git(origin, "add", ".")
    git(origin, "commit", "--quiet", "-m", "replace a by b")
    second = checkout.sync()
    assert second == git(origin, "rev-parse", "HEAD") != first
    assert not (checkout.path / "a.yaml").exists()
    assert (checkout.path / "b.yaml").read_text() == "b\n"


def test_a_named_branch_is_followed(origin: Path, tmp_path: Path) -> None:
    git(origin, "checkout", "--quiet", "-b", "prod")
    (origin / "p.yaml").write_text("p\n")
    git(origin, "add", ".")
    git(origin, "commit", "--quiet", "-m", "prod only")
    git(origin, "checkout", "--quiet", "main")
    checkout = GitCheckout(str(origin), workdir=tmp_path / "c", branch="prod")
    checkout.sync()
    assert (checkout.path / "p.yaml").exists()


def test_a_bad_url_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GitError, match="git clone"):
        GitCheckout(str(tmp_path / "nowhere"), workdir=tmp_path / "c").sync()
