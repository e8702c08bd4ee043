"""The versioned price table: USD per million tokens, per provider and model, by effective date.

Shipped in ``worker/data/prices.json``; ``BYOK_PRICES_FILE`` replaces it as a whole. A call is priced
with the entry in effect on the UTC day it happened. Cache reads and cache writes have their own prices where
the provider bills them apart (Anthropic's cache writes cost more than input, its reads a tenth); reasoning
tokens are billed at the ``reasoning`` price, which defaults to the output price (no provider of the four
prices them apart today).
A model without an entry in effect has no price: it is reported as unpriced, never as $0.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from schemas.models import Provider
from worker.aggregator.records import Counters

ANY_MODEL = "*"
PER_TOKENS = 1_000_000

UsdPerMillion = Annotated[float, Field(ge=0)]


class PriceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Provider
    model: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    aliases: tuple[str, ...] = ()
    effective_from: date
    input: UsdPerMillion
    cache_read: UsdPerMillion | None = Field(default=None, description="defaults to the input price")
    cache_write: UsdPerMillion | None = Field(default=None, description="defaults to the input price")
    output: UsdPerMillion
    reasoning: UsdPerMillion | None = Field(default=None, description="defaults to the output price")
    source: Annotated[str, StringConstraints(min_length=1)]
    notes: str | None = None

    @property
    def cache_read_price(self) -> float:
        return self.input if self.cache_read is None else self.cache_read

    @property
    def cache_write_price(self) -> float:
        return self.input if self.cache_write is None else self.cache_write

    @property
    def reasoning_price(self) -> float:
        return self.output if self.reasoning is None else self.reasoning

    def cost(self, counters: Counters) -> float:
        """Estimated USD for these counters."""
        micro = (
            counters.input_tokens * self.input
            + counters.cache_read_tokens * self.cache_read_price
            + counters.cache_write_tokens * self.cache_write_price
            + counters.output_tokens * self.output
            + counters.reasoning_tokens * self.reasoning_price
        )
        return micro / PER_TOKENS

    def uncached_cost(self, counters: Counters) -> float:
        """What the same tokens would cost with no prompt caching: cache reads and writes as plain input."""
        return self.cost(replace(
            counters, input_tokens=counters.input_tokens + counters.cache_read_tokens + counters.cache_write_tokens,
            cache_read_tokens=0, cache_write_tokens=0,
        ))


class PriceFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    currency: Literal["USD"] = "USD"
    unit: Literal["per_million_tokens"] = "per_million_tokens"
    notes: str | None = None
    prices: tuple[PriceEntry, ...]

    @model_validator(mode="after")
    def _no_duplicates(self) -> PriceFile:
        seen: set[tuple[str, str, date]] = set()
        for entry in self.prices:
            for name in (entry.model, *entry.aliases):
                key = (entry.provider.value, name, entry.effective_from)
                if key in seen:
                    raise ValueError(f"two prices for {key[0]}/{name} from {entry.effective_from}")
                seen.add(key)
        return self


@dataclass(frozen=True, slots=True)
class _Timeline:
    starts: tuple[date, ...]
    entries: tuple[PriceEntry, ...]

    def at(self, day: date) -> PriceEntry | None:
        index = bisect.bisect_right(self.starts, day) - 1
        return self.entries[index] if index >= 0 else None


class PriceTable:
    def __init__(self, file: PriceFile, origin: str) -> None:
        self.file = file
        self.origin = origin
        grouped: dict[tuple[str, str], list[PriceEntry]] = {}
        for entry in file.prices:
            for name in (entry.model, *entry.aliases):
                grouped.setdefault((entry.provider.value, name), []).append(entry)
        self._timelines = {
            key: _Timeline(tuple(e.effective_from for e in ordered), tuple(ordered))
            for key, entries in grouped.items()
            for ordered in [sorted(entries, key=lambda e: e.effective_from)]
        }

    @property
    def version(self) -> str:
        return self.file.version

    def price(self, provider: str, model: str, day: date) -> PriceEntry | None:
        """The entry in effect on ``day``: the model's own (or an alias'), else the provider's ``*``."""
        timeline = self._timelines.get((provider, model)) or self._timelines.get((provider, ANY_MODEL))
        return timeline.at(day) if timeline is not None else None

    def cost(self, provider: str, model: str, day: date, counters: Counters) -> float | None:
        entry = self.price(provider, model, day)
        return entry.cost(counters) if entry is not None else None

    def models_of(self, provider: str, day: date) -> list[tuple[str, PriceEntry]]:
        """Every named model of ``provider`` with a price in effect on ``day`` (by its own name, not an alias;
        the provider's ``*`` entry is no model), sorted by name."""
        found: dict[str, PriceEntry] = {}
        for entry in self.file.prices:
            if entry.provider.value != provider or entry.model == ANY_MODEL or entry.model in found:
                continue
            current = self.price(provider, entry.model, day)
            if current is not None:
                found[entry.model] = current
        return sorted(found.items())


def default_prices_path() -> str:
    return str(resources.files("worker").joinpath("data", "prices.json"))


class PriceTableError(ValueError):
    """A price table that cannot be used; the message names the file and the fields, never their contents."""


def load_prices(path: str | None = None) -> PriceTable:
    """The table at ``path`` (``BYOK_PRICES_FILE``), else the one shipped with the package."""
    origin = path or default_prices_path()
    try:
        return PriceTable(PriceFile.model_validate_json(Path(origin).read_bytes()), origin)
    except ValidationError as exc:
        # Never pydantic's own text: it quotes the input, and a file set by mistake may hold anything (a key…).
        raise PriceTableError(f"price table {origin}: {_problems(exc)}") from None


def _problems(exc: ValidationError) -> str:
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    if any(error["type"] == "json_invalid" for error in errors):
        return "not JSON"
    return "; ".join(f"{'.'.join(map(str, error['loc'])) or 'the table'}: {error['msg']}" for error in errors)
