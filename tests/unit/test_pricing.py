"""Prices: the shipped table, overrides, prefix matching and the cost formula."""

from pathlib import Path

import pytest

from runner.core.pricing import Price, load_prices


def test_cost_bills_cached_tokens_at_the_cached_rate_and_thoughts_as_output() -> None:
    price = Price(input=0.15, cached_input=0.0375, output=1.25)
    cost = price.cost(prompt=1_000, cached=400, output=200, thoughts=50)
    assert cost == pytest.approx((600 * 0.15 + 400 * 0.0375 + 250 * 1.25) / 1_000_000)


def test_versioned_model_ids_use_the_longest_known_prefix() -> None:
    table = load_prices()
    assert (
        table.for_model("models/gemini-2.5-flash-lite-001") == table.models["gemini-2.5-flash-lite"]
    )
    assert table.for_model("gemini-2.5-flash-002") == table.models["gemini-2.5-flash"]
    assert table.for_model("some-other-model") is None


def test_an_override_file_replaces_only_the_models_it_names(tmp_path: Path) -> None:
    override = tmp_path / "prices.toml"
    override.write_text('[models."gemini-2.5-flash"]\ninput = 1.0\noutput = 2.0\n')
    table = load_prices(override)
    assert table.models["gemini-2.5-flash"] == Price(input=1.0, cached_input=1.0, output=2.0)
    assert table.models["gemini-2.5-pro"] == load_prices().models["gemini-2.5-pro"]
