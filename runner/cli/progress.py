"""The progress display of ``apply --wait``: one line per manifest.

Each line: requests done of total, failed (apart), rate, ETA and elapsed time (h:mm:ss), the
jobs' states and the cost so far. On a terminal the lines are redrawn in place with rich and
cut to the terminal's width (columns are dropped, least useful first, and the name shortened;
a line never wraps). Elsewhere a plain line is printed per manifest when its counts change
(JSON objects with ``--log-format json``). Only jobs not yet over when the apply began count,
so earlier versions' answers do not inflate the rate. Driven by ``commands._wait``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Group
from rich.live import Live
from rich.text import Text

from runner.adapters.state import JobRow
from runner.cli import console, render
from runner.cli.logs import note
from runner.core.clock import Clock

BAR_WIDTH = 20


@dataclass(frozen=True)
class Row:
    """One manifest's progress at one moment."""

    name: str
    total: int
    succeeded: int
    failed: int
    started_done: int  # done when this wait began (for the rate)
    states: str
    cost: float
    elapsed: float

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @property
    def rate(self) -> float:
        return (self.done - self.started_done) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> str:
        left = self.total - self.done
        if left <= 0:
            return "0:00:00"
        return render.duration(left / self.rate) if self.rate > 0 else "-:--:--"


def _segments(row: Row) -> list[tuple[str, str, str]]:
    """(column name, text, style) in priority order: the first ones are kept longest."""
    filled = round(BAR_WIDTH * row.done / row.total) if row.total else BAR_WIDTH
    return [
        ("done", f"{row.done}/{row.total}", "green" if row.done == row.total else ""),
        ("failed", f"{row.failed} failed", "red" if row.failed else "dim"),
        ("elapsed", render.duration(row.elapsed), ""),
        ("eta", f"ETA {row.eta}", ""),
        ("rate", f"{row.rate:.1f}/s", ""),
        ("bar", "━" * filled + "─" * (BAR_WIDTH - filled), "green"),
        ("states", row.states, "dim"),
        ("cost", render.money(row.cost), ""),
    ]


ORDER = ("bar", "done", "failed", "rate", "eta", "elapsed", "cost", "states")


def line(row: Row, *, width: int, name_width: int) -> Text:
    """The row fitted to ``width`` cells: drop the least useful columns, then cut the name."""
    segments = _segments(row)
    name = row.name
    kept = list(segments)
    while kept:
        needed = min(len(name), 8) + sum(len(text) + 1 for _, text, _ in kept)
        if needed <= width:
            break
        kept.pop()
    room = width - sum(len(text) + 1 for _, text, _ in kept)
    room = max(1, min(room, name_width))
    shown = name if len(name) <= room else name[: room - 1] + "…"
    out = Text(shown.ljust(room), no_wrap=True, overflow="ellipsis")
    chosen = {column for column, _, _ in kept}
    by_name = {column: (text, style) for column, text, style in segments}
    for column in ORDER:
        if column in chosen:
            text, style = by_name[column]
            out.append(" ")
            out.append(text, style=style)
    out.truncate(width)
    return out


def plain_line(row: Row) -> str:
    return (
        f"[{render.duration(row.elapsed)}] {row.name}: {row.done}/{row.total} done, "
        f"{row.failed} failed · {row.rate:.1f}/s · ETA {row.eta} · {row.states} · "
        f"cost so far {render.money(row.cost)}"
    )


@dataclass
class Progress:
    clock: Clock
    started: float
    before: set[int] = field(default_factory=set)  # jobs already over when the apply began
    terminal: bool = field(default_factory=lambda: console.is_terminal(err=True))
    _baseline: dict[str, int] = field(default_factory=dict)
    _last: dict[str, str] = field(default_factory=dict)
    _live: Live | None = None

    def rows(self, jobs: Sequence[JobRow]) -> list[Row]:
        mine = [j for j in jobs if j.id not in self.before]
        elapsed = self.clock.monotonic() - self.started
        rows = []
        for name in sorted({j.manifest for j in mine}):
            own = [j for j in mine if j.manifest == name]
            succeeded = sum(j.succeeded for j in own)
            failed = sum(j.failed for j in own)
            self._baseline.setdefault(name, succeeded + failed)
            states: dict[str, int] = {}
            for j in own:
                label = j.remote_state or str(j.phase)
                states[label] = states.get(label, 0) + 1
            rows.append(
                Row(
                    name=name,
                    total=sum(j.requests for j in own),
                    succeeded=succeeded,
                    failed=failed,
                    started_done=self._baseline[name],
                    states=", ".join(f"{n} {s}" for s, n in sorted(states.items())),
                    cost=sum(j.cost_usd or 0.0 for j in own),
                    elapsed=elapsed,
                )
            )
        return rows

    def show(self, jobs: Sequence[JobRow]) -> None:
        rows = self.rows(jobs)
        if self.terminal:
            self._draw(rows)
            return
        for row in rows:
            text = plain_line(row)
            key = text.split("] ", 1)[1].split(" · ")[0] + row.states  # counts, not time
            if self._last.get(row.name) != key:
                self._last[row.name] = key
                note(text, event="progress", manifest=row.name, err=True)

    def _draw(self, rows: list[Row]) -> None:
        if self._live is None:
            target = console.rich_console(err=True)
            self._live = Live(console=target, auto_refresh=False, transient=False)
            self._live.start()
        width = self._live.console.width
        name_width = max((len(r.name) for r in rows), default=8)
        self._live.update(
            Group(*(line(r, width=width, name_width=name_width) for r in rows)), refresh=True
        )

    def end(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
