"""Full validation: the loader's checks plus the data's (files exist, columns, duplicate keys).

Each manifest's request set is built, so every error ``apply`` would hit with this data is
found here first; a query source is only sampled (its columns and first rows), since running
a whole query is apply's work. A set built from the whole data is handed over to planning
(``HANDOVER``), which takes it instead of building it again. A manifest whose recorded set
was built from exactly these inputs (``fingerprint``: the manifest, every input file's size,
mtime and content digest, the builder's code) is not built at all: that data built before.
Called by ``gbatch validate``, before apply/plan, and by the daemon before each apply;
``fingerprint``, ``SetRecord`` and ``HANDOVER`` by ``runner.engine.reconcile``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from runner.adapters import backends, sources
from runner.core.atomic import replacing
from runner.core.loader import LoadedManifest, load_paths
from runner.engine import caching
from runner.errors import ManifestError

QUERY_SAMPLE_ROWS = 1000


def locate(loaded: LoadedManifest, error: ManifestError) -> ManifestError:
    """``error`` (raised by the data plane with a field) placed at its line in the manifest."""
    if error.location is not None:
        return error
    parts = [p for p in error.field.split(".") if p]
    return ManifestError(error.reason, location=loaded.locate("spec", *parts), field=error.field)


def fingerprint(
    loaded: LoadedManifest, *, cache_digest: str, forbidden: Sequence[Path] = ()
) -> str | None:
    """What a manifest's request set is a function of, as one digest; None when unknowable
    (a query source, media named in rows) or an input cannot be read (the build says why).

    The manifest's digest, its root, the cache's digest, each input file's path, size,
    mtime and content digest, and the builder's code and DuckDB version: equal fingerprints
    build equal sets. Compute it before building, never after (see ``input_stamps``).
    """
    stamped = _stamped(loaded, cache_digest=cache_digest, forbidden=forbidden)
    return stamped[0] if stamped is not None else None


def _stamped(
    loaded: LoadedManifest, *, cache_digest: str, forbidden: Sequence[Path]
) -> tuple[str, list[sources.Stamp]] | None:
    try:
        stamps = sources.input_stamps(
            loaded.manifest, base_dir=loaded.base_dir, root=loaded.root, forbidden=forbidden
        )
    except (ManifestError, OSError):
        return None
    if stamps is None:
        return None
    parts = [sources.builder_version(), loaded.digest, str(loaded.root), cache_digest, stamps]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest(), stamps


def _same_files(stamps: list[sources.Stamp]) -> bool:
    """Every stamped file still has its size and mtime (a cheap look, no reading)."""
    try:
        return all(
            (info := os.stat(path)).st_size == size and info.st_mtime_ns == mtime
            for path, size, mtime, _ in stamps
        )
    except OSError:
        return False


@dataclass(frozen=True)
class Settled:
    """A diff of the recorded set that found nothing to do: every row answered (or, with
    answer reuse off, out of retries), against the ledger whose content digest is ``ledger``.
    While that ledger, the set and the manifest are unchanged and no job of the manifest is
    live, the diff would find the same."""

    ledger: str
    total: int
    unchanged: int
    exhausted: int


@dataclass(frozen=True)
class SetRecord:
    """What a recorded request set was built from, kept beside it
    (``<set digest>.inputs.json``)."""

    fingerprint: str
    set_digest: str
    settled: Settled | None = None

    SUFFIX = ".inputs.json"

    @classmethod
    def path_for(cls, request_set: Path) -> Path:
        return request_set.with_suffix(cls.SUFFIX)

    @classmethod
    def set_for(cls, record: Path) -> Path:
        return record.with_name(record.name.removesuffix(cls.SUFFIX) + ".parquet")

    @classmethod
    def read(cls, request_set: Path) -> SetRecord | None:
        """The record of ``request_set``; None when it or the set is missing or unreadable."""
        try:
            if not request_set.is_file():
                return None
            data = json.loads(cls.path_for(request_set).read_text())
            settled = data.get("settled")
            return cls(
                fingerprint=str(data["fingerprint"]),
                set_digest=str(data["set_digest"]),
                settled=Settled(**settled) if settled else None,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None  # no record, or one from other code: the set is built again

    def write(self, request_set: Path) -> None:
        with replacing(self.path_for(request_set)) as partial:
            partial.write_text(json.dumps(asdict(self)))


def recorded_sets(state_dir: Path, name: str) -> Path:
    """Where the real state keeps a manifest's request sets (``Runtime.sets_dir`` of a
    runtime on that state)."""
    return state_dir / "sets" / name


def built_before(state_dir: Path | None, name: str, fingerprint: str) -> bool:
    """Whether a set kept in the state was built from exactly these inputs."""
    if state_dir is None:
        return False
    directory = recorded_sets(state_dir, name)
    if not directory.is_dir():
        return False
    for path in directory.glob("*" + SetRecord.SUFFIX):
        record = SetRecord.read(SetRecord.set_for(path))
        if record is not None and record.fingerprint == fingerprint:
            return True
    return False


class Handover:
    """What validation learnt, for the next plan of the same manifest to take: its inputs'
    fingerprint, and the request set when one was built from the whole data.

    Keyed by the manifest's file, name, digest and cache digest; taken once, and replaced by
    the next validation of the manifest, so a plan never uses a fingerprint older than the
    validation just before it (the daemon and the CLI validate right before each apply).
    Sets live in a directory of this process, removed when it ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[tuple[str, ...], str, list[sources.Stamp], Path | None]] = {}
        self._dir: Path | None = None

    def directory(self) -> Path:
        with self._lock:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="gbatch-validated-"))
                weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
            return self._dir

    @staticmethod
    def _key(loaded: LoadedManifest, cache_digest: str) -> tuple[str, ...]:
        return (str(loaded.path), loaded.digest, cache_digest)

    def put(
        self,
        loaded: LoadedManifest,
        cache_digest: str,
        stamped: tuple[str, list[sources.Stamp]],
        built: Path | None,
    ) -> None:
        stamp, stamps = stamped
        with self._lock:
            old = self._held.pop(loaded.manifest.name, None)
            key = self._key(loaded, cache_digest)
            self._held[loaded.manifest.name] = (key, stamp, stamps, built)
        if old is not None and old[3] is not None and old[3] != built:
            old[3].unlink(missing_ok=True)

    def take(self, loaded: LoadedManifest, cache_digest: str) -> tuple[str, Path | None] | None:
        """(fingerprint, set or None) validation left for this manifest, now the caller's;
        None when there is none or a file changed size or mtime since it was stamped."""
        with self._lock:
            held = self._held.pop(loaded.manifest.name, None)
        if held is None:
            return None
        key, stamp, stamps, built = held
        if key != self._key(loaded, cache_digest) or not _same_files(stamps):
            if built is not None:
                built.unlink(missing_ok=True)
            return None
        return stamp, built if built is not None and built.exists() else None


HANDOVER = Handover()


def check_data(
    loaded: LoadedManifest,
    *,
    forbidden: Sequence[Path] = (),
    cancel: threading.Event | None = None,
    backend: str = "gemini",
    state_dir: Path | None = None,
    handover: Handover = HANDOVER,
) -> ManifestError | None:
    """Build the request set (kept for planning in ``handover``); the first data problem,
    located. Nothing is built when the state (``state_dir``) holds a set of these inputs.

    ``forbidden``: files no source may read (``sources.private_paths``); ``cancel`` stops a
    running query source (it then raises ``query_source.QueryStopped``); ``backend``
    (``settings.backend``): what it cannot run is refused first.
    """
    # the backend hook: a field the chosen backend cannot run (Vertex: a cache block)
    refused = backends.refusal(backend, loaded.manifest)
    if refused is not None:
        return locate(loaded, refused)
    name = loaded.manifest.name
    try:
        cache_digest = ""
        if loaded.manifest.spec.cache is not None:
            cache = caching.prepare(None, loaded, count_tokens=False, forbidden=forbidden)
            if cache.too_small and cache.tokens * 2 < cache.minimum:
                # only an estimate here: refuse what is clearly small; plan counts for real
                raise ManifestError(cache.too_small, field="cache")
            cache_digest = cache.digest
        stamped = _stamped(loaded, cache_digest=cache_digest, forbidden=forbidden)
        if stamped is not None and built_before(state_dir, name, stamped[0]):
            handover.put(loaded, cache_digest, stamped, None)
            return None  # built before from these inputs: the data is valid
        out = handover.directory() / f"{name}-{stamped[0] if stamped else 'sample'}.parquet"
        try:
            sources.build_requests(
                loaded.manifest,
                base_dir=loaded.base_dir,
                root=loaded.root,
                out=out,
                cache_digest=cache_digest,
                forbidden=forbidden,
                query_rows=QUERY_SAMPLE_ROWS,
                cancel=cancel,
            )
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        if stamped is None:  # a sample, or inputs that could not be stamped: not the set
            out.unlink(missing_ok=True)
        else:
            handover.put(loaded, cache_digest, stamped, out)
    except ManifestError as error:
        return locate(loaded, error)
    return None


def validate(
    paths: Sequence[Path],
    *,
    forbidden: Sequence[Path] = (),
    backend: str = "gemini",
    state_dir: Path | None = None,
) -> tuple[list[LoadedManifest], list[ManifestError]]:
    """Every manifest under ``paths`` that is fully valid, and every error found.

    ``state_dir``: the state whose recorded sets spare building unchanged manifests.
    """
    loaded, errors = load_paths(paths)
    good = []
    for item in loaded:
        problem = check_data(item, forbidden=forbidden, backend=backend, state_dir=state_dir)
        if problem is None:
            good.append(item)
        else:
            errors.append(problem)
    return good, errors
