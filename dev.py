#!/usr/bin/env python3
"""Set-up and chores for gbatch, needing nothing but Python 3.11+.

    python3 dev.py demo    the example manifests through the local emulator into DuckDB
    python3 dev.py test    lint, format check, type check, import contracts, the test suite
    python3 dev.py lock    re-pin constraints.txt to what .venv holds (after changing deps)
    python3 dev.py docs    regenerate docs/cli-output.schema.json from runner/cli/views.py

Each command first makes ./.venv and installs the project into it, every package at the
version pinned in constraints.txt (only when pyproject.toml or constraints.txt changed since
the last install), so a fresh clone needs no other step. ``test`` also makes sure Debian's
chromium and chromium-driver are there (the status page test drives them), with apt-get.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".installed"
CONSTRAINTS = ROOT / "constraints.txt"  # every package pinned: installs are reproducible
CHROMIUM = (Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver"))


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 (this script may meet an older Python)
        sys.exit("gbatch needs Python 3.11 or newer")
    wanted = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + CONSTRAINTS.read_bytes()
    ).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing gbatch and its dev tools into .venv ...", flush=True)
    run([str(BIN / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    run(
        [
            *[str(BIN / "python"), "-m", "pip", "install", "--quiet"],
            *["-c", str(CONSTRAINTS), "-e", f"{ROOT}[dev]"],
        ]
    )
    STAMP.write_text(wanted)


def ensure_chromium() -> None:
    """Debian's chromium and chromium-driver, for the status page test (apt-get, as root)."""
    if all(path.exists() for path in CHROMIUM):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(
            "the status page test needs Debian's chromium and chromium-driver; install them "
            "as root: apt-get install chromium chromium-driver"
        )
    print("installing chromium and chromium-driver (the status page test) ...", flush=True)
    quiet = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=quiet)
    run(
        [
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "chromium",
            "chromium-driver",
        ],
        env=quiet,
    )


def lock() -> None:
    """Install the dependencies unpinned (the newest that fit pyproject.toml), then pin
    constraints.txt to what was installed. Run after changing dependencies."""
    if not (BIN / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    run([str(BIN / "python"), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[dev]"])
    frozen = subprocess.run(
        [str(BIN / "python"), "-m", "pip", "freeze", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pins = sorted(line for line in frozen.splitlines() if "==" in line)
    CONSTRAINTS.write_text(
        "# Every package gbatch and its dev tools install, pinned (dev.py and\n"
        "# deploy/Containerfile install with -c constraints.txt). Regenerate: python3 dev.py lock\n"
        + "".join(f"{pin}\n" for pin in pins)
    )
    print(f"wrote {CONSTRAINTS} ({len(pins)} pins)")


def docs() -> None:
    """Regenerate docs/cli-output.schema.json (a test pins it to runner/cli/views.py)."""
    ensure_venv()
    script = (
        "import json, sys; from runner.cli import views; "
        "sys.stdout.write(json.dumps(views.output_schema(), indent=2) + chr(10))"
    )
    with (ROOT / "docs" / "cli-output.schema.json").open("w") as out:
        run([str(BIN / "python"), "-c", script], stdout=out)


def run(command: list[str], **kwargs: object) -> None:
    print("+ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT, **kwargs)  # type: ignore[call-overload]


def test(extra: list[str]) -> None:
    ensure_venv()
    ensure_chromium()
    run([str(BIN / "ruff"), "check", "runner", "tests", "bench", "dev.py"])
    run([str(BIN / "ruff"), "format", "--check", "runner", "tests", "bench", "dev.py"])
    run([str(BIN / "mypy"), "runner"])
    run([str(BIN / "lint-imports")])
    with ensure_postgres() as postgres_url:  # the shared-state and lake tests need one (#18)
        run([str(BIN / "pytest"), "-q", *extra], env={**os.environ, POSTGRES_ENV: postgres_url})


# -- a throwaway Postgres for the scale-out tests (#18) ------------------------------------
POSTGRES_ENV = "GBATCH_TEST_POSTGRES_URL"  # tests/pg.py reads it (and starts one without it)
INITDB = ("--auth=trust", "--encoding=UTF8", "--no-sync")


def _postgres_bin() -> Path | None:
    """The directory of Debian's PostgreSQL server programs, newest version first."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=_version, reverse=True)
    return versions[0].parent if versions else None


def _version(pg_ctl: Path) -> int:
    name = pg_ctl.parent.parent.name
    return int(name) if name.isdigit() else 0


@contextmanager
def ensure_postgres() -> Iterator[str]:
    """A private PostgreSQL on a loopback port for the length of the block; its URL.

    Debian's ``postgresql`` package is installed with apt-get when its programs are missing
    (CI and the developers' machines run as root). ``initdb`` runs in a temp dir owned by the
    ``postgres`` user (the server refuses to run as root), with trust auth on loopback only,
    fsync off (throwaway data), and the server is stopped and its files removed at the end.
    """
    bin_dir = _postgres_bin()
    if bin_dir is None:
        if os.geteuid() != 0:
            sys.exit("the tests need PostgreSQL: apt-get install postgresql (as root)")
        print("installing postgresql (for the shared-state tests) ...", flush=True)
        quiet = {"env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}}
        run(["apt-get", "update", "-qq"], **quiet)
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"], **quiet)
        bin_dir = _postgres_bin()
        if bin_dir is None:
            sys.exit("apt-get installed postgresql but no pg_ctl was found")
    home = Path(tempfile.mkdtemp(prefix="gbatch-postgres-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(home, user="postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, port = home / "data", free_port()
    pg_ctl = [*as_owner, str(bin_dir / "pg_ctl"), "-D", str(data)]
    options = (
        f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={home} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
    )
    try:
        subprocess.run(
            [*as_owner, str(bin_dir / "initdb"), "-D", str(data), "-U", "gbatch", *INITDB],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [*pg_ctl, "-o", options, "-l", str(home / "server.log"), "-w", "start"],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        log = home / "server.log"
        detail = log.read_text() if log.exists() else exc.stderr.decode(errors="replace")
        shutil.rmtree(home, ignore_errors=True)
        sys.exit(f"could not start a throwaway PostgreSQL:\n{detail}")
    print(f"PostgreSQL on 127.0.0.1:{port} for the tests ({home})", flush=True)
    try:
        yield f"postgresql://gbatch@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo() -> None:
    """Serve the emulator, apply the example manifests with --wait, show status, answers and
    a semantic search over the embeddings."""
    ensure_venv()
    out = ROOT / "demo-output"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "GEMINI_API_KEY": "demo-key-for-the-local-emulator",
        "GOOGLE_GEMINI_BASE_URL": f"http://127.0.0.1:{port}",
        "GBATCH_DB": str(out / "results.duckdb"),
        "GBATCH_STATE_DIR": str(out / "state"),
        "GBATCH_POLL_INTERVAL_S": "1",
    }
    gbatch = str(BIN / "gbatch")
    with tempfile.TemporaryFile() as log:
        emulator = subprocess.Popen(
            [gbatch, "emulator", "--port", str(port), "--data-dir", str(out / "emulator")],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
        try:
            wait_for_port(port, emulator, log)
            run([gbatch, "validate", "manifests"], env=env)
            run([gbatch, "plan", "manifests"], env=env)
            run([gbatch, "apply", "manifests", "--wait"], env=env)
            run([gbatch, "status"], env=env)
            run(
                [
                    gbatch,
                    "query",
                    "select key, status, text, output_tokens, cost_usd "
                    "from seed_requests order by key",
                ],
                env=env,
            )
            run(
                [
                    gbatch,
                    "query",
                    "select sku, title, bullets[1] as first_bullet, cost_usd "
                    "from product_copy order by sku limit 5",
                ],
                env=env,
            )
            run(  # semantic search: each customer question's nearest FAQ entry, in plain SQL
                [
                    gbatch,
                    "query",
                    "select q.question, f.id as best_answer, "
                    "round(array_cosine_similarity(q.embedding, f.embedding)::double, 3) as score "
                    "from support_questions q, support_faq f "
                    "qualify row_number() over (partition by q.key order by score desc) = 1 "
                    "order by q.key",
                ],
                env=env,
            )
        finally:
            emulator.terminate()
            emulator.wait(timeout=10)
    results = out / "results.duckdb"
    print(f"\nResults: {results}  (read them: duckdb -readonly {results})")


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                log.seek(0)
                sys.exit("the emulator did not start:\n" + log.read().decode())
            time.sleep(0.1)


def main() -> None:
    command, *extra = sys.argv[1:] or ["help"]
    if command == "test":
        test(extra)
    elif command == "demo":
        demo()
    elif command == "lock":
        lock()
    elif command == "docs":
        docs()
    else:
        print(__doc__)
        sys.exit(0 if command == "help" else 2)


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode)
