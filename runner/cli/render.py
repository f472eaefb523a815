"""Plain-text rendering for the CLI: tables, plans, status, progress. No logic, no I/O."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from runner.adapters.state import JobRow, ManifestRow
from runner.core.lifecycle import Phase
from runner.engine.reconcile import ManifestPlan


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, max_width: int = 60) -> str:
    """A fixed-width text table; long cells are cut with an ellipsis."""
    cells = [[_cell(v, max_width) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: Any, max_width: int) -> str:
    text = "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= max_width else text[: max_width - 1] + "…"


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
    return "unknown" if value is None else f"${value:.4f}"


def plan(plans: Sequence[ManifestPlan]) -> str:
    lines = []
    for p in plans:
        d = p.diff
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
            rate = "unknown rate" if c.rate is None else f"${c.rate:.2f} per 1M tokens per hour"
            lines.append(
                f"  cache storage: {c.tokens:,} tokens for {c.hours:g} h at {rate}: "
                f"{money(stored)} (one TTL; extending it while jobs wait costs more)"
            )
        for note in p.notes:
            lines.append(f"  note: {note}")
        if p.blocked:
            lines.append(f"  BLOCKED: {p.blocked}")
    return "\n".join(lines)


def status(manifests: Sequence[ManifestRow], jobs: Sequence[JobRow]) -> str:
    rows = []
    for m in manifests:
        own = [j for j in jobs if j.manifest == m.name]
        states: dict[str, int] = {}
        for j in own:
            label = j.remote_state if j.phase is Phase.SUBMITTED and j.remote_state else j.phase
            states[label] = states.get(label, 0) + 1
        rows.append(
            [
                m.name,
                m.status,
                m.table_name,
                m.requests,
                ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "-",
                sum(j.succeeded for j in own if j.phase is Phase.INGESTED),
                sum(j.failed for j in own if j.phase is Phase.INGESTED),
                money(sum(j.cost_usd or 0.0 for j in own)),
                (m.commit_sha or "")[:10],
                m.last_error or "",
            ]
        )
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
    return table(head, rows, max_width=80)


def files_storage(jobs: Sequence[JobRow], media: Sequence[tuple[str, str | None, int, str]]) -> str:
    """The Files API storage gbatch holds now (the project's quota is 20 GB)."""
    inputs = [j for j in jobs if j.input_file]
    total = sum(j.bytes for j in inputs) + sum(size for _, _, size, _ in media)
    return (
        f"Files API storage held: {total / 1e6:,.1f} MB in {len(inputs)} input file(s) and "
        f"{len(media)} media file(s) (project limit 20 GB; inputs are deleted once ingested)"
    )


def jobs_table(jobs: Sequence[JobRow]) -> str:
    rows = [
        [
            j.id,
            j.manifest,
            j.remote_name or "-",
            j.phase,
            j.remote_state or "-",
            j.requests,
            j.succeeded,
            j.failed,
            money(j.cost_usd),
            j.updated_at[:19],
            j.error or "",
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
        "updated",
        "error",
    ]
    return table(head, rows)
