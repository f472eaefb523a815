"""Write-then-rename: a file is either its old self or wholly new, never half written.

``with replacing(path) as partial:`` hands out ``<path>.part`` in the same directory (so
the rename is atomic), and on success renames it over ``path``; on any error the partial
file is removed and ``path`` is untouched. Used by every module that writes a file another
step (or a restarted process) will read: request sets, ledgers, answers, result downloads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
