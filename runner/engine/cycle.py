"""One cycle of the runner: reconcile what changed, submit, poll, ingest, tidy up.

``apply --wait`` is "tick until quiet", the daemon is "wait for changes, then tick", and the
engine tests tick a Runtime over a fake backend: all three run this same code. Each manifest
is a fault boundary (an error reconciling one becomes its error in ``status`` and the others
go on), as each job is in ``runner.engine.lifecycle``. Called by the CLI and the daemon.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from runner.core.loader import LoadedManifest
from runner.engine import caching, ingest, lifecycle, reconcile
from runner.engine.runtime import Runtime, fields, log
from runner.errors import GbatchError, ManifestError


@dataclass
class TickReport:
    plans: dict[str, reconcile.ManifestPlan] = field(default_factory=dict)
    errors: dict[str, GbatchError] = field(default_factory=dict)  # why each was not applied
    submitted: lifecycle.SubmitReport = field(default_factory=lifecycle.SubmitReport)
    ingested: ingest.IngestReport = field(default_factory=ingest.IngestReport)
    live: int = 0

    @property
    def failed_lines(self) -> set[str]:
        """Manifests whose jobs came back with failed lines: reconcile them for retries."""
        return self.ingested.failed_lines


def apply_one(rt: Runtime, loaded: LoadedManifest) -> reconcile.ManifestPlan:
    """Reconcile one manifest; every failure is recorded on it before it is raised."""
    name = loaded.manifest.name
    try:
        return reconcile.apply_manifest(rt, loaded)
    except ManifestError:
        raise
    except GbatchError as exc:
        _record(rt, name, str(exc))
        raise
    except Exception as exc:  # the fault boundary: a bug in one manifest's path is its error
        message = f"internal error: {type(exc).__name__}: {exc}"
        log.exception("%s: %s", name, message, extra=fields(event="error", manifest=name))
        _record(rt, name, message)
        raise GbatchError(f"{name}: {message}") from exc


def _record(rt: Runtime, name: str, message: str) -> None:
    if rt.state.manifest(name) is not None:
        rt.state.update_manifest(name, last_error=message)
    rt.state.event("error", message, manifest=name)


def apply_all(
    rt: Runtime,
    manifests: dict[str, LoadedManifest],
    names: Iterable[str],
    *,
    starting: Callable[[str], None] = lambda name: None,
    stop: Callable[[], bool] = lambda: False,
) -> tuple[dict[str, reconcile.ManifestPlan], dict[str, GbatchError]]:
    """Apply each named manifest in its own fault boundary; (plans, errors by manifest).

    Manifests whose source is a query (the slow kind, bounded by ``source.timeout``) go
    last, so the others are not held up behind them. ``starting`` hears each name first
    (the daemon's health check); ``stop`` is asked between manifests (SIGTERM).
    """
    plans: dict[str, reconcile.ManifestPlan] = {}
    errors: dict[str, GbatchError] = {}
    ordered = sorted(names, key=lambda name: manifests[name].manifest.spec.source.query is not None)
    for name in ordered:
        if stop():
            break
        starting(name)
        try:
            plans[name] = apply_one(rt, manifests[name])
        except GbatchError as exc:
            errors[name] = exc
            log.error("%s: %s", name, exc, extra=fields(event="not_applied", manifest=name))
    return plans, errors


def tick(
    rt: Runtime,
    manifests: dict[str, LoadedManifest],
    *,
    apply: Iterable[str] = (),
    scope: set[str] | None = None,
) -> TickReport:
    """Apply the manifests named in ``apply``, then move every job (of ``scope``) on."""
    report = TickReport()
    report.plans, report.errors = apply_all(rt, manifests, apply)
    report.submitted = lifecycle.submit_pending(rt, manifests=scope)
    lifecycle.poll(rt)
    report.ingested = ingest.ingest_ready(rt, manifests)
    if report.ingested.ingested:  # finished jobs free room under the limits
        report.submitted.created += lifecycle.submit_pending(rt, manifests=scope).created
    caching.maintain(rt)
    ingest.delete_unneeded_media(rt)
    report.live = len(rt.state.jobs(live=True))
    return report
