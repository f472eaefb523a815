"""Full validation: the loader's checks plus the data's (files exist, columns, duplicate keys).

Each manifest's request set is built into a scratch directory, so every error ``apply`` would
hit with this data is found here first; a query source is only sampled (its columns and first
rows), since running a whole query is apply's work. Called by ``gbatch validate``, before
apply/plan, and by the daemon before each apply.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from runner.adapters import sources
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


def check_data(
    loaded: LoadedManifest,
    *,
    forbidden: Sequence[Path] = (),
    cancel: threading.Event | None = None,
) -> ManifestError | None:
    """Build the request set in a scratch directory; the first data problem, located.

    ``forbidden``: files no source may read (``sources.private_paths``); ``cancel`` stops a
    running query source (it then raises ``query_source.QueryStopped``).
    """
    with tempfile.TemporaryDirectory(prefix="gbatch-validate-") as scratch:
        try:
            if loaded.manifest.spec.cache is not None:
                cache = caching.prepare(None, loaded, count_tokens=False, forbidden=forbidden)
                if cache.too_small and cache.tokens * 2 < cache.minimum:
                    # only an estimate here: refuse what is clearly small; plan counts for real
                    raise ManifestError(cache.too_small, field="cache")
            sources.build_requests(
                loaded.manifest,
                base_dir=loaded.base_dir,
                root=loaded.root,
                out=Path(scratch) / "requests.parquet",
                forbidden=forbidden,
                query_rows=QUERY_SAMPLE_ROWS,
                cancel=cancel,
            )
        except ManifestError as error:
            return locate(loaded, error)
    return None


def validate(
    paths: Sequence[Path], *, forbidden: Sequence[Path] = ()
) -> tuple[list[LoadedManifest], list[ManifestError]]:
    """Every manifest under ``paths`` that is fully valid, and every error found."""
    loaded, errors = load_paths(paths)
    good = []
    for item in loaded:
        problem = check_data(item, forbidden=forbidden)
        if problem is None:
            good.append(item)
        else:
            errors.append(problem)
    return good, errors
