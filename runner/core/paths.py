"""Confining manifest paths to their root: no ``..``, no absolute paths, no symlink escapes.

Manifests are untrusted input. Every file a manifest names (source files, globs, cache files)
goes through :func:`confine` or :func:`confine_glob`. Called by the data plane and the loader.
"""

from __future__ import annotations

import glob
from pathlib import Path


class PathEscapeError(ValueError):
    """A manifest path points outside the manifest root."""


def confine(relative: str, *, base_dir: Path, root: Path) -> Path:
    """``relative`` resolved against ``base_dir``; raises PathEscapeError outside ``root``.

    Symlinks are resolved first, so a link inside the root that points outside is refused.
    """
    if Path(relative).is_absolute():
        raise PathEscapeError(f"{relative!r} is absolute; paths are relative to the manifest")
    resolved = (base_dir / relative).resolve()
    root = root.resolve()
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
