"""A local checkout of a git repository of manifests, kept at the tip of one branch.

Runs the ``git`` program (no library needed): clone once, then fetch and check out the
branch tip, detached, and report the commit. The daemon calls ``sync`` from its own loop and
reconciles only after it returns, so a half-finished checkout is never read.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from runner.errors import GbatchError


class GitError(GbatchError):
    """git failed: the URL, branch or checkout is unusable (the message has git's words)."""


class GitCheckout:
    def __init__(self, url: str, *, workdir: Path, branch: str | None = None) -> None:
        self.url = url
        self.path = workdir
        self.branch = branch

    def _git(self, *args: str, cwd: Path | None = None) -> str:
        try:
            done = subprocess.run(
                ["git", *args],
                cwd=cwd or self.path,
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
                env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
            )
        except subprocess.CalledProcessError as exc:
            raise GitError(f"git {' '.join(args)}: {exc.stderr.strip()}") from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GitError(f"git {' '.join(args)}: {exc}") from exc
        return done.stdout.strip()

    def sync(self) -> str:
        """Bring the checkout to the branch tip; returns the commit sha now checked out."""
        if not (self.path / ".git").exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._git(
                "clone", "--quiet", "--no-checkout", self.url, str(self.path), cwd=self.path.parent
            )
        self._git("fetch", "--quiet", "--prune", "origin")
        branch = self.branch or self._default_branch()
        self._git("checkout", "--quiet", "--force", "--detach", f"origin/{branch}")
        self._git("clean", "--quiet", "-fdx")
        return self._git("rev-parse", "HEAD")

    def _default_branch(self) -> str:
        ref = self._git("symbolic-ref", "--quiet", "--short", "refs/remotes/origin/HEAD")
        return ref.removeprefix("origin/")
