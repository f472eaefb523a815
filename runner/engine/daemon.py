"""The daemon behind ``gbatch watch``: reconcile on file events, commits and a timer.

Level-triggered: an event only says "look again"; each reconcile re-reads the manifests, the
stored state and the remote jobs, and content hashes decide what changed. A periodic resync
catches lost events. Deletions wait out a settle window and a mass-delete guard (a vanishing
volume or a half-finished checkout must not look like intent). A watcher thread that dies
stops the daemon with a non-zero exit. Constructed by the CLI's ``watch`` command.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runner.adapters.gitrepo import GitCheckout
from runner.adapters.query_source import QueryStopped
from runner.adapters.watcher import ManifestWatcher
from runner.core.debounce import Debouncer
from runner.core.loader import LoadedManifest, load_paths
from runner.engine import cycle, integrity, leadership, lifecycle, reconcile
from runner.engine.pruning import MASS_DELETE_FRACTION, mass_deletion
from runner.engine.runtime import Runtime, log
from runner.engine.selection import Selector
from runner.engine.validate import check_data
from runner.engine.validate import fingerprint as fingerprint_of
from runner.errors import GbatchError, LockedError, ManifestError, NotLeaderError

EXIT_OK, EXIT_DEAD = 0, 1


@dataclass
class DaemonOptions:
    root: Path
    poll_files: bool = False  # watchdog's polling observer (network mounts, containers)
    resync_s: float = 300.0
    settle_s: float = 30.0
    mass_delete_fraction: float = MASS_DELETE_FRACTION
    confirm_deletions: bool = False
    quiet_s: float = 0.3
    max_wait_s: float = 5.0
    git: GitCheckout | None = None
    git_interval_s: float = 60.0
    stale_after_s: float = 600.0  # health fails when the loop has not turned for this long
    selector: Selector | None = None  # watch -l team=x: only the manifests it picks
    stuck_after_s: float = 420.0  # ... or one manifest's reconcile runs longer (query: 5 min)


@dataclass
class _Missing:
    since: float
    held: bool = False


@dataclass
class Daemon:
    rt: Runtime
    options: DaemonOptions
    stop: threading.Event = field(default_factory=threading.Event)
    known: dict[str, LoadedManifest] = field(default_factory=dict)
    _events: queue.Queue[Path] = field(default_factory=queue.Queue)
    _missing: dict[str, _Missing] = field(default_factory=dict)
    _applied: dict[str, str | None] = field(default_factory=dict)  # inputs' fingerprints
    _waiting: set[str] = field(default_factory=set)  # on another manifest's identical request
    observe_reconcile: Callable[[float], None] = lambda seconds: None  # for metrics
    _beat: float | None = None
    _watcher: ManifestWatcher | None = None
    _cycle_error: str | None = None  # the last cycle's unexpected failure, for health
    _activity: tuple[str, float] | None = None  # what the loop is doing, since when

    def __post_init__(self) -> None:
        self.rt.stop = self.stop  # a running query source stops with the daemon
        if self.options.git is not None:
            self.rt.git_checkout = self.options.git.path

    def health_problems(self) -> list[str]:
        """What is wrong with this daemon, for the health endpoint (any thread may ask)."""
        problems = []
        if self._watcher is not None and not self._watcher.is_alive():
            problems.append("the file watcher is dead")
        idle = self.rt.clock.monotonic() - (self._beat or self.rt.clock.monotonic())
        if idle > self.options.stale_after_s:
            problems.append(f"the reconcile loop has not turned for {idle:.0f}s")
        if self._activity is not None:
            what, since = self._activity
            busy = self.rt.clock.monotonic() - since
            if busy > self.options.stuck_after_s:
                problems.append(f"{what} has been running for {busy:.0f}s")
        if self._cycle_error:
            problems.append(f"the last cycle failed: {self._cycle_error}")
        if self.stop.is_set():
            problems.append("stopping")
        return problems

    def run(self) -> int:
        """Serve until ``stop`` is set; EXIT_DEAD when the watcher thread died."""
        watcher = None
        if self.options.git is None:
            watcher = ManifestWatcher(
                self.options.root, on_path=self._events.put, poll=self.options.poll_files
            )
            watcher.start()
            self._watcher = watcher
        debouncer = Debouncer(quiet=self.options.quiet_s, max_wait=self.options.max_wait_s)
        gate = leadership.Gate(self.rt.leadership, self.rt.state)  # #18
        next_resync = next_git = 0.0
        next_poll = 0.0
        try:
            while not self.stop.is_set():
                clock = self.rt.clock
                self._beat = clock.monotonic()
                if watcher is not None and not watcher.is_alive():
                    log.error("the file watcher died; stopping (a restart resumes all work)")
                    return EXIT_DEAD
                if not gate.turn():  # #18: a standby of a shared state waits (and serves)
                    self._applied.clear()  # on taking the lead: a full resync, as at a start
                    self._missing.clear()
                    self._cycle_error = None
                    next_resync = 0.0
                    self._wait_until(clock.monotonic() + gate.standby_poll_s, debouncer)
                    continue
                now = clock.monotonic()
                self._drain(debouncer, now)
                changed = debouncer.ready(now)
                full = now >= next_resync
                if self.options.git is not None and now >= next_git:
                    full = self._sync_git() or full
                    next_git = now + self.options.git_interval_s
                settling = self._settle_deadline()
                try:
                    if full or changed or (settling is not None and now >= settling):
                        self.reconcile(None if full else changed)
                        self.observe_reconcile(clock.monotonic() - now)
                        if full:
                            next_resync = now + self.options.resync_s
                    if full or changed or now >= next_poll:
                        self._follow()
                        next_poll = clock.monotonic() + self.rt.settings.poll_interval_s
                    self._cycle_error = None
                except NotLeaderError as exc:  # #18: fenced; the gate sees the lead is gone
                    log.warning("%s", exc)
                    self._cycle_error = None
                except LockedError:
                    raise  # another gbatch owns the state or the results: this one must stop
                except Exception as exc:  # the daemon outlives any one bad cycle
                    self._cycle_error = f"{type(exc).__name__}: {exc}"
                    log.exception("cycle failed: %s (trying again)", self._cycle_error)
                    next_poll = clock.monotonic() + self.rt.settings.poll_interval_s
                deadlines = [
                    next_resync,
                    next_poll,
                    debouncer.next_deadline() or next_poll,
                    self._settle_deadline() or next_poll,
                ]
                if self.options.git is not None:
                    deadlines.append(next_git)
                self._wait_until(min(deadlines), debouncer)
            return EXIT_OK
        finally:
            if watcher is not None:
                watcher.stop()

    def _settle_deadline(self) -> float | None:
        """When the earliest vanished manifest has waited out the settle window."""
        waiting = [m.since + self.options.settle_s for m in self._missing.values() if not m.held]
        return min(waiting) if waiting else None

    def _drain(self, debouncer: Debouncer, now: float) -> None:
        while True:
            try:
                debouncer.add(self._events.get_nowait(), now)
            except queue.Empty:
                return

    def _wait_until(self, deadline: float, debouncer: Debouncer) -> None:
        """Sleep until the deadline, an event or stop; events wake us to start debouncing."""
        timeout = max(0.0, deadline - self.rt.clock.monotonic())
        try:
            path = self._events.get(timeout=min(timeout, 1.0))
        except queue.Empty:
            return
        debouncer.add(path, self.rt.clock.monotonic())

    def _sync_git(self) -> bool:
        """Fetch; True when a new commit is checked out (then everything is reconciled)."""
        assert self.options.git is not None
        try:
            commit = self.options.git.sync()
        except GbatchError as exc:
            log.error("git: %s", exc)
            self.rt.state.event("git_error", str(exc))
            return False
        if commit != self.rt.commit:
            log.info("git: at %s", commit[:12])
            self.rt.state.event("commit", commit)
            self.rt.commit = commit
            return True
        return False

    def reconcile(self, changed: set[Path] | None, *, again: set[str] | None = None) -> None:
        """Re-read manifests and apply those whose content or input files changed.

        ``changed`` None means a full resync. ``again`` names manifests to apply even when
        unchanged (a job of theirs just came back with failed lines that may need a retry).
        """
        loaded, errors = load_paths([self.options.root])
        loaded = integrity.cycle(self.rt, loaded, errors)  # names, owner; rebuild what is lost
        seen_files = {item.path for item in loaded} | {
            e.location.path for e in errors if e.location is not None
        }
        chosen = self.options.selector
        if chosen:
            loaded = [i for i in loaded if chosen.matches(i.manifest.metadata.labels)]
        by_name = {item.manifest.name: item for item in loaded}
        touches_data = changed is None or any(p.suffix not in (".yaml", ".yml") for p in changed)
        for error in errors:
            self._invalid(error)
        if changed is None:  # a resync knows every invalid file there is now
            self.rt.state.clear_invalid(keep={str(e.location.path) for e in errors if e.location})
        to_apply = []
        for name, item in by_name.items():
            forced = again is not None and name in again
            if not forced and not touches_data and changed is not None and item.path not in changed:
                self.known.setdefault(name, item)
                continue
            fingerprint = fingerprint_of(item, cache_digest="", forbidden=self.rt.private)
            if not forced and self._unchanged(name, fingerprint):
                self.known[name] = item
                self.rt.state.clear_invalid({str(item.path)})
                continue
            try:
                problem = check_data(
                    item,
                    forbidden=self.rt.private,
                    cancel=self.stop,
                    backend=self.rt.settings.backend,
                    state_dir=self.rt.settings.state_dir,  # a set built before is not rebuilt
                )
            except QueryStopped:
                return  # stopping: nothing is wrong with the manifest
            if problem is not None:
                self._invalid(problem)
                continue
            self.rt.state.clear_invalid({str(item.path)})
            self.known[name] = item
            to_apply.append((name, fingerprint))
        try:
            plans, _ = cycle.apply_all(
                self.rt,
                self.known,
                [name for name, _ in to_apply],
                starting=self._started,
                stop=self.stop.is_set,
            )
        finally:
            self._activity = None
        for name, fingerprint in to_apply:
            plan = plans.get(name)
            if plan is None:
                continue  # its error is recorded on the manifest; the next resync tries again
            self._applied[name] = fingerprint
            if plan.diff.waiting:
                self._waiting.add(name)
            else:
                self._waiting.discard(name)
        if again is None:
            self._deletions(by_name, seen_files)
        lifecycle.submit_pending(self.rt)

    def _started(self, name: str) -> None:
        self._activity = (f"the reconcile of {name}", self.rt.clock.monotonic())

    def _unchanged(self, name: str, fingerprint: str | None) -> bool:
        """Applied before with the same content and inputs, and nothing since went wrong."""
        if fingerprint is None or self._applied.get(name) != fingerprint:
            return False
        row = self.rt.state.manifest(name)
        return row is not None and row.status == "ok" and not row.last_error

    def _invalid(self, error: ManifestError) -> None:
        """Keep the last good version running; show the error on the manifests of that file."""
        log.error("%s", error)
        path = str(error.location.path) if error.location else None
        if path is not None:
            self.rt.state.set_invalid(path, str(error))
        for row in self.rt.state.manifests():
            if path is not None and row.path == path and row.status != "removed":
                self.rt.state.update_manifest(row.name, status="invalid", last_error=str(error))
        self.rt.state.event("invalid", str(error))

    def _deletions(self, present: dict[str, LoadedManifest], seen_files: set[Path]) -> None:
        """Manifests gone from the root: settle, guard against mass deletion, then remove."""
        active = [
            m
            for m in self.rt.state.manifests()
            if m.status != "removed" and Path(m.path).is_relative_to(self.options.root.resolve())
        ]
        gone = [m for m in active if m.name not in present and Path(m.path) not in seen_files]
        for name in list(self._missing):
            if name in present:
                log.info("%s: back again", name)
                del self._missing[name]
        now = self.rt.clock.monotonic()
        for row in gone:
            self._missing.setdefault(row.name, _Missing(since=now))
        guard = not self.options.confirm_deletions and mass_deletion(
            gone=len(gone), active=len(active), fraction=self.options.mass_delete_fraction
        )
        for row in gone:
            missing = self._missing[row.name]
            if guard:
                if not missing.held:
                    message = (
                        f"{len(gone)} of {len(active)} manifests vanished at once; holding "
                        "them (restart with --confirm-deletions if this is intended)"
                    )
                    log.warning("%s: %s", row.name, message)
                    self.rt.state.update_manifest(row.name, status="missing", last_error=message)
                    missing.held = True
                continue
            if now - missing.since < self.options.settle_s:
                self.rt.state.update_manifest(row.name, status="missing")
                continue
            reconcile.remove_manifest(self.rt, row.name)
            del self._missing[row.name]

    def _follow(self) -> None:
        """One cycle for the jobs; then apply again the manifests with failed lines (retries)
        and, when anything was ingested, those waiting on another manifest's identical request."""
        report = cycle.tick(self.rt, self.known)
        again = set(report.failed_lines)
        if report.ingested.ingested:
            again |= self._waiting  # their identical requests may have been answered now
        if again:
            self.reconcile(set(), again=again)
