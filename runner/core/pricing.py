"""Batch prices per model and the one definition of what a request costs.

The table ships as ``runner/data/prices.toml`` and is data, not code: users override it with
their own file (settings ``prices_file``, env ``GBATCH_PRICES_FILE``). The cost of a request is
written once, as :data:`TERMS` (which usage count is billed at which rate) plus the prompt-size
tier; :meth:`Price.cost` evaluates it in Python (plan estimates) and :meth:`Price.cost_sql`
renders the same terms as the DuckDB expression the results ingest computes ``cost_usd`` with,
so the two cannot disagree. Loaded by the CLI's runtime; called by the planner (estimates and
cache storage) and the results ingest.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from runner.errors import GbatchError

PER = 1_000_000  # prices are USD per 1M tokens
LONG_ABOVE = 200_000  # the Pro models' higher tier: "prompts > 200k tokens" (pricing page)
TIER_FIELD = "promptTokenCount"  # the prompt size that picks the tier (cached tokens included)

RateName = Literal["input", "cached_input", "output"]


@dataclass(frozen=True)
class Term:
    """``tokens`` (less ``minus``, never below zero) of a usageMetadata block, at ``rate``."""

    rate: RateName
    tokens: str
    minus: str | None = None


# What a request is billed for, by the usageMetadata counts (ai.google.dev/api/generate-content):
# promptTokenCount includes the cache hits, which are billed at the cached rate instead; the
# tool-use prompt (search results, code-execution output fed back to the model) is outside
# promptTokenCount but inside totalTokenCount and billed as input; thoughts are billed as
# output ("Output price (including thinking tokens)").
TERMS = (
    Term("input", "promptTokenCount", minus="cachedContentTokenCount"),
    Term("input", "toolUsePromptTokenCount"),
    Term("cached_input", "cachedContentTokenCount"),
    Term("output", "candidatesTokenCount"),
    Term("output", "thoughtsTokenCount"),
)


class PricesFileError(GbatchError):
    """A prices file (shipped or ``GBATCH_PRICES_FILE``) is not valid TOML of the known shape."""


@dataclass(frozen=True)
class Rates:
    """USD per 1M tokens: uncached input, cache hits, output."""

    input: float
    cached_input: float
    output: float

    def of(self, name: RateName) -> float:
        return {"input": self.input, "cached_input": self.cached_input, "output": self.output}[name]


@dataclass(frozen=True)
class Price:
    """A model's batch price: USD per 1M tokens, ``long`` for a prompt over ``long_above``.

    Per the pricing page the tier is decided by the request's prompt size and then applies to
    the whole request (input, cache hits and output). ``cache_storage`` is USD per 1M cached
    tokens per hour; None where no rate is known.
    """

    input: float
    cached_input: float
    output: float
    long: Rates | None = None
    long_above: int = LONG_ABOVE
    cache_storage: float | None = None
    as_of: str | None = None
    source: str | None = None

    @property
    def base(self) -> Rates:
        return Rates(input=self.input, cached_input=self.cached_input, output=self.output)

    def rates(self, prompt_tokens: float) -> Rates:
        """The rates of a request whose prompt has ``prompt_tokens`` tokens."""
        return self.long if self.long is not None and prompt_tokens > self.long_above else self.base

    def cost(self, usage: Mapping[str, float | None]) -> float:
        """USD for one request, from its usageMetadata counts (absent counts are zero)."""

        def count(field: str | None) -> float:
            return (usage.get(field) or 0) if field else 0

        rates = self.rates(count(TIER_FIELD))
        total = 0.0
        for term in TERMS:
            tokens = count(term.tokens)
            if term.minus:
                tokens = max(tokens - count(term.minus), 0)
            total += tokens * rates.of(term.rate)
        return total / PER

    def cost_sql(self, usage: str) -> str:
        """:meth:`cost` as a DuckDB expression over ``usage``, a usageMetadata struct column."""

        def count(field: str) -> str:
            return f"coalesce({usage}.{field}, 0)"

        def summed(rates: Rates) -> str:
            parts = []
            for term in TERMS:
                tokens = count(term.tokens)
                if term.minus:
                    tokens = f"greatest({tokens} - {count(term.minus)}, 0)"
                parts.append(f"{tokens} * {float(rates.of(term.rate))!r}::double")
            return " + ".join(parts)

        if self.long is None:
            return f"(({summed(self.base)}) / {float(PER)!r})"
        return (
            f"((case when {count(TIER_FIELD)} > {int(self.long_above)} "
            f"then {summed(self.long)} else {summed(self.base)} end) / {float(PER)!r})"
        )

    def storage(self, *, tokens: int, hours: float) -> Storage:
        """What keeping a context cache of ``tokens`` for ``hours`` costs at this price."""
        return Storage(tokens=tokens, hours=hours, rate=self.cache_storage)


@dataclass(frozen=True)
class Storage:
    """A context cache of ``tokens`` kept for ``hours`` at ``rate`` USD per 1M tokens per hour.

    The caching docs bill storage "based on the TTL duration of cached token count".
    """

    tokens: int
    hours: float
    rate: float | None  # None: no storage price known

    @property
    def usd(self) -> float | None:
        return None if self.rate is None else self.tokens * self.hours * self.rate / PER


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
    models = _parse(shipped, "runner/data/prices.toml")
    if override is not None:
        try:
            text = override.read_text()
        except OSError as exc:
            raise PricesFileError(f"prices file {override}: {exc.strerror or exc}") from exc
        models.update(_parse(text, str(override)))
    return PriceTable(models=models)


def _parse(text: str, name: str) -> dict[str, Price]:
    """The ``[models."<id>"]`` tables of a prices file; the keys are described in prices.toml."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PricesFileError(f"prices file {name}: {exc}") from exc
    raw = document.get("models", {})
    if not isinstance(raw, dict):
        raise PricesFileError(f"prices file {name}: [models] must be a table")
    models = {}
    for model, entry in raw.items():
        try:
            models[model] = _price(entry)
        except (KeyError, TypeError, ValueError) as exc:
            raise PricesFileError(
                f'prices file {name}: [models."{model}"]: {_reason(exc)} (input and output are '
                "required, in USD per 1M tokens)"
            ) from exc
    return models


def _price(entry: dict[str, object]) -> Price:
    def rate(key: str, default: float | None = None) -> float:
        value = entry.get(key, default)
        if value is None:
            raise KeyError(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key} must be a number")
        return float(value)

    def text(key: str) -> str | None:
        value = entry.get(key)
        return None if value is None else str(value)  # a TOML date reads as datetime.date

    base = Rates(
        input=rate("input"), cached_input=rate("cached_input", rate("input")), output=rate("output")
    )
    tiered = any(k in entry for k in ("input_long", "cached_input_long", "output_long"))
    long = (
        Rates(
            input=rate("input_long", base.input),
            cached_input=rate("cached_input_long", base.cached_input),
            output=rate("output_long", base.output),
        )
        if tiered
        else None
    )
    storage = entry.get("cache_storage")
    return Price(
        input=base.input,
        cached_input=base.cached_input,
        output=base.output,
        long=long,
        long_above=int(rate("long_above", LONG_ABOVE)),
        cache_storage=None if storage is None else rate("cache_storage"),
        as_of=text("as_of"),
        source=text("source"),
    )


def _reason(exc: Exception) -> str:
    return f"{exc.args[0]} is missing" if isinstance(exc, KeyError) else str(exc)
