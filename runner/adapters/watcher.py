"""File events under a manifest root, from watchdog: the only module that imports it.

Events are only hints ("look at this path again"): the daemon re-reads files and compares
content hashes, so lost or duplicated events cost nothing but a resync. Hidden paths
(``.git/`` included), editor swap and temp files are ignored. ``poll=True`` uses watchdog's
polling observer for network mounts and containers where inotify does not work.
Constructed by the daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from runner.core.paths import hidden_or_temp


def ignored(path: Path, root: Path) -> bool:
    """True for paths no manifest can be: outside root, hidden below it, swap or temp files
    (the loader's own rule, ``runner.core.paths.hidden_or_temp``)."""
    try:
        return hidden_or_temp(path.relative_to(root))
    except ValueError:
        return True


class _Handler(FileSystemEventHandler):
    def __init__(self, root: Path, on_path: Callable[[Path], None]) -> None:
        self.root = root
        self.on_path = on_path

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if not raw:
                continue
            text = raw.decode() if isinstance(raw, bytes) else raw
            path = Path(text)
            if not ignored(path, self.root):
                self.on_path(path)


class ManifestWatcher:
    """Calls ``on_path`` from watchdog's thread for every relevant path that changed."""

    def __init__(
        self,
        root: Path,
        *,
        on_path: Callable[[Path], None],
        poll: bool = False,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.root = root.resolve()
        self._observer = PollingObserver(timeout=poll_interval_s) if poll else Observer()
        self._observer.schedule(_Handler(self.root, on_path), str(self.root), recursive=True)

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=10)

    def is_alive(self) -> bool:
        return bool(self._observer.is_alive())
