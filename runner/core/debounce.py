"""Debouncing file events into settled sets of paths: pure, with the clock passed in.

A path is ready when it has been quiet for ``quiet`` seconds, or when ``max_wait`` seconds
have passed since its first event in the current burst (so a file rewritten forever still
gets reconciled). Editors that save by rename, ``sed -i`` and ``git pull`` produce bursts of
events per path; each burst becomes one entry. Called by the daemon's event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Debouncer:
    quiet: float = 0.3
    max_wait: float = 5.0
    _first: dict[Path, float] = field(default_factory=dict)
    _last: dict[Path, float] = field(default_factory=dict)

    def add(self, path: Path, now: float) -> None:
        """Record an event for ``path`` at time ``now``."""
        self._first.setdefault(path, now)
        self._last[path] = now

    def ready(self, now: float) -> set[Path]:
        """Take the paths whose burst has settled (or waited long enough) at ``now``."""
        done = {
            path
            for path, last in self._last.items()
            if now - last >= self.quiet or now - self._first[path] >= self.max_wait
        }
        for path in done:
            del self._first[path], self._last[path]
        return done

    def next_deadline(self) -> float | None:
        """When the earliest pending path becomes ready; None when nothing is pending."""
        if not self._last:
            return None
        return min(
            min(last + self.quiet, self._first[path] + self.max_wait)
            for path, last in self._last.items()
        )

    def __len__(self) -> int:
        return len(self._last)
