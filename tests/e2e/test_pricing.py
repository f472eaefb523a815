"""Money through the CLI: a cap that cannot be checked blocks, cache storage is in the plan, and
the ingested cost_usd is the one cost definition of runner.core.pricing."""

from __future__ import annotations

import json
import re
from pathlib import Path

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


def test_apply_refuses_a_cost_cap_it_cannot_check_until_a_price_is_supplied(
    gbatch: Gbatch, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gbatch.write("capped.yaml", UNPRICED)
    result = gbatch("apply", "manifests")
    assert result.code == 1, result.out + result.err
    assert "no price known for acme-llm-1" in result.out
    assert "GBATCH_PRICES_FILE" in result.out  # says how to supply one
    assert emulator.count("batches.create") == 0
    assert emulator.count("files.upload") == 0
    assert "blocked" in gbatch("status").out

    prices = tmp_path / "my-prices.toml"
    prices.write_text('[models."acme-llm-1"]\ninput = 0.10\noutput = 0.40\n')
    monkeypatch.setenv("GBATCH_PRICES_FILE", str(prices))
    again = gbatch("apply", "manifests", "--wait")
    assert again.code == 0, again.out + again.err
    assert emulator.count("batches.create") == 1
    assert gbatch.sql("select count(*), min(cost_usd) > 0 from capped") == [(2, True)]


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


def test_a_cap_is_refused_when_the_cache_storage_price_is_unknown(
    gbatch: Gbatch, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an override in the original three-key shape prices tokens but not cache storage
    prices = tmp_path / "old-shape.toml"
    prices.write_text(
        '[models."gemini-2.5-flash"]\ninput = 0.15\ncached_input = 0.03\noutput = 1.25\n'
    )
    monkeypatch.setenv("GBATCH_PRICES_FILE", str(prices))
    (gbatch.manifests / "docs").mkdir()
    (gbatch.manifests / "docs" / "guide.md").write_text(GUIDE)
    gbatch.write("copy.yaml", CACHED + "policy: {max_cost_usd: 5}\n")
    result = gbatch("apply", "manifests")
    assert result.code == 1, result.out + result.err
    assert "no cache storage price known for gemini-2.5-flash" in result.out
    assert "at unknown rate: unknown" in result.out
    assert emulator.count("caches.create") == 0 and emulator.count("batches.create") == 0
