"""What a manifest's ``cache`` block becomes: the cachedContents body, its digest, its size rule.

The body holds the cached files and text as user contents plus the system instruction and
tools (requests that use a cache may not repeat them). Its digest, with the model, salts
every request hash: a changed cache is a changed request, a recreated one with the same
content is not. Pure; the engine reads the files and talks to the API.
Called by runner.engine.caching and runner.engine.validate.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from runner.core.manifest import Manifest
from runner.core.requests import tool_list

# Smallest cache the API accepts, in tokens (gemini-batch-api.md "Context caches").
MIN_TOKENS_DEFAULT = 1024
MIN_TOKENS_PRO = 4096


def min_cache_tokens(model_id: str) -> int:
    return MIN_TOKENS_PRO if "-pro" in model_id else MIN_TOKENS_DEFAULT


def cache_body(manifest: Manifest, files: list[tuple[str, str]]) -> dict[str, Any]:
    """The cachedContents fields besides model, ttl and name; ``files`` is (name, text)."""
    spec = manifest.spec
    assert spec.cache is not None
    parts = [{"text": f"<file name={json.dumps(name)}>\n{text}\n</file>"} for name, text in files]
    if spec.cache.text:
        parts.append({"text": spec.cache.text})
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": parts}]}
    system = spec.cache.system or (spec.prompt.system if spec.prompt else None)
    if system:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    tools = tool_list(manifest)
    if tools:
        body["tools"] = tools
    return body


def cache_digest(model_id: str, body: dict[str, Any]) -> str:
    canonical = json.dumps([model_id, body], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def body_chars(body: dict[str, Any]) -> int:
    """Characters of text in the body (for a token estimate when countTokens is not at hand)."""
    texts = [p.get("text", "") for c in body.get("contents", []) for p in c.get("parts", [])]
    system = body.get("systemInstruction", {}).get("parts", [])
    return sum(len(t) for t in texts) + sum(len(p.get("text", "")) for p in system)
