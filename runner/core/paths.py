"""Confining manifest paths to their root: no ``..``, no absolute paths, no symlink escapes.

Manifests are untrusted input. Every file a manifest names (source files, globs, cache files)
goes through :func:`confine` or :func:`confine_glob`. Called by the data plane and the loader.
"""

from __future__ import annotations

import glob
import os
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


def confine_glob(pattern: str, *, base_dir: Path, root: Path) -> list[Path]:
    """Files matching ``pattern`` (sorted), each confined; raises if one escapes or none match."""
    confine(pattern.split("*")[0] or ".", base_dir=base_dir, root=root)
    matches = sorted(glob.glob(str(base_dir / pattern), recursive=True))
    if not matches:
        raise FileNotFoundError(f"no file matches {pattern!r}")
    return [
        confine(str(Path(m).relative_to(base_dir)), base_dir=base_dir, root=root) for m in matches
    ]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc)
