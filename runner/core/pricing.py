"""Batch prices per model and the cost of a request from its usage counts.

The table ships as ``runner/data/prices.toml`` and is data, not code: users override it with
their own file (settings ``prices_file``). Called by the planner (estimates), the results
ingest (``cost_usd`` per row, computed in SQL from :func:`cost_sql`) and ``status``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

PER = 1_000_000


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens at batch price."""

    input: float
    cached_input: float
    output: float

    def cost(self, *, prompt: int, cached: int = 0, output: int = 0, thoughts: int = 0) -> float:
        """Cost of one request. ``prompt`` includes ``cached`` (as usageMetadata counts it)."""
        uncached = max(prompt - cached, 0)
        return (
            uncached * self.input + cached * self.cached_input + (output + thoughts) * self.output
        ) / PER


@dataclass(frozen=True)
class PriceTable:
    models: dict[str, Price]

    def for_model(self, model: str) -> Price | None:
        """The price of ``model`` (exact id, else the longest known prefix); None if unknown."""
        model = model.removeprefix("models/")
        if model in self.models:
            return self.models[model]
        prefixes = [key for key in self.models if model.startswith(key)]
        return self.models[max(prefixes, key=len)] if prefixes else None


def load_prices(override: Path | None = None) -> PriceTable:
    """The shipped table, with every model in ``override`` (same TOML shape) replacing it."""
    shipped = resources.files("runner").joinpath("data/prices.toml").read_text()
    models = _parse(tomllib.loads(shipped))
    if override is not None:
        models.update(_parse(tomllib.loads(override.read_text())))
    return PriceTable(models=models)


def _parse(document: dict[str, object]) -> dict[str, Price]:
    raw = document.get("models", {})
    if not isinstance(raw, dict):
        raise ValueError("prices file: [models] must be a table")
    return {
        name: Price(
            input=float(entry["input"]),
            cached_input=float(entry.get("cached_input", entry["input"])),
            output=float(entry["output"]),
        )
        for name, entry in raw.items()
    }
