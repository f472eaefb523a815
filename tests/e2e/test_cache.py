"""Context caching end to end: one cache per manifest, named by every line, kept alive while a
job waits, deleted afterwards; too-small caches are refused with the numbers."""

from __future__ import annotations

import json

import pytest

from runner.emulator import Emulator
from tests.conftest import Gbatch, uploads

GUIDE = "Our style: short sentences, active voice, no jargon. " * 100  # ~1300 tokens


def cached_manifest(gbatch: Gbatch, *, ttl: str = "48h", guide: str = GUIDE) -> None:
    (gbatch.manifests / "docs").mkdir(exist_ok=True)
    (gbatch.manifests / "docs" / "guide.md").write_text(guide)
    gbatch.write(
        "copy.yaml",
        f"""
name: copy
model: gemini-2.5-flash
source:
  key: sku
  rows: [{{sku: a1, name: Kettle}}, {{sku: b2, name: Lamp}}, {{sku: c3, name: Chair}}]
prompt:
  system: You write product copy.
  template: "Describe {{{{ name }}}}."
cache:
  files: [docs/guide.md]
  ttl: {ttl}
tools: {{google_search: true}}
""",
    )


def uploaded_lines(emulator: Emulator) -> list[dict[str, object]]:
    lines = []
    for stored in uploads(emulator):
        data = stored.path.read_bytes()
        lines += [json.loads(line) for line in data.splitlines() if line.strip()]
    return lines


def test_a_cached_manifest_creates_one_cache_that_every_line_names(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    cached_manifest(gbatch)
    plan = gbatch("plan", "manifests")
    assert plan.code == 0, plan.err
    assert "of those input tokens are read from the context cache" in plan.out
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert emulator.count("caches.create") == 1
    lines = uploaded_lines(emulator)
    assert len(lines) == 3
    names = {line["request"]["cachedContent"] for line in lines}  # type: ignore[index]
    (name,) = names
    assert str(name).startswith("cachedContents/") and "__gbatch" not in str(name)
    for line in lines:  # what the cache holds is not repeated per request
        assert "systemInstruction" not in line["request"]  # type: ignore[operator]
        assert "tools" not in line["request"]  # type: ignore[operator]
    rows = gbatch.sql("select count(*), min(cached_tokens), min(prompt_tokens) from copy")
    assert rows[0][0] == 3 and int(rows[0][1]) > 1000  # type: ignore[arg-type]
    # cost: cached tokens at the cached rate (gemini-2.5-flash batch: 0.15 in, 0.03 cached,
    # as cache hits are not halved in batch, 1.25 out per 1M), against the row's own counts
    check = gbatch.sql(
        "select key, cost_usd, ((prompt_tokens - cached_tokens"
        " + (response->'usageMetadata'->>'toolUsePromptTokenCount')::int) * 0.15"
        " + cached_tokens * 0.03"
        " + (output_tokens + coalesce(thoughts_tokens, 0)) * 1.25) / 1e6 from copy"
    )
    for _, cost, by_hand in check:
        assert cost == pytest.approx(by_hand)
    # the search tool lives in the cache, and still grounds every answer
    sources = gbatch.sql("select count(distinct key), min(uri), min(title) from copy_sources")
    assert sources[0][0] == 3 and str(sources[0][1]).startswith("http")
    assert emulator.count("caches.delete") == 1  # the last job using it has ended
    again = gbatch("apply", "manifests", "--wait")
    assert again.code == 0 and emulator.count("caches.create") == 1  # nothing to send


def test_a_cache_below_the_model_minimum_is_reported_not_sent(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    cached_manifest(gbatch, guide="Short guide. " * 20)
    result = gbatch("validate", "manifests")
    assert result.code == 2
    assert "copy.yaml" in result.err and "cache" in result.err
    assert "the model caches at least 1,024" in result.err
    assert emulator.count("caches.create") == 0
