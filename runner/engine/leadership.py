"""Leadership among daemons over one shared state: who reconciles and submits, who stands by.

``Runtime.leadership`` is a port (``runner.core.ports.Leadership``): :class:`SoleLeader`
for a state only one process opens (SQLite, guarded by ``ProcessLock``), or the Postgres
lease of ``runner.adapters.pg_state.PgLeadership``. :class:`Gate` is what the daemon asks at
the top of each turn: it logs and records each change of leader, and tells a standby how
long to wait before asking again. Called by ``runner.engine.daemon``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from runner.core.ports import Leadership, State
from runner.errors import GbatchError

log = logging.getLogger("gbatch")


class SoleLeader:
    """The only process on its state always leads."""

    def lead(self) -> bool:
        return True

    def holder(self) -> str:
        return "this process"

    def release(self) -> None:
        """Nothing to give up."""


@dataclass
class Gate:
    """The daemon's leadership check, once per turn of its loop."""

    leadership: Leadership
    state: State
    standby_poll_s: float = 0.2  # how often a standby asks again (the takeover latency)
    leading: bool | None = None  # as of the last turn; None before the first

    def turn(self) -> bool:
        """Whether this turn may act; a change either way is logged (and, taking the lead,
        recorded as an event) once."""
        try:
            now_leading = self.leadership.lead()
        except GbatchError as exc:  # the shared state is unreachable: nobody may act here
            log.warning("leadership: %s", exc)
            now_leading = False
        if now_leading != self.leading:
            if now_leading:
                log.info("leading: this process reconciles and submits")
                try:
                    self.state.event("leader", f"{self.leadership.holder()} leads")
                except GbatchError as exc:  # the cycle meets it again, in its fault boundary
                    log.warning("recording the lead: %s", exc)
            else:
                holder = self.leadership.holder() or "nobody yet"
                log.info("standing by (%s leads); serving status and metrics", holder)
        self.leading = now_leading
        return now_leading
