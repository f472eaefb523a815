"""Confining manifest paths to their root: no ``..``, no absolute paths, no symlink escapes.

Manifests are untrusted input. Every file a manifest names (source files, globs, cache and
media files) goes through :func:`confine_file` or :func:`confine_glob`, which also refuse
what is not one plain file of the root's own: a name that is not a path at all (a NUL byte,
too long), a file with several hard links (a hard link under the root may be a file from
anywhere), and gbatch's own state and results (``forbidden``). Called by the data plane and
the loader.
"""

from __future__ import annotations

import glob
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path


class PathError(ValueError):
    """A manifest path gbatch will not use; the message says why."""


class PathEscapeError(PathError):
    """A manifest path points outside the manifest root."""


def confine(relative: str, *, base_dir: Path, root: Path) -> Path:
    """``relative`` resolved against ``base_dir``; raises PathEscapeError outside ``root``.

    Symlinks are resolved first, so a link inside the root that points outside is refused.
    """
    if Path(relative).is_absolute():
        raise PathEscapeError(f"{relative!r} is absolute; paths are relative to the manifest")
    try:
        resolved = (base_dir / relative).resolve()
        root = root.resolve()
    except (ValueError, OSError) as exc:  # NUL bytes, symlink loops, names the OS refuses
        raise PathError(f"{relative!r} is not a usable path: {_reason(exc)}") from None
    if resolved != root and root not in resolved.parents:
        raise PathEscapeError(f"{relative!r} resolves outside the manifest root {root}")
    return resolved


def confine_file(
    relative: str, *, base_dir: Path, root: Path, forbidden: Sequence[Path] = ()
) -> Path:
    """``relative`` confined, and checked to be a source file gbatch may read (see module)."""
    path = confine(relative, base_dir=base_dir, root=root)
    check_file(path, shown=relative, forbidden=guarding(forbidden, root=root.resolve()))
    return path


def guarding(forbidden: Sequence[Path], *, root: Path) -> list[Path]:
    """The ``forbidden`` paths (resolved) that guard something under ``root`` (resolved).

    Those outside the root need no guard (confinement refuses them), and one that holds the
    root (a git checkout kept in the state directory) does not forbid the root's own files.
    """
    resolved = [p.resolve() for p in forbidden]
    return [p for p in resolved if p == root or root in p.parents]


def confine_glob(
    pattern: str, *, base_dir: Path, root: Path, forbidden: Sequence[Path] = ()
) -> list[Path]:
    """Files matching ``pattern`` (sorted), each confined and checked; raises if none match."""
    confine(pattern.split("*")[0] or ".", base_dir=base_dir, root=root)
    try:
        matches = sorted(glob.glob(str(base_dir / pattern), recursive=True))
    except (ValueError, OSError) as exc:
        raise PathError(f"{pattern!r} is not a usable pattern: {_reason(exc)}") from None
    if not matches:
        raise PathError(f"no file matches {pattern!r}")
    return [
        confine_file(
            str(Path(m).relative_to(base_dir)), base_dir=base_dir, root=root, forbidden=forbidden
        )
        for m in matches
    ]


def check_file(path: Path, *, shown: str, forbidden: Sequence[Path] = ()) -> None:
    """Raise PathError unless ``path`` (resolved) is one regular file outside ``forbidden``
    (resolved paths)."""
    for private in forbidden:
        if path == private or private in path.parents:
            raise PathError(
                f"{shown!r} is inside gbatch's own files ({private}): sources may not read "
                "gbatch's state, results or git metadata"
            )
    try:
        info = path.stat()
    except FileNotFoundError:
        raise PathError(f"no such file: {shown} (looked at {path})") from None
    except (ValueError, OSError) as exc:
        raise PathError(f"cannot read {shown}: {_reason(exc)}") from None
    if not stat.S_ISREG(info.st_mode):
        raise PathError(f"{shown} is not a regular file (looked at {path})")
    if info.st_nlink > 1:
        raise PathError(
            f"{shown} has {info.st_nlink} hard links; source files must have exactly one "
            "(a hard link under the root can be a file from outside it)"
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc)


# What editors, sed -i and downloaders leave beside a file while writing it: never a manifest.
# One list, used by the loader (which files are manifests) and the watcher (which events).
TEMP_NAMES = re.compile(r"(~$|^\.#|^#.*#$|\.sw[a-px]$|^4913$|\.tmp$|\.part$)")


def hidden_or_temp(relative: Path) -> bool:
    """A path under the manifest root that no manifest can be: hidden (any part starts with
    a dot, ``.git/`` included) or an editor's swap, backup or temp file."""
    return any(part.startswith(".") for part in relative.parts) or bool(
        TEMP_NAMES.search(relative.name)
    )
