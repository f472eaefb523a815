"""Context caches of manifests with a ``cache`` block: created once, kept alive, deleted.

``prepare`` (planning) reads the cached files, computes the body and its digest, and keeps the
body beside the request sets. ``name_for`` (submit) creates the cachedContents resource the
first time a job needs it, records it at once, and returns its name for the job's JSONL.
``maintain`` (every poll) extends a cache that live jobs still need when half its TTL has
passed, and deletes one that no live job needs. Called by reconcile, the lifecycle's
upload step and every cycle.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.adapters import sources
from runner.adapters.state import CacheRow
from runner.core.atomic import replacing
from runner.core.caching import body_chars, cache_body, cache_digest, min_cache_tokens
from runner.core.clock import parse_time
from runner.core.durations import parse_duration
from runner.core.loader import LoadedManifest
from runner.engine.runtime import Runtime, fields, log
from runner.errors import BackendError, TransientBackendError

CHARS_PER_TOKEN = 4  # the estimate when countTokens is not asked


@dataclass(frozen=True)
class PreparedCache:
    digest: str
    body: dict[str, Any]
    ttl_s: float
    tokens: int
    basis: str  # how tokens were counted
    minimum: int  # the model's smallest cache

    @property
    def too_small(self) -> str | None:
        if self.tokens >= self.minimum:
            return None
        return (
            f"the cache holds {self.tokens:,} tokens ({self.basis}); the model caches at least "
            f"{self.minimum:,}: add content or remove the cache block"
        )


def prepare(
    rt: Runtime | None,
    loaded: LoadedManifest,
    *,
    count_tokens: bool,
    forbidden: Sequence[Path] = (),
) -> PreparedCache:
    """The manifest's cache body and digest (saved for submit when ``rt`` is given).

    ``forbidden``: gbatch's own files (``rt.private`` when there is a runtime)."""
    manifest = loaded.manifest
    assert manifest.spec.cache is not None
    files = sources.cache_files(
        manifest,
        base_dir=loaded.base_dir,
        root=loaded.root,
        forbidden=rt.private if rt is not None else forbidden,
    )
    body = cache_body(manifest, files)
    model = manifest.spec.model_id
    digest = cache_digest(model, body)
    tokens = body_chars(body) // CHARS_PER_TOKEN
    basis = "estimated as characters / 4"
    if rt is not None and count_tokens:
        try:
            tokens = rt.backend.count_tokens(model=model, contents=body["contents"])
            basis = "countTokens"
        except BackendError as exc:
            log.info("countTokens unavailable for the cache (%s); estimating", exc)
    ttl_s = parse_duration(manifest.spec.cache.ttl)
    if rt is not None:
        path = _body_path(rt, manifest.name, digest)
        with replacing(path) as partial:
            partial.write_text(
                json.dumps({"model": model, "body": body, "ttl_s": ttl_s, "tokens": tokens})
            )
    return PreparedCache(
        digest=digest,
        body=body,
        ttl_s=ttl_s,
        tokens=tokens,
        basis=basis,
        minimum=min_cache_tokens(model),
    )


def _body_path(rt: Runtime, manifest: str, digest: str) -> Path:
    return rt.settings.state_dir / "caches" / manifest / f"{digest}.json"


def _seconds_left(rt: Runtime, expire_time: str) -> float:
    return (parse_time(expire_time) - rt.clock.now()).total_seconds()


def name_for(rt: Runtime, manifest: str, digest: str) -> str:
    """The live cache for this manifest's cache digest, created now if there is none."""
    saved = json.loads(_body_path(rt, manifest, digest).read_text())
    for row in rt.state.caches(manifest=manifest, digest=digest):
        if _seconds_left(rt, row.expire_time) > saved["ttl_s"] / 4:
            return row.name
    display = f"gbatch-{manifest}-{digest[:16]}"
    try:
        name, expire = rt.backend.create_cache(
            model=saved["model"], body=saved["body"], ttl_s=saved["ttl_s"], display_name=display
        )
    except TransientBackendError as exc:
        found = None if exc.code == 429 else rt.backend.find_cache(display)
        if found is None:
            raise
        name, expire = found  # the create happened; its reply was lost
    tokens = int(saved.get("tokens", 0))
    cost = _storage_usd(rt, saved["model"], tokens, seconds=_seconds_left(rt, expire))
    rt.state.add_cache(
        name=name,
        manifest=manifest,
        digest=digest,
        model=saved["model"],
        expire=expire,
        tokens=tokens,
        cost_usd=cost,
    )
    rt.state.event(
        "cache", f"created {name} (expires {expire}; storage ${cost:.6f})", manifest=manifest
    )
    log.info("%s: cache %s created", manifest, name, extra=fields(event="cache", manifest=manifest))
    return name


def maintain(rt: Runtime) -> None:
    """Extend caches live jobs still need when half their TTL is gone; delete the rest."""
    needed = {
        (job.manifest, job.cache_digest) for job in rt.state.jobs(live=True) if job.cache_digest
    }
    for row in rt.state.caches():
        try:
            if (row.manifest, row.digest) in needed:
                _extend_if_due(rt, row)
            else:
                rt.backend.delete_cache(row.name)
                rt.state.update_cache(row.name, deleted_at=rt.state.now())
                message = f"deleted {row.name}: no job needs it"
                rt.state.event("cache", message, manifest=row.manifest)
                log.info("%s: cache %s", row.manifest, message)
        except BackendError as exc:
            log.warning("%s: cache %s: %s", row.manifest, row.name, exc)


def _extend_if_due(rt: Runtime, row: CacheRow) -> None:
    """Set the TTL afresh when half of it is gone; the extra hours of storage are spent."""
    ttl_s = json.loads(_body_path(rt, row.manifest, row.digest).read_text())["ttl_s"]
    if _seconds_left(rt, row.expire_time) < ttl_s / 2:
        expire = rt.backend.extend_cache(row.name, ttl_s=ttl_s)
        extra = (parse_time(expire) - parse_time(row.expire_time)).total_seconds()
        cost = row.cost_usd + _storage_usd(rt, row.model, row.tokens, seconds=extra)
        rt.state.update_cache(row.name, expire_time=expire, cost_usd=cost)
        rt.state.event("cache", f"extended {row.name} to {expire}", manifest=row.manifest)


def _storage_usd(rt: Runtime, model: str, tokens: int, *, seconds: float) -> float:
    """Storage is billed on the cached tokens for the TTL (the caching docs), deleted early
    or not; unknown when the model has no storage price (then 0 is recorded)."""
    price = rt.prices.for_model(model)
    usd = price.storage(tokens=tokens, hours=max(seconds, 0.0) / 3600).usd if price else None
    return usd or 0.0
