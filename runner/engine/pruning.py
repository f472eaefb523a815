"""Manifests applied from a folder that are no longer in it: ``apply DIR`` reports them and
``apply DIR --prune`` removes them (``reconcile.remove_manifest``: results kept, running jobs
cancelled only under ``policy.on_delete: cancel``).

The mass-deletion guard is the daemon's: two or more manifests gone at once that are half or
more of those applied from the folder look like a vanished mount or a half-finished checkout,
not intent. Called by the CLI's apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from runner.adapters.state import ManifestRow
from runner.engine.runtime import Runtime

MASS_DELETE_FRACTION = 0.5  # the default for apply --prune and the daemon alike


def mass_deletion(*, gone: int, active: int, fraction: float = MASS_DELETE_FRACTION) -> bool:
    """True when this many vanishing at once must be confirmed first."""
    return gone >= 2 and gone >= fraction * active


def active(rt: Runtime, folders: Sequence[Path] | None = None) -> list[ManifestRow]:
    """Manifests applied (not removed) from a file under one of ``folders`` (None: any)."""
    roots = [f.resolve() for f in folders] if folders is not None else None
    return [
        m
        for m in rt.state.manifests()
        if m.status != "removed"
        and (roots is None or any(Path(m.path).is_relative_to(r) for r in roots))
    ]


def gone(rt: Runtime, paths: Sequence[Path], *, present: set[str]) -> list[str]:
    """Names applied from the folders among ``paths`` whose manifest is no longer there."""
    folders = [p for p in paths if p.is_dir()]
    if not folders:
        return []
    return sorted(m.name for m in active(rt, folders) if m.name not in present)
