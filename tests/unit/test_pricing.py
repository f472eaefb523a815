"""Prices: the shipped table, overrides, prefix matching, and the one cost definition.

The cost of a request is written once (``runner.core.pricing.TERMS`` plus the prompt-size
tier); ``Price.cost`` evaluates it in Python (plan estimates) and ``Price.cost_sql`` renders it
as the DuckDB expression the results ingest runs. The pin below evaluates both on usage blocks
recorded from the real API and compares them with a sum written out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from runner.adapters.results import RESPONSE
from runner.core.pricing import Price, PricesFileError, Rates, load_prices

SHIPPED = load_prices()

# Recorded usageMetadata blocks, copied from the saved cell outputs of google-gemini/cookbook
# (snapshot of 2026-08-07, commit f1e7e3de), all answered by gemini-2.5-flash.
# quickstarts/Batch_mode.ipynb, cell "cvpNS7r4Tt7Y" (the downloaded result file), request_1:
BATCH_REQUEST_1 = {
    "promptTokenCount": 8,
    "candidatesTokenCount": 11,
    "thoughtsTokenCount": 829,
    "totalTokenCount": 848,
}
# ... and request_2 of the same cell:
BATCH_REQUEST_2 = {
    "promptTokenCount": 9,
    "candidatesTokenCount": 63,
    "thoughtsTokenCount": 1180,
    "totalTokenCount": 1252,
}
# quickstarts/Caching.ipynb, cell "MLFd8DFZ29lC": a 322,698-token cache of the Apollo 11
# transcript, so the prompt is over 200k tokens.
CACHED_322K = {
    "promptTokenCount": 322707,
    "cachedContentTokenCount": 322698,
    "candidatesTokenCount": 282,
    "thoughtsTokenCount": 4049,
    "totalTokenCount": 327038,
}
# ... and cell "SB5Ywx2D6cOn" (the second question of the chat on the same cache):
CACHED_322K_CHAT = {
    "promptTokenCount": 322795,
    "cachedContentTokenCount": 322698,
    "candidatesTokenCount": 239,
    "thoughtsTokenCount": 902,
    "totalTokenCount": 323936,
}
# No cookbook recording carries a tool-use count, so this block is built to the shape the API
# reference gives (toolUsePromptTokenCount is outside promptTokenCount, inside the total:
# total = prompt + candidates + toolUsePrompt + thoughts), with a cache and search grounding.
TOOL_USE = {
    "promptTokenCount": 1340,
    "cachedContentTokenCount": 1300,
    "candidatesTokenCount": 20,
    "thoughtsTokenCount": 15,
    "toolUsePromptTokenCount": 12,
    "totalTokenCount": 1387,
}

# (model, usage, the cost written out by hand from the shipped batch rates, USD per 1M:
#  2.5 Flash: input 0.15, cache hits 0.03 (the interactive rate), output 1.25;
#  2.5 Pro over 200k: input 1.25, cache hits 0.25, output 7.50)
PINNED = [
    ("gemini-2.5-flash", BATCH_REQUEST_1, (8 * 0.15 + (11 + 829) * 1.25) / 1e6),
    ("gemini-2.5-flash", BATCH_REQUEST_2, (9 * 0.15 + (63 + 1180) * 1.25) / 1e6),
    (
        "gemini-2.5-flash",
        CACHED_322K,
        ((322707 - 322698) * 0.15 + 322698 * 0.03 + (282 + 4049) * 1.25) / 1e6,
    ),
    # the same recorded counts at 2.5 Pro's price: the whole request is in the >200k tier
    (
        "gemini-2.5-pro",
        CACHED_322K,
        ((322707 - 322698) * 1.25 + 322698 * 0.25 + (282 + 4049) * 7.50) / 1e6,
    ),
    (
        "gemini-2.5-pro",
        CACHED_322K_CHAT,
        ((322795 - 322698) * 1.25 + 322698 * 0.25 + (239 + 902) * 7.50) / 1e6,
    ),
    # tool-use prompt tokens are billed as input, like the uncached prompt
    (
        "gemini-2.5-flash",
        TOOL_USE,
        ((1340 - 1300 + 12) * 0.15 + 1300 * 0.03 + (20 + 15) * 1.25) / 1e6,
    ),
]


def sql_cost(price: Price, usage: dict[str, Any]) -> float:
    """The generated expression, run by DuckDB over the struct the results ingest parses."""
    line = json.dumps({"usageMetadata": usage})
    con = duckdb.connect()
    try:
        row = con.execute(
            f"select {price.cost_sql('u')} from "
            "(select (from_json(?::json, ?)).usageMetadata as u)",
            [line, RESPONSE],
        ).fetchone()
    finally:
        con.close()
    assert row is not None
    return float(row[0])


@pytest.mark.parametrize(("model", "usage", "by_hand"), PINNED)
def test_python_and_sql_costs_are_one_definition(
    model: str, usage: dict[str, Any], by_hand: float
) -> None:
    price = SHIPPED.for_model(model)
    assert price is not None
    assert price.cost(usage) == pytest.approx(by_hand, rel=1e-12)
    assert sql_cost(price, usage) == pytest.approx(by_hand, rel=1e-12)


def test_the_tier_is_chosen_by_the_prompt_size_in_both_forms() -> None:
    price = Price(
        input=1.0,
        cached_input=0.5,
        output=2.0,
        long=Rates(input=10.0, cached_input=5.0, output=20.0),
    )
    at_limit = {"promptTokenCount": 200_000, "candidatesTokenCount": 1_000}
    over = {"promptTokenCount": 200_001, "candidatesTokenCount": 1_000}
    assert price.cost(at_limit) == pytest.approx((200_000 * 1.0 + 1_000 * 2.0) / 1e6)
    assert price.cost(over) == pytest.approx((200_001 * 10.0 + 1_000 * 20.0) / 1e6)
    for usage in (at_limit, over):
        assert sql_cost(price, usage) == pytest.approx(price.cost(usage), rel=1e-12)


def test_a_line_without_usage_costs_nothing_in_both_forms() -> None:
    price = SHIPPED.for_model("gemini-2.5-pro")
    assert price is not None
    assert price.cost({}) == 0.0
    assert sql_cost(price, {}) == 0.0


def test_batch_cache_hits_cost_what_interactive_cache_hits_cost() -> None:
    # batch-mode docs: "If a request in your batch results in a cache hit, the cached tokens
    # are priced the same as for non-batch API traffic." Interactive context caching prices
    # of the pricing page (2026-03-30): 2.5 Flash 0.03, 2.5 Pro 0.125 / 0.25 over 200k.
    flash = SHIPPED.models["gemini-2.5-flash"]
    pro = SHIPPED.models["gemini-2.5-pro"]
    assert (flash.input, flash.cached_input, flash.output) == (0.15, 0.03, 1.25)
    assert (pro.input, pro.cached_input, pro.output) == (0.625, 0.125, 5.00)
    assert pro.long == Rates(input=1.25, cached_input=0.25, output=7.50)


def test_the_table_prices_the_current_families_with_their_date_and_source() -> None:
    for model in (
        "gemini-3.1-pro-preview",
        "gemini-3.1-pro-preview-customtools",
        "gemini-3-pro-preview",
        "gemini-3-flash-preview",
        "gemini-3.1-flash-lite-preview",
        "gemini-3.1-flash-lite",
        "gemini-embedding-001",
    ):
        assert SHIPPED.for_model(model) is not None, model
    for name, price in SHIPPED.models.items():
        assert price.as_of and price.source and price.source.startswith("https://"), name
    for name in ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-3.1-pro-preview"):
        assert SHIPPED.models[name].cache_storage, name  # USD per 1M tokens per hour


def test_cache_storage_costs_tokens_times_hours_times_the_hourly_rate() -> None:
    flash = SHIPPED.models["gemini-2.5-flash"]
    assert flash.cache_storage == 1.00  # USD per 1M tokens per hour
    assert flash.storage(tokens=322_698, hours=2.0).usd == pytest.approx(322_698 * 2.0 * 1.00 / 1e6)
    assert Price(input=1.0, cached_input=1.0, output=1.0).storage(tokens=1, hours=1).usd is None


def test_versioned_model_ids_use_the_longest_known_prefix() -> None:
    table = load_prices()
    assert (
        table.for_model("models/gemini-2.5-flash-lite-001") == table.models["gemini-2.5-flash-lite"]
    )
    assert table.for_model("gemini-2.5-flash-002") == table.models["gemini-2.5-flash"]
    assert table.for_model("some-other-model") is None


def test_an_override_file_of_the_old_shape_replaces_only_the_models_it_names(
    tmp_path: Path,
) -> None:
    override = tmp_path / "prices.toml"
    override.write_text('[models."gemini-2.5-flash"]\ninput = 1.0\noutput = 2.0\n')
    table = load_prices(override)
    assert table.models["gemini-2.5-flash"] == Price(input=1.0, cached_input=1.0, output=2.0)
    assert table.models["gemini-2.5-pro"] == load_prices().models["gemini-2.5-pro"]


def test_an_override_file_can_give_the_tier_and_the_storage_rate(tmp_path: Path) -> None:
    override = tmp_path / "prices.toml"
    override.write_text(
        '[models."acme-llm"]\ninput = 1.0\ncached_input = 0.25\noutput = 4.0\n'
        "input_long = 2.0\noutput_long = 6.0\nlong_above = 100000\ncache_storage = 3.0\n"
        'as_of = "2026-08-01"\nsource = "https://example.com/prices"\n'
    )
    price = load_prices(override).for_model("acme-llm-2")
    assert price == Price(
        input=1.0,
        cached_input=0.25,
        output=4.0,
        long=Rates(input=2.0, cached_input=0.25, output=6.0),
        long_above=100_000,
        cache_storage=3.0,
        as_of="2026-08-01",
        source="https://example.com/prices",
    )


def test_a_broken_override_file_is_refused_with_its_name(tmp_path: Path) -> None:
    override = tmp_path / "prices.toml"
    override.write_text('[models."acme-llm"]\ninput = 1.0\n')
    with pytest.raises(PricesFileError, match=r"prices\.toml.*acme-llm.*output"):
        load_prices(override)
    override.write_text("[models\n")
    with pytest.raises(PricesFileError, match=r"prices\.toml"):
        load_prices(override)
