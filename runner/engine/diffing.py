"""``gbatch diff``: per manifest, the keys a new version adds, changes and removes, and for a
changed key which parts of its request changed.

The manifest's request set is built in a scratch directory (as ``validate`` does) and compared
with the set of the applied version recorded in the state; nothing is written and no API is
called. ``changed_parts`` is the pure comparison of two requests. Called by the CLI.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.adapters import request_sets, sources
from runner.core.loader import LoadedManifest
from runner.core.ports import State
from runner.engine import caching
from runner.engine.reconcile import version_of
from runner.engine.validate import locate
from runner.errors import ManifestError

# Which top-level request field (or generationConfig entry) is which part, as users name them.
_SCHEMA_FIELDS = ("responseMimeType", "responseJsonSchema", "responseSchema")
_PARTS = {
    "contents": "prompt",
    "systemInstruction": "system",
    "tools": "tools",
    "toolConfig": "tools",
    "cachedContent": "cache",
}


@dataclass(frozen=True)
class KeyChange:
    key: str
    parts: tuple[str, ...]


@dataclass(frozen=True)
class ManifestChanges:
    name: str
    table: str
    version: str
    previous_version: str | None  # None: never applied
    new: int
    changed: int
    removed: int
    unchanged: int
    new_keys: list[str]
    changed_keys: list[KeyChange]
    removed_keys: list[str]


def changed_parts(
    old: dict[str, Any], new: dict[str, Any], *, old_model: str, new_model: str
) -> tuple[str, ...]:
    """The parts that differ between two requests of one key (sorted; ``model`` and ``cache``
    when the requests are equal but their hash is not: the model or the cache content)."""
    found: set[str] = set()
    old_gen, new_gen = dict(old.get("generationConfig", {})), dict(new.get("generationConfig", {}))
    schema_moved = [old_gen.pop(f, None) != new_gen.pop(f, None) for f in _SCHEMA_FIELDS]
    if any(schema_moved):
        found.add("schema")
    if old_gen != new_gen:
        found.add("generation")
    for field in sorted(set(old) | set(new)):
        if field == "generationConfig" or old.get(field) == new.get(field):
            continue
        found.add(_PARTS.get(field, "other"))
    if old_model.removeprefix("models/") != new_model.removeprefix("models/"):
        found.add("model")
    if not found:
        found.add("cache")  # the request text is the same: the hash salt (cache content) moved
    return tuple(sorted(found))


def diff_manifest(state: State, loaded: LoadedManifest, *, limit: int) -> ManifestChanges:
    manifest = loaded.manifest
    row = state.manifest(manifest.name)
    previous = Path(row.request_set) if row is not None and row.request_set else None
    with tempfile.TemporaryDirectory(prefix="gbatch-diff-") as scratch:
        desired = Path(scratch) / "requests.parquet"
        try:
            cache = (
                caching.prepare(None, loaded, count_tokens=False)
                if manifest.spec.cache is not None
                else None
            )
            sources.build_requests(
                manifest,
                base_dir=loaded.base_dir,
                root=loaded.root,
                out=desired,
                cache_digest=cache.digest if cache else "",
            )
        except ManifestError as exc:
            raise locate(loaded, exc) from exc
        common = {"name": manifest.name, "table": manifest.table, "version": version_of(loaded)}
        if previous is None or row is None or not previous.exists():
            count, keys = request_sets.keys(desired, limit=limit)
            return ManifestChanges(
                **common,
                previous_version=None,
                new=count,
                changed=0,
                removed=0,
                unchanged=0,
                new_keys=keys,
                changed_keys=[],
                removed_keys=[],
            )
        compared = request_sets.compare(previous, desired, limit=limit)
    changes = [
        KeyChange(
            c.key,
            changed_parts(
                json.loads(c.old),
                json.loads(c.new),
                old_model=row.model,
                new_model=manifest.spec.model_id,
            ),
        )
        for c in compared.changed_requests
    ]
    return ManifestChanges(
        **common,
        previous_version=row.digest[:12],
        new=compared.new,
        changed=compared.changed,
        removed=compared.removed,
        unchanged=compared.unchanged,
        new_keys=compared.new_keys,
        changed_keys=changes,
        removed_keys=compared.removed_keys,
    )
