"""Money through the CLI: cache storage is in the plan, and the ingested cost_usd is the one
cost definition of runner.core.pricing."""

from __future__ import annotations

import json
import re

import pytest

from runner.core.pricing import load_prices
from runner.emulator import Emulator
from tests.conftest import Gbatch

# The emulator answers any model name; no price table knows this one.
UNPRICED = """
name: capped
model: acme-llm-1
source:
  key: id
  rows: [{id: a, q: one}, {id: b, q: two}]
prompt:
  template: "Answer {{ q }}."
policy: {max_cost_usd: 5}
"""

GUIDE = "Our style: short sentences, active voice, no jargon. " * 100  # ~1300 tokens

CACHED = """
name: copy
model: gemini-2.5-flash
source:
  key: sku
  rows: [{sku: a1, name: Kettle}, {sku: b2, name: Lamp}, {sku: c3, name: Chair}]
prompt:
  system: You write product copy.
  template: "Describe {{ name }}."
cache:
  files: [docs/guide.md]
  ttl: 48h
tools: {google_search: true}
"""


def test_plan_says_when_no_price_is_known(gbatch: Gbatch, emulator: Emulator) -> None:
    gbatch.write("capped.yaml", UNPRICED.replace("policy: {max_cost_usd: 5}", ""))
    result = gbatch("plan", "manifests")
    assert result.code == 0, result.err
    assert "no price known for acme-llm-1" in result.out
    assert "cost unknown" in result.out


def test_plan_counts_the_cache_storage_for_its_ttl(gbatch: Gbatch, emulator: Emulator) -> None:
    (gbatch.manifests / "docs").mkdir()
    (gbatch.manifests / "docs" / "guide.md").write_text(GUIDE)
    gbatch.write("copy.yaml", CACHED)
    result = gbatch("plan", "manifests")
    assert result.code == 0, result.err
    storage = re.search(
        r"cache storage: ([\d,]+) tokens for 48 h at \$1\.00 per 1M tokens per hour: \$([\d.]+)",
        result.out,
    )
    assert storage, result.out
    tokens, usd = int(storage[1].replace(",", "")), float(storage[2])
    assert tokens > 1000
    assert usd == pytest.approx(tokens * 48 * 1.00 / 1e6, abs=1e-4)
    total = re.search(r"cost \$([\d.]+) at batch price \(requests \$([\d.]+) \+ cache", result.out)
    assert total, result.out
    assert float(total[1]) == pytest.approx(float(total[2]) + usd, abs=2e-4)


def test_the_ingested_cost_is_the_one_cost_definition(gbatch: Gbatch, emulator: Emulator) -> None:
    # A cached, search-grounded row has every kind of billed token: uncached prompt, cache
    # hits, tool-use prompt, candidates and thoughts.
    (gbatch.manifests / "docs").mkdir()
    (gbatch.manifests / "docs" / "guide.md").write_text(GUIDE)
    gbatch.write("copy.yaml", CACHED)
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    price = load_prices().for_model("gemini-2.5-flash")
    assert price is not None
    rows = gbatch.sql("select cost_usd, response from copy")
    assert len(rows) == 3
    for cost, response in rows:
        usage = json.loads(str(response))["usageMetadata"]
        assert usage["toolUsePromptTokenCount"] and usage["cachedContentTokenCount"]
        assert cost == pytest.approx(price.cost(usage), rel=1e-12)
