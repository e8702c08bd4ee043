"""What the budget tests share: a price table whose bound is tight for the simulator, jobs, the ledger priced."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from worker.aggregator.pricing import PriceTable, load_prices
from worker.aggregator.records import Counters
from worker.testing.simulator import ProviderSimulator

MODEL = "gpt-4o-mini"
# The simulator bills one input token per word, the worker's bound counts bytes (and overheads): with input
# nearly free and output dear, the worst case of a call is within ~2 % of what it is billed, so a budget can
# be filled to > 90 % while every reservation stays a true upper bound. The prices are the test's own.
PRICES: dict[str, Any] = {
    "version": "budget-test-1",
    "prices": [
        {"provider": "openai", "model": MODEL, "effective_from": "2020-01-01", "input": 0.01, "output": 10.0,
         "source": "test: output-dominated, so the bound is tight"},
        {"provider": "ollama", "model": "*", "effective_from": "2020-01-01", "input": 0, "output": 0,
         "source": "test"},
    ],
}
CONTENT = "x x x x x x x x x x"
"""Ten words: the simulator answers ``sim: `` and them (eleven words), cut to ``MAX_TOKENS``."""
MAX_TOKENS = 8


def write_prices(path: Path) -> str:
    path.write_bytes(orjson.dumps(PRICES))
    return str(path)


def job(job_id: str, workspace_id: str, model: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({
        "job_id": job_id, "workspace_id": workspace_id, "model": model,
        "input": {"messages": [{"role": "user", "content": CONTENT}], "max_tokens": MAX_TOKENS}, **extra,
    })


def billed_usd(simulator: ProviderSimulator, prices: PriceTable | str) -> float:
    """What the provider billed, priced with the table: the figure a block budget must never be below."""
    table = load_prices(prices) if isinstance(prices, str) else prices
    today = datetime.now(UTC).date()
    total = 0.0
    for call in simulator.ledger.billed():
        assert call.usage is not None
        cost = table.cost(call.protocol.value, call.model, today, Counters(0, 0, **call.usage.model_dump()))
        assert cost is not None, f"{call.model} has no price"
        total += cost
    return total
