"""Starting the CLI imports no service SDK: google-genai alone takes ~0.8 s to import on 2
cores, more than a no-op re-apply of a million rows may spend (gbatch#15). The adapter is
imported when a backend is first used."""

from __future__ import annotations

import subprocess
import sys

SDKS = ("google.genai", "google.cloud.storage", "google.auth", "runner.adapters.gemini")


def test_the_cli_starts_without_importing_a_backend_sdk() -> None:
    probe = (
        "import sys, runner.cli\n"
        "from runner.adapters.backends import backend_for\n"
        "from runner.settings import Settings\n"
        "backend = backend_for(Settings(_env_file=None, api_key='k'))\n"
        f"print(sorted(m for m in {SDKS!r} if m in sys.modules))\n"
        "backend.list_jobs\n"  # the first use builds the adapter
        f"print(sorted(m for m in {SDKS!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    before, after = done.stdout.splitlines()
    assert before == "[]"
    assert "google.genai" in after and "runner.adapters.gemini" in after
