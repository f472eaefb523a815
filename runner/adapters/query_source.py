"""A manifest's ``source.query`` run in a child process that is bounded and locked down.

The child's working directory is the manifest's folder, so relative paths in the SQL mean
what the manifest's author meant (DuckDB checks file access after resolving them against
the working directory; a child with ``cwd=base_dir`` makes that check and the read agree,
without changing the daemon's own directory). Every path handed to it is absolute.

Bounded: the child runs in its own session (process group) and is killed, group and all,
when ``source.timeout`` passes, when ``cancel`` is set (the daemon stopping) or when the
caller is interrupted; the kernel kills it when its parent dies (``PR_SET_PDEATHSIG``, even
after kill -9). DuckDB's ``memory_limit`` and spill cap plus ``RLIMIT_DATA`` bound memory.

Locked down: the connection reads only files under the manifest root, minus what no source
may read: ``forbidden`` (gbatch's state directory and results file where they sit under the
root), files with several hard links (one may be a file from outside the root) and special
files. DuckDB's allow-list cannot subtract, so the root is partitioned: every folder and file
of the root that neither is nor holds one of those is allowed, the rest is not. DuckDB
resolves symlinks before it checks, so a link is readable exactly when its target is.
No extensions, no persistent secrets, settings frozen, no API keys in its environment.
Called by ``runner.adapters.sources``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import resource
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.adapters.duck import Error, literal, lock_down, memory, single_select
from runner.core.paths import guarding
from runner.errors import GbatchError, ManifestError

MEMORY_LIMIT = "1GB"  # DuckDB's own cap in the child; it spills beyond it ...
SPILL_LIMIT = "4GB"  # ... up to this much on disk
DATA_LIMIT_BYTES = 4 << 30  # RLIMIT_DATA: a backstop for what DuckDB does not count
MAX_ROOT_ENTRIES = 500_000  # a root bigger than this is not walked (and not queried)
POLL_S = 0.1  # how soon a set ``cancel`` stops the child
PR_SET_PDEATHSIG = 1
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
_PRIVATE = "is off limits to sources (gbatch's state, results or git metadata)"
_REFUSED_PATH = re.compile(r'Cannot access (?:file|directory) "([^"]*)"')


class QueryStopped(GbatchError):
    """A query source was stopped on request (``cancel`` set): not the manifest's fault."""


@dataclass(frozen=True)
class Readable:
    """What the child may read: whole folders and single files, and why the rest may not."""

    dirs: list[Path]
    files: list[Path]
    refused: dict[Path, str] = field(default_factory=dict)


def run(
    sql: str,
    *,
    base_dir: Path,
    root: Path,
    scratch: Path,
    timeout_s: float,
    forbidden: Sequence[Path] = (),
    max_rows: int | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Rows of ``sql`` as a Parquet file under ``scratch``; ManifestError when refused.

    ``max_rows`` cuts the result (validation needs columns and a sample, not every row).
    Raises QueryStopped when ``cancel`` is set before the query ends.
    """
    problem = single_select(sql)
    if problem:
        raise ManifestError(problem, field="source.query")
    base_dir, root = base_dir.resolve(), root.resolve()
    readable = readable_under(root, forbidden=guarding(forbidden, root=root))
    work = Path(tempfile.mkdtemp(prefix="query-", dir=scratch.resolve()))
    out = work / "rows.parquet"
    spec = {
        "sql": sql,
        "dirs": [str(p) for p in readable.dirs],
        "files": [str(p) for p in readable.files],
        "work": str(work),
        "out": str(out),
        "max_rows": max_rows,
        "memory_limit": MEMORY_LIMIT,
        "spill_limit": SPILL_LIMIT,
        "data_limit": DATA_LIMIT_BYTES,
        "parent": os.getpid(),
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "runner.adapters.query_source"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=base_dir,
        env={k: v for k, v in os.environ.items() if not _SECRET_NAME.search(k)},
        text=True,
        start_new_session=True,  # its own process group: killed as one, deaf to Ctrl-C
    )
    try:
        stderr = _wait(child, json.dumps(spec), timeout_s=timeout_s, cancel=cancel)
    finally:
        _kill(child)
    if child.returncode != 0:
        raise ManifestError(
            _failure(child.returncode, stderr, base_dir=base_dir, root=root, readable=readable),
            field="source.query",
        )
    return out


def _wait(
    child: subprocess.Popen[str], spec: str, *, timeout_s: float, cancel: threading.Event | None
) -> str:
    """The child's stderr once it exits; raises when the time is up or ``cancel`` is set."""
    deadline = time.monotonic() + timeout_s
    pending: str | None = spec
    while True:
        if cancel is not None and cancel.is_set():
            raise QueryStopped("the query was stopped: gbatch is stopping")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ManifestError(
                f"the query did not finish within {timeout_s:g}s (source.timeout) and was "
                "stopped; make it cheaper or give it a longer source.timeout",
                field="source.query",
            )
        try:
            _, stderr = child.communicate(
                pending, timeout=min(remaining, POLL_S) if cancel is not None else remaining
            )
            return stderr
        except subprocess.TimeoutExpired:
            pending = None  # already sent; communicate() keeps what was read so far


def _kill(child: subprocess.Popen[str]) -> None:
    """Kill the child's whole process group if it still runs, and reap it."""
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.communicate()


def _failure(code: int, stderr: str, *, base_dir: Path, root: Path, readable: Readable) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        return f"the query process died ({name}); it may have run out of memory"
    lines = stderr.strip().splitlines()
    reason = lines[-1] if lines else f"exit code {code}"
    refused = _REFUSED_PATH.search(reason)
    if refused:
        why = why_refused(refused.group(1), base_dir=base_dir, root=root, readable=readable)
        if why:
            return why
    return f"the query failed: {reason}"


def why_refused(text: str, *, base_dir: Path, root: Path, readable: Readable) -> str | None:
    """Why the child was refused ``text`` (a path or glob as the query wrote it), if known."""
    given = Path(text) if Path(text).is_absolute() else base_dir / text
    parts = given.parts
    cut = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[{")), len(parts))
    fixed = Path(*parts[:cut])  # a glob's folder
    lexical = Path(os.path.normpath(fixed))
    real = lexical.resolve()
    refused = readable.refused
    if not real.is_relative_to(root):
        if lexical.is_relative_to(root):
            return f"the query may not read {text!r}: it links outside the manifest root"
        return f"the query may not read {text!r}: it is outside the manifest root {root}"
    for path, reason in refused.items():
        if real == path or path in real.parents:
            return f"the query may not read {text!r}: {_shown(path, root)} {reason}"
    inside = sorted(path for path in refused if real in path.parents)
    if not inside:
        return None if cut < len(parts) or real.exists() else f"no such file: {text!r}"
    shown = [p for p in inside if p.exists() or p.is_symlink()] or inside
    private = [_shown(p, root) for p in shown if refused[p] == _PRIVATE]
    other = [f"{_shown(p, root)}, which {refused[p]}" for p in shown if refused[p] != _PRIVATE]
    reached = ([f"gbatch's own files ({', '.join(private)})"] if private else []) + other[:3]
    if len(other) > 3:
        reached.append(f"{len(other) - 3} more")
    return (
        f"the query may not read {text!r}: it would reach {'; '.join(reached)}. Read inside a "
        "folder without them (such as 'data/*.csv')"
        + (", or keep GBATCH_STATE_DIR and GBATCH_DB outside the manifest root" if private else "")
    )


def _shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path != root else "."


def readable_under(
    root: Path, *, forbidden: Sequence[Path] = (), limit: int = MAX_ROOT_ENTRIES
) -> Readable:
    """The root partitioned into what a query may read (see the module docstring).

    ``root`` is resolved, ``forbidden`` the resolved paths under it (``paths.guarding``).
    Raises ManifestError when the root is one of them or holds more than ``limit`` entries
    (checking fails closed).
    """
    refused: dict[Path, str] = {}
    for private in forbidden:
        if private == root:
            raise ManifestError(
                f"the manifest root {root} is gbatch's own files", field="source.query"
            )
        refused[private] = _PRIVATE
    seen = 0
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if here / d not in refused]
        seen += len(dirs) + len(files)
        if seen > limit:
            raise ManifestError(
                f"the manifest root {root} holds more than {limit:,} files and folders; "
                "query sources need a smaller root (a folder of its own for the manifests)",
                field="source.query",
            )
        for name in files:
            path = here / name
            if path in refused:
                continue
            try:
                info = os.lstat(path)
            except OSError:
                continue  # gone since it was listed
            if stat.S_ISLNK(info.st_mode):
                continue  # readable exactly when its target is (DuckDB checks the target)
            if not stat.S_ISREG(info.st_mode):
                refused[path] = "is not a regular file"
            elif info.st_nlink > 1:
                refused[path] = (
                    f"has {info.st_nlink} hard links; source files must have exactly one "
                    "(a hard link under the root can be a file from outside it)"
                )
    if not refused:
        return Readable(dirs=[root], files=[])
    holding = {a for p in refused for a in p.parents if a == root or root in a.parents}
    dirs_ok: list[Path] = []
    files_ok: list[Path] = []
    for holder in sorted(h for h in holding if h.is_dir()):
        with os.scandir(holder) as entries:
            for entry in entries:
                path = Path(entry.path)
                if path in refused or path in holding or entry.is_symlink():
                    continue
                (dirs_ok if entry.is_dir(follow_symlinks=False) else files_ok).append(path)
    return Readable(dirs=sorted(dirs_ok), files=sorted(files_ok), refused=refused)


def _die_with_parent(parent: int) -> None:
    """Make sure this process does not outlive ``parent`` (kill -9 included)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    else:  # no parent-death signal: watch for being adopted by another process
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # it died before the kernel was told
        os._exit(1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _child(spec: dict[str, Any]) -> int:
    _die_with_parent(int(spec["parent"]))
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    wanted = int(spec["data_limit"])
    resource.setrlimit(
        resource.RLIMIT_DATA,
        (wanted if hard == resource.RLIM_INFINITY else min(hard, wanted), hard),
    )
    work = Path(spec["work"])
    con = memory(temp_dir=work / "spill")  # its own spill folder: DuckDB lets SQL read it
    try:
        con.execute(f"set memory_limit = {literal(spec['memory_limit'])}")
        con.execute(f"set max_temp_directory_size = {literal(spec['spill_limit'])}")
        con.execute("set allow_persistent_secrets = false")
        if spec["files"]:
            files = ", ".join(literal(f) for f in spec["files"])
            con.execute(f"set allowed_paths = [{files}]")
        lock_down(con, readable=[*map(Path, spec["dirs"]), work])
        rows = con.sql(spec["sql"])
        if spec["max_rows"] is not None:
            rows = rows.limit(int(spec["max_rows"]))
        rows.write_parquet(spec["out"])
    except Error as exc:
        print(str(exc).strip().splitlines()[0], file=sys.stderr)
        return 2
    except MemoryError:
        print(f"out of memory (a query may use {spec['memory_limit']})", file=sys.stderr)
        return 2
    finally:
        con.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(_child(json.loads(sys.stdin.read())))
