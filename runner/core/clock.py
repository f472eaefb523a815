"""The clock port: every time rule of the runner reads time through one of these.

Deadlines, file lifetimes, cache TTLs, back-off, the daemon's settle window and its health
staleness all ask ``clock.now()`` (wall time, aware UTC) or ``clock.monotonic()`` (intervals),
and wait with ``clock.sleep()``. The CLI wires :class:`SystemClock`; tests wire
:class:`FakeClock` and move it (together with the emulator's own clock) so that "a job pending
for 37 hours" runs in milliseconds. Pure: no I/O.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for intervals only)."""
        ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The machine's clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class FakeClock:
    """A clock that moves only when told; ``sleep`` moves it instead of waiting.

    ``on_advance`` callbacks get the seconds moved (a test moves the emulator with it).
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = 1000.0
        self._lock = threading.Lock()
        self.on_advance: list[Callable[[float], None]] = []

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def sleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0.0))

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._mono += seconds
        for callback in self.on_advance:
            callback(seconds)


def parse_time(text: str) -> datetime:
    """An RFC 3339 / ISO time as stored by the runner or sent by the API, made aware UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def stamp(moment: datetime) -> str:
    """The one text form of a time in the state database."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")
