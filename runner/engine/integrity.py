"""The results file as a projection of the state: owned by one state, checked every apply and
daemon cycle, rebuilt from the state alone; and table names as a namespace manifests own.

The state is the truth (gbatch#13). Every ingested job's history rows are kept in
``<state>/history/<table>/<job id>.parquet`` (written by ingest, or copied out of the results
file by the first check that finds them missing). ``ensure`` compares, per table, the history
rows per job in the results file with the kept counts (no full scan) and restores what is
missing with no request sent; a job kept nowhere is rebuilt from the ledger and the answer
store. A results file DuckDB cannot open is moved aside, never deleted, and rebuilt. A view
left on an older version is re-pointed. The file records which state writes it; any other
state is refused with LockedError before it can submit anything.

Each manifest identity (its name) owns its table and the names derived from it
(``runner.core.tables``); ``check_names`` refuses a manifest whose table collides with one
another manifest owns, in the same invocation or recorded in the state. Moving a table to
another manifest is explicit: ``gbatch rebuild --table T --move-to NAME``.

Called by the CLI (validate, plan, apply, rebuild, status) and the daemon's reconcile.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from runner.adapters import ledger, results
from runner.core import tables
from runner.core.loader import LoadedManifest
from runner.core.manifest import NAME_PATTERN
from runner.core.ports import ResultStore, State
from runner.core.pricing import PriceTable
from runner.core.records import JobRow, KeptRows, ManifestRow, TableOwner
from runner.engine.runtime import log
from runner.errors import (
    GbatchError,
    LockedError,
    ManifestError,
    ManifestErrors,
    StoreBusyError,
    StoreError,
)
from runner.settings import Settings

REPAIR_EVENTS = ("rebuilt", "results_corrupt", "table_moved", "results_claimed")
# How long a state that has not yet verified it writes the results file waits for a busy
# file before giving up (a state that has goes on: the holder is a reader or a user).
VERIFY_WAIT_S = 10.0


# A manifest's last_error while the results file was busy for it (a reader held it when its
# version was switched to, or when a job of it was ingested). The next write that shows the
# manifest's current version (an ingest, the check re-pointing the view) clears it.
BUSY = "results busy"


def note_busy(state: State, manifest: str, what: str) -> None:
    """Record that ``manifest``'s table could not be written now (retried by the next cycle)."""
    state.update_manifest(manifest, last_error=f"{BUSY}: {what}")


def caught_up(state: State, manifest: str | None) -> None:
    """``manifest``'s table now shows its current version: clear a busy condition of it."""
    row = state.manifest(manifest) if manifest else None
    if row is None or not (row.last_error or "").startswith(BUSY):
        return
    shown = Path(row.request_set).stem if row.request_set else row.set_digest
    state.update_manifest(row.name, last_error=None, set_digest=shown)


class UnverifiedOwnerError(StoreBusyError):
    """The results file is held by another process, and this state has never verified that
    it is the file's writer: going on could mean two states paying for the same requests."""


class Stores(Protocol):
    """What the checks need: a Runtime has it, and so does ``Offline`` (no API key)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def state(self) -> State: ...
    @property
    def prices(self) -> PriceTable: ...
    @property
    def results(self) -> ResultStore: ...


@dataclass(frozen=True)
class Offline:
    """Stores for commands that send no request (``rebuild``, ``status``)."""

    settings: Settings
    state: State
    prices: PriceTable
    results: ResultStore


def kept_path(settings: Settings, table: str, job_id: int) -> Path:
    """Where one job's history rows are kept (``results.ingest(keep=...)`` writes it)."""
    return settings.state_dir / "history" / table / f"{job_id}.parquet"


def label(job: JobRow) -> str:
    """The job's name in the results tables' ``job`` column."""
    return job.remote_name or job.display_name


def owner_of(stores: Stores) -> results.Owner:
    return results.Owner(stores.state.identity(), str(stores.settings.state_dir.resolve()))


def _file(stores: Stores) -> Path:
    """The results file the checks read and repair (they run only when there is one)."""
    file = stores.results.file
    if file is None:
        raise StoreError("the result store is not a DuckDB file")  # callers check first
    return file


# -- names ---------------------------------------------------------------------------------


def check_names(
    loaded: Sequence[LoadedManifest], owners: Sequence[TableOwner]
) -> dict[str, ManifestError]:
    """Per manifest name, why its table may not be used: a bookkeeping name, or a name that
    collides with a table another manifest owns (recorded) or declares (in ``loaded``).

    The recorded owner keeps its table: a newcomer is refused, not the owner. When two
    recorded owners collide (a state from before names were checked) the later one is.
    """
    recorded = {o.table_name: o for o in owners}
    claims: list[tuple[str, str, str, str | None]] = [
        (o.table_name, o.manifest, o.path, o.since) for o in owners
    ]
    claims += [(i.manifest.table, i.manifest.name, str(i.path), None) for i in loaded]
    by_key: dict[str, list[int]] = {}  # only claims that share a key can clash: no n x n
    for index, claim in enumerate(claims):
        for key in tables.keys(claim[0]):
            by_key.setdefault(key, []).append(index)
    problems: dict[str, ManifestError] = {}
    for item in loaded:
        name, table = item.manifest.name, item.manifest.table
        declared = item.manifest.spec.output.table is not None
        # the short form writes the name at the top level (``locate`` maps only ``spec``)
        named = ("name",) if item.short_form else ("metadata", "name")
        where = item.locate(*(("spec", "output", "table") if declared else named))
        spot = "output.table" if declared else "metadata.name"
        why = tables.reserved(table)
        if why is not None:
            message = f"table {table!r} may not be used: {why}"
            problems[name] = ManifestError(message, location=where, field=spot)
            continue
        mine = recorded.get(table)
        since = mine.since if mine is not None and mine.manifest == name else None
        near = sorted({i for key in tables.keys(table) for i in by_key.get(key, ())})
        for other_table, other, path, other_since in (claims[i] for i in near):
            if other == name or (
                since is not None and (other_since is None or other_since > since)
            ):
                continue
            how = tables.clash(table, other_table)
            if how is None:
                continue
            if other_table == table:
                message = (
                    f"table {table!r} belongs to manifest {other!r} ({path}); manifest {name!r} "
                    f"({item.path}) may not write it. Pick another output.table, or move the "
                    f"table: gbatch rebuild --table {table} --move-to {name}"
                )
            else:
                message = (
                    f"table {table!r} collides with table {other_table!r} of manifest {other!r} "
                    f"({path}): {how}; manifest {name!r} ({item.path}) may not use it. Pick "
                    "another output.table"
                )
            problems[name] = ManifestError(message, location=where, field=spot)
            break
    return problems


def refuse_collisions(
    loaded: list[LoadedManifest], errors: list[ManifestError], *, owners: Sequence[TableOwner]
) -> list[LoadedManifest]:
    """``loaded`` without the manifests whose table collides; their errors added to ``errors``.
    ``owners``: the state's, read without creating or migrating it (for validate and plan)."""
    problems = check_names(loaded, owners)
    errors.extend(problems.values())
    return [item for item in loaded if item.manifest.name not in problems]


# -- the projection ------------------------------------------------------------------------


@dataclass
class Report:
    """What one check found and did; ``lines()`` for the CLI and the events."""

    restored: dict[str, tuple[int, int]] = field(default_factory=dict)  # table: (jobs, rows)
    from_ledger: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    repointed: list[str] = field(default_factory=list)
    moved_to: Path | None = None
    busy: str | None = None

    def lines(self) -> list[str]:
        out = []
        if self.moved_to is not None:
            out.append(f"the results file could not be opened; moved aside to {self.moved_to}")
        for table, (jobs, rows) in sorted(self.restored.items()):
            out.append(
                f"rebuilt {table}: {rows} row(s) of {jobs} job(s) from the state; 0 requests sent"
            )
        out += [f"rebuilt from the ledger and the answer store: {j}" for j in self.from_ledger]
        out += [f"lost (nothing in the state to rebuild it from): {j}" for j in self.lost]
        out += [f"re-pointed {t} at its manifest's current version" for t in self.repointed]
        if self.busy:
            out.append(f"not checked: {self.busy}")
        return out


@dataclass(frozen=True)
class _Needs:
    unkept: list[JobRow]  # ingested jobs whose rows are not kept in the state yet
    missing: dict[str, list[KeptRows]]  # per table: kept jobs whose rows the file lacks
    stale: list[str]  # views not on their manifest's current request set


def ensure(
    stores: Stores,
    loaded: Sequence[LoadedManifest] = (),
    *,
    rebuild: Collection[str] | None = None,
) -> Report:
    """Check the results file against the state and repair it; called before each apply and
    each daemon cycle. Records ``loaded``'s tables as theirs (refusing collisions), refuses a
    results file another state writes (LockedError), and rewrites the tables named in
    ``rebuild`` from the state whether or not they look whole. A busy file is left for the
    next check (in the report)."""
    problems = check_names(loaded, stores.state.table_owners())
    if problems:  # validated before the lock; another apply recorded an owner since
        raise ManifestErrors(list(problems.values()))
    stores.state.record_owners([(i.manifest.table, i.manifest.name, str(i.path)) for i in loaded])
    report = Report()
    try:
        _repair(stores, {i.manifest.name: i for i in loaded}, report, rebuild or ())
    except StoreBusyError as exc:
        if rebuild or isinstance(exc, UnverifiedOwnerError):
            raise
        report.busy = str(exc)
        log.info("results check postponed: %s", exc)
    return report


def cycle(
    stores: Stores, loaded: list[LoadedManifest], errors: list[ManifestError]
) -> list[LoadedManifest]:
    """The daemon's check: colliding manifests go to ``errors``; the results file is checked
    and repaired. A results error is logged, not fatal; another state's file is (exit 5)."""
    problems = check_names(loaded, stores.state.table_owners())
    errors.extend(problems.values())
    good = [item for item in loaded if item.manifest.name not in problems]
    try:
        ensure(stores, good)
    except (LockedError, UnverifiedOwnerError):
        raise  # the daemon stops: another state may write this results file
    except StoreError as exc:
        log.error("results check: %s", exc)
        stores.state.event("results_error", str(exc))
    return good


def _repair(
    stores: Stores,
    loaded: dict[str, LoadedManifest],
    report: Report,
    rebuild: Collection[str],
) -> None:
    state, db = stores.state, stores.results.file
    if db is None:  # a lake: its catalog keeps every snapshot; nothing here to inspect (#18)
        return
    owner = owner_of(stores)
    known = _Known.read(state)
    verified = state.verified_results() == str(db.resolve())
    wait = 0.0 if verified else VERIFY_WAIT_S
    try:
        seen = _inspect(stores, known, report, wait_s=wait)
    except StoreBusyError as exc:
        if verified:
            raise  # this state's file, held by a reader or a user for now
        raise UnverifiedOwnerError(
            f"{exc} This state has not written {db} before, so which state writes it cannot "
            "be checked until it is free; nothing was submitted"
        ) from exc
    if seen.owner is not None and seen.owner.id != owner.id:
        raise LockedError(results.not_owner(db, owner, seen.owner))
    wrote = False
    needs = _needs(known, seen, rebuild)
    if needs.unkept:
        wrote = _keep(stores, seen, needs.unkept, loaded, report, owner)
        known = _Known.read(state)
        if wrote:
            seen = _inspect(stores, known, report)
        needs = _needs(known, seen, rebuild)
    for table, missing in needs.missing.items():
        present = []
        for k in missing:
            path = kept_path(stores.settings, table, k.job)
            if path.exists():
                present.append((k.label, path))
                continue
            state.record_kept(job=k.job, table=table, label=k.label, rows=0, kind="lost")
            report.lost.append(f"{table}: job {k.label} (its kept rows {path} are gone)")
            state.event("rebuilt", f"{table}: job {k.label} lost: {path} is gone", job=k.job)
        if not present:
            continue
        rows = results.restore(
            results_db=db, table=table, kept=present, current=known.current(table), owner=owner
        )
        wrote = True
        report.restored[table] = (len(present), rows)
        message = f"{table}: {rows} row(s) of {len(present)} job(s) restored; 0 requests sent"
        state.event("rebuilt", message, manifest=known.owners.get(table))
        log.warning("results: rebuilt %s", message)
    for table in needs.stale:
        current = known.current(table)
        if table in report.restored or current is None:
            continue
        results.show_current(results_db=db, table=table, current=current, owner=owner)
        wrote = True
        report.repointed.append(table)
        message = f"{table}: the view was on an older version; re-pointed at {current.name}"
        state.event("view", message, manifest=known.owners.get(table))
        caught_up(state, known.owners.get(table))
    if not wrote and seen.owner is None:
        try:
            results.claim(db, owner, wait_s=wait)
        except StoreBusyError as exc:
            raise UnverifiedOwnerError(f"{exc} {db} records no writer yet") from exc
    if not verified:
        state.set_verified_results(str(db.resolve()))


@dataclass(frozen=True)
class _Known:
    """What the state says the results file should hold, read once per check."""

    owners: dict[str, str]  # table: the manifest that owns it
    manifests: dict[str, ManifestRow]
    kept: dict[int, KeptRows]
    ingested: list[JobRow]

    @classmethod
    def read(cls, state: State) -> _Known:
        return cls(
            owners={o.table_name: o.manifest for o in state.table_owners()},
            manifests={m.name: m for m in state.manifests()},
            kept=state.kept_rows(),
            ingested=[j for j in state.jobs() if j.phase == "ingested"],
        )

    def names(self) -> list[str]:
        """Every table the state knows rows of: owned, a manifest's, or holding kept rows."""
        names = set(self.owners) | {m.table_name for m in self.manifests.values()}
        return sorted(names | {k.table_name for k in self.kept.values()})

    def current(self, table: str) -> Path | None:
        """The request set ``table``'s view shows: its owner's current one, if it writes
        there (a table a manifest left behind keeps the newest answer of each key)."""
        row = self.manifests.get(self.owners.get(table, ""))
        if row is None or row.table_name != table or not row.request_set:
            return None
        return Path(row.request_set)


def _inspect(
    stores: Stores, known: _Known, report: Report, *, wait_s: float = 0.0
) -> results.Inspection:
    """The results file as it is; one DuckDB cannot open is moved aside (and so is empty)."""
    db = _file(stores)
    try:
        return results.inspect(db, known.names(), wait_s=wait_s)
    except results.CorruptResultsError as exc:
        aside = results.move_aside(db)
        report.moved_to = aside
        message = f"{db} could not be opened ({exc}); moved to {aside} and rebuilt from the state"
        stores.state.event("results_corrupt", message)
        log.error("results: %s", message)
        return results.Inspection(exists=False, owner=None, tables={})


def _needs(known: _Known, seen: results.Inspection, rebuild: Collection[str]) -> _Needs:
    missing: dict[str, list[KeptRows]] = {}
    for k in known.kept.values():
        have = seen.tables.get(k.table_name)
        rows = have.rows.get(k.label, 0) if have else 0
        if k.kind == "lost" or (have is not None and k.label in have.moved_aside):
            continue
        if rows < k.rows or (k.table_name in rebuild and k.rows):
            missing.setdefault(k.table_name, []).append(k)
    stale = []
    for table, have in seen.tables.items():
        current = known.current(table)
        if table in missing or current is None or not current.exists():
            continue
        if not have.view or have.shown != current.name:
            stale.append(table)
    unkept = [j for j in known.ingested if j.id not in known.kept]
    return _Needs(unkept=unkept, missing=missing, stale=stale)


def _keep(
    stores: Stores,
    seen: results.Inspection,
    jobs: list[JobRow],
    loaded: dict[str, LoadedManifest],
    report: Report,
    owner: results.Owner,
) -> bool:
    """Keep the rows of ingested jobs not kept yet: a file ingest wrote, else a copy out of
    the results file, else a rebuild from the ledger. True when the results file was written."""
    state, settings = stores.state, stores.settings
    written = {
        int(p.stem): p.parent.name
        for p in (settings.state_dir / "history").glob("*/*.parquet")
        if p.stem.isdigit()
    }
    copy: dict[str, list[JobRow]] = {}
    wrote = False
    for job in jobs:
        name = label(job)
        if job.id in written:
            table = written[job.id]
            rows = results.kept_count(kept_path(settings, table, job.id))
            state.record_kept(job=job.id, table=table, label=name, rows=rows, kind="lines")
            continue
        found = [t for t, have in seen.tables.items() if have.rows.get(name)]
        if found:
            copy.setdefault(found[0], []).append(job)
            continue
        wrote = _from_ledger(stores, job, loaded.get(job.manifest), report, owner) or wrote
    for table, group in copy.items():
        counts = results.keep_rows(
            _file(stores), table, [(label(j), kept_path(settings, table, j.id)) for j in group]
        )
        for job in group:
            state.record_kept(
                job=job.id,
                table=table,
                label=label(job),
                rows=counts.get(label(job), 0),
                kind="lines",
            )
    return wrote


def _from_ledger(
    stores: Stores,
    job: JobRow,
    item: LoadedManifest | None,
    report: Report,
    owner: results.Owner,
) -> bool:
    """Rebuild a job kept nowhere from its ledger outcome and the answer store (its
    result lines were not kept: failed lines get a generic error). True when written."""
    state, settings = stores.state, stores.settings
    row = state.manifest(job.manifest)
    table = item.manifest.table if item else (row.table_name if row else None)
    outcome = settings.state_dir / "ledger" / job.manifest / f"{job.id}.parquet"
    name = label(job)
    if table is None or not outcome.exists() or not Path(job.request_file).exists():
        state.record_kept(job=job.id, table=table or job.manifest, label=name, rows=0, kind="lost")
        report.lost.append(f"{job.manifest}: job {name}")
        state.event("rebuilt", f"job {name}: lost, nothing to rebuild it from", job=job.id)
        return False
    lines = settings.state_dir / "results" / f"rebuild-{job.id}.jsonl"
    ledger.lines_from_ledger(
        outcome=outcome,
        answers=sorted((settings.state_dir / "answers").glob("*.parquet")),
        out=lines,
    )
    keep = kept_path(settings, table, job.id)
    summary = results.ingest(
        results_db=_file(stores),
        table=table,
        result_file=lines,
        requests=Path(job.request_file),
        current=Path(row.request_set) if row and row.request_set else None,
        output_schema=item.manifest.spec.output_schema if item else None,
        price=stores.prices.for_model(job.model),
        paid=job.kind == "batch",
        job=name,
        manifest=job.manifest,
        manifest_version=job.digest[:12],
        commit=job.commit_sha,
        keep=keep,
        owner=owner,
        ingested_at=job.updated_at,
    )
    lines.unlink(missing_ok=True)
    state.record_kept(job=job.id, table=table, label=name, rows=summary.rows, kind="ledger")
    report.from_ledger.append(f"{table}: job {name} ({summary.rows} rows)")
    state.event(
        "rebuilt",
        f"{table}: job {name} rebuilt from the ledger and the answer store ({summary.rows} "
        "rows; failed lines' errors were not kept); 0 requests sent",
        manifest=job.manifest,
        job=job.id,
    )
    return True


# -- the rebuild command and status ----------------------------------------------------------


def rebuild(
    stores: Stores, *, table: str | None = None, move_to: str | None = None, claim: bool = False
) -> Report:
    """``gbatch rebuild``: rewrite ``table`` (else every table) from the state. ``move_to``
    gives ``table`` to that manifest first (the explicit act of moving a table); ``claim``
    makes this state the results file's writer (its previous state is gone for good)."""
    state = stores.state
    known = _Known.read(state).names()
    if table is not None and table not in known:
        raise GbatchError(f"no table {table!r} in this state; known: {', '.join(known) or '-'}")
    if move_to is not None:
        if table is None:
            raise GbatchError("--move-to needs --table: the table to give to that manifest")
        if not re.fullmatch(NAME_PATTERN, move_to):
            raise GbatchError(f"--move-to {move_to!r} is not a manifest name")
        before = state.move_table(table, move_to)
        message = f"table {table} moved to manifest {move_to}" + (
            f" (from {before.manifest})" if before else ""
        )
        state.event("table_moved", message, manifest=move_to)
        log.warning("%s", message)
    if claim:
        stores.results.claim(owner_of(stores), take=True)
        state.event("results_claimed", f"{stores.settings.db} is now written by this state")
    return ensure(stores, rebuild=[table] if table else known)


def status_lines(stores: Stores) -> list[str]:
    """For ``gbatch status``: whether the results file holds every answer the state has,
    read-only (repairs are for apply, the daemon and ``rebuild``), and the latest repairs."""
    db = stores.results.file
    known = _Known.read(stores.state)
    if db is None:  # a lake (#18): the store describes itself (ResultStore.describe)
        return []
    try:
        seen = results.inspect(db, known.names())
    except results.CorruptResultsError as exc:
        lines = [
            f"results {db}: DuckDB cannot open it ({exc}); the next apply (or gbatch rebuild) "
            "moves it aside and rebuilds it from the state"
        ]
    except StoreBusyError:
        lines = [f"results {db}: held by another process; not checked"]
    else:
        lines = _status(stores, known, seen)
    for at, message in stores.state.events_of(REPAIR_EVENTS, limit=3):
        lines.append(f"results {at[:19]}: {message}")
    return lines


def _status(stores: Stores, known: _Known, seen: results.Inspection) -> list[str]:
    db = _file(stores)
    owner = owner_of(stores)
    if seen.owner is not None and seen.owner.id != owner.id:
        return [f"results {db}: {results.not_owner(db, owner, seen.owner)}"]
    needs = _needs(known, seen, ())
    absent = [
        j for j in needs.unkept if not any(h.rows.get(label(j)) for h in seen.tables.values())
    ]
    jobs = sum(len(m) for m in needs.missing.values()) + len(absent)
    lines = []
    if jobs:
        where = "is missing" if not seen.exists else "lacks answers"
        hit = set(needs.missing) | {
            known.manifests[j.manifest].table_name for j in absent if j.manifest in known.manifests
        }
        lines.append(
            f"results {db} {where}: the answers of {jobs} job(s) ({', '.join(sorted(hit))}) are "
            "in the state; the next apply (or gbatch rebuild) restores them, sending no request"
        )
    for table in needs.stale:
        lines.append(f"results: view {table} shows an older version; the next apply re-points it")
    if not lines:
        lines.append(
            f"results {db}: ok, every ingested answer is there ({len(known.ingested)} job(s), "
            f"{len(seen.tables)} table(s))"
        )
    return lines
