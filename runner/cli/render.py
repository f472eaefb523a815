"""Text for the CLI, rendered from the views (``runner.cli.views``): plans, status, tables.

No logic and no I/O: ``runner.cli.console`` decides where text goes and whether a table is
drawn with rich (a terminal) or as plain aligned columns (a pipe, a file, a test). Numbers are
in fixed notation (``$0.0000301``, never ``3.01e-05``). Called by the commands.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from runner.cli import views


@dataclass(frozen=True)
class Table:
    """Columns and rows of cells already turned into text; ``wide`` columns may wrap."""

    columns: list[str]
    rows: list[list[str]]
    wide: tuple[str, ...] = ()
    styles: tuple[tuple[int, str], ...] = ()  # (column index, rich style) for a terminal
    optional: tuple[str, ...] = ()  # dropped in this order when a terminal is too narrow


def fixed(value: float) -> str:
    """A float in fixed notation: 3.01e-05 -> 0.0000301 (six significant digits below 1,
    six decimals above; never an exponent)."""
    if not math.isfinite(value):
        return str(value)
    if abs(value) < 1:
        return format(Decimal(f"{value:.6g}"), "f")
    return f"{value:.6f}".rstrip("0").rstrip(".")


def cell(value: Any, max_width: int = 60) -> str:
    text = "" if value is None else fixed(value) if isinstance(value, float) else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= max_width else text[: max_width - 1] + "…"


WIDE_MIN = 16  # a folding column gets at least this many cells on a terminal


def fitted(table: Table, width: int) -> Table:
    """``table`` without its optional columns, in order, until the rest fits ``width``."""
    columns = list(table.columns)

    def needed() -> int:
        sizes = []
        for name in columns:
            index = table.columns.index(name)
            natural = max([len(name), *(len(r[index]) for r in table.rows)])
            sizes.append(min(natural, WIDE_MIN) if name in table.wide else natural)
        return sum(sizes) + len(sizes) - 1

    for name in table.optional:
        if needed() <= width:
            break
        columns.remove(name)
    keep = [table.columns.index(c) for c in columns]
    styles = tuple((keep.index(i), s) for i, s in table.styles if i in keep)
    return Table(
        columns, [[r[i] for i in keep] for r in table.rows], wide=table.wide, styles=styles
    )


def plain(table: Table) -> str:
    """A fixed-width text table (for pipes: one line per row, never wrapped)."""
    widths = [len(c) for c in table.columns]
    for row in table.rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(table.columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table.rows
    ]
    return "\n".join(lines)


def query_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    return Table(list(columns), [[cell(v) for v in row] for row in rows], wide=tuple(columns))


def as_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue().rstrip("\n")


def as_json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return json.dumps(
        [dict(zip(columns, row, strict=True)) for row in rows],
        default=str,
        ensure_ascii=False,
        indent=2,
    )


def money(value: float | None) -> str:
    """Dollars in fixed notation: four decimals, or three significant digits below a cent."""
    if value is None:
        return "unknown"
    if value == 0 or abs(value) >= 0.01:
        return f"${value:.4f}"
    digits = 2 - math.floor(math.log10(abs(value)))
    return f"${value:.{digits}f}"


def duration(seconds: float) -> str:
    """h:mm:ss (the hours grow past 9; a batch job may take 24 h)."""
    whole = max(0, int(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def age(seconds: float) -> str:
    """A short age, kubectl style: 42s, 7m, 3h, 2d."""
    whole = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def plan(items: Sequence[views.PlanItem]) -> str:
    lines = []
    for p in items:
        d = p.requests
        lines.append(f"{p.name} -> table {p.table} ({p.model}, version {p.version})")
        lines.append(
            f"  requests: {d.total} total, {d.new} new, {d.changed} changed, {d.retry} retry, "
            f"{d.unchanged} unchanged, {d.in_flight} in flight, {d.removed} removed"
            + (f", {d.exhausted} out of retries" if d.exhausted else "")
        )
        if d.reused or d.waiting:
            lines.append(
                f"  answer store: {d.reused} answered before (copied, not paid again), "
                f"{d.waiting} waiting for an identical request in flight"
            )
        if p.jobs:
            sizes = ", ".join(f"{c.requests} requests / {c.bytes:,} bytes" for c in p.jobs)
            lines.append(f"  jobs to create: {len(p.jobs)} ({sizes})")
        else:
            lines.append("  jobs to create: none")
        e = p.estimate
        stored = e.cache_storage.usd if e.cache_storage is not None else None
        if p.jobs:
            split = (
                f" (requests {money(e.cost_usd - stored)} + cache storage {money(stored)})"
                if stored is not None and e.cost_usd is not None
                else ""
            )
            lines.append(
                f"  estimated: {e.input_tokens:,} input tokens ({e.basis}), "
                f"{e.output_tokens:,} output tokens (at most), cost {money(e.cost_usd)} "
                f"at batch price{split}; spent so far {money(p.spent_usd)}"
            )
        if p.jobs and e.cached_tokens:
            lines.append(
                f"  cache: {e.cached_tokens:,} of those input tokens are read from the context "
                f"cache at the cached rate: {money(e.cost_usd)} with the cache (its storage "
                f"included) instead of {money(e.cost_without_cache_usd)} without it"
            )
        if p.jobs and e.cache_storage is not None:
            c = e.cache_storage
            rate = (
                "unknown rate"
                if c.rate_usd is None
                else f"${c.rate_usd:.2f} per 1M tokens per hour"
            )
            lines.append(
                f"  cache storage: {c.tokens:,} tokens for {c.hours:g} h at {rate}: "
                f"{money(stored)} (one TTL; extending it while jobs wait costs more)"
            )
        for note in p.notes:
            lines.append(f"  note: {note}")
        if p.blocked:
            lines.append(f"  BLOCKED: {p.blocked}")
    return "\n".join(lines)


def plan_total(items: Sequence[views.PlanItem]) -> float | None:
    """The estimated cost of every job the plan would create (None: some are unpriced)."""
    costs = [p.estimate.cost_usd for p in items if p.jobs and not p.blocked]
    return None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)


STATUS_STYLES = {"ok": "green", "blocked": "red", "invalid": "red", "missing": "yellow"}


def status(view: views.Status) -> Table:
    rows = [
        [
            m.name,
            m.status,
            m.table,
            str(m.requests),
            ", ".join(f"{n} {s}" for s, n in m.jobs.items()) or "-",
            str(m.succeeded),
            str(m.failed),
            money(m.cost_usd),
            (m.commit or "")[:10],
            cell(m.last_error or "", 80),
        ]
        for m in view.manifests
    ]
    head = [
        "manifest",
        "status",
        "table",
        "requests",
        "jobs",
        "succeeded",
        "failed",
        "cost",
        "commit",
        "last error",
    ]
    return Table(
        head,
        rows,
        wide=("last error", "jobs"),
        styles=((1, "status"),),
        optional=("commit", "table", "requests", "jobs", "cost"),
    )


def invalid_files(view: views.Status) -> str:
    lines = ["invalid manifest files (the last good version of each keeps running):"]
    for f in view.invalid_files:
        lines.append(f"  {f.path} (since {f.since[:19]}): {f.error}")
    return "\n".join(lines)


def files_storage(storage: views.FilesStorage) -> str:
    """The Files API storage gbatch holds now (the project's quota is 20 GB)."""
    return (
        f"Files API storage held: {storage.bytes / 1e6:,.1f} MB in {storage.input_files} input "
        f"file(s) and {storage.media_files} media file(s) (project limit 20 GB; inputs are "
        "deleted once ingested)"
    )


def jobs_table(jobs: Sequence[views.Job]) -> Table:
    rows = [
        [
            str(j.id),
            j.manifest,
            j.remote_name or "-",
            j.phase,
            j.remote_state or "-",
            str(j.requests),
            str(j.succeeded),
            str(j.failed),
            money(j.cost_usd),
            age(j.age_s),
            j.updated_at[:19],
            cell(j.error or ""),
        ]
        for j in jobs
    ]
    head = [
        "id",
        "manifest",
        "remote",
        "phase",
        "state",
        "requests",
        "ok",
        "failed",
        "cost",
        "age",
        "updated",
        "error",
    ]
    return Table(
        head,
        rows,
        wide=("error", "remote"),
        optional=("updated", "remote", "cost", "requests", "age", "manifest"),
    )


def event_line(event: views.Event) -> str:
    where = event.manifest or "-"
    job = f" job {event.job}" if event.job is not None else ""
    return f"{event.at[:23]}  {where}{job}  {event.kind}: {event.message}"


def validation(view: views.Validation) -> tuple[list[str], list[str]]:
    """(stdout lines, stderr lines) of ``validate``."""
    out = [f"ok   {m.path}: {m.name} -> table {m.table}" for m in view.items]
    err = sorted(e.message for e in view.errors)
    err += [f"warning: {w}" for w in view.warnings]
    if view.errors:
        err.append(f"{len(view.errors)} problem(s) in the manifests")
    return out, err


def diff(view: views.Diff) -> str:
    lines = []
    for m in view.items:
        if m.status == "new":
            head = f"{m.name} -> table {m.table}: new (never applied), {m.new} key(s)"
        else:
            head = (
                f"{m.name} -> table {m.table}: version {m.previous_version} -> {m.version}: "
                f"{m.new} new, {m.changed} changed, {m.removed} removed, "
                f"{m.unchanged} unchanged"
            )
        lines.append(head)
        if m.status == "new":
            continue
        for key in m.new_keys:
            lines.append(f"  + {key}")
        for changed in m.changed_keys:
            lines.append(f"  ~ {changed.key}  ({', '.join(changed.parts)})")
        for key in m.removed_keys:
            lines.append(f"  - {key}")
        shown = len(m.new_keys) + len(m.changed_keys) + len(m.removed_keys)
        if shown < m.new + m.changed + m.removed:
            lines.append(f"  ... {m.new + m.changed + m.removed - shown} more (--limit)")
    return "\n".join(lines)
