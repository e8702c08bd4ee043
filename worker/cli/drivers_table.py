"""``byok consumption <ws> --drivers``: the drivers report as plain-text tables (the JSON is the API's)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _usd(value: float | None) -> str:
    return "unpriced" if value is None else f"{value:,.6f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: Sequence[int] = (0,)) -> list[str]:
    """Text columns (by index) to the left, numbers to the right."""
    table = [list(header), *map(list, rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i in text_columns else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()

    return [fmt(table[0]), "  ".join("-" * w for w in widths), *(fmt(line) for line in table[1:])]


def _name(automation_id: str | None) -> str:
    return "-" if automation_id is None else automation_id


def _automations(result: dict[str, Any]) -> list[str]:
    rows = [
        [
            _name(a["automation_id"]), f"{a['requests']:,}", _usd(a["cost_usd"]), _percent(a["cost_share"]),
            f"{a['input_tokens']:,}", _percent(a["system_prompt_share"]),
            f"{a['system_prompts']['distinct']}/{a['system_prompts']['top_calls']}",
            _percent(a["cache"]["read_share"]), _usd(a["cache"]["saved_usd"]), _usd(a["cache"]["open_saving_usd"]),
        ]
        for a in result["automations"]
    ]
    header = ["automation", "requests", "cost (USD)", "share", "input tokens", "system prompt~",
              "prompts/top calls", "cache read", "cache saved~", "open saving~"]
    return _table(header, rows)


def _runs(result: dict[str, Any], run_tag: str) -> list[str]:
    with_runs = [a for a in result["automations"] if a["runs"] is not None]
    if not with_runs:
        return [f"No calls carry the run tag {run_tag!r}."]
    rows = []
    for a in with_runs:
        runs, calls, cost = a["runs"], a["runs"]["calls_per_run"], a["runs"]["cost_per_run_usd"]
        rows.append([_name(a["automation_id"]), f"{runs['count']:,}", str(calls["p50"]), str(calls["p95"]),
                     str(calls["max"]), _usd(cost["p50"]), _usd(cost["p95"]), _usd(cost["max"])])
    header = ["automation", "runs", "calls p50", "calls p95", "calls max", "cost p50", "cost p95", "cost max"]
    top = [[_name(a["automation_id"]), run["run"], f"{run['calls']:,}", _usd(run["cost_usd"])]
           for a in with_runs for run in a["runs"]["top"]]
    return [f"Agent runs (tag {run_tag!r}; per run, nearest-rank percentiles):", *_table(header, rows), "",
            "Costliest runs:", *_table(["automation", "run", "calls", "cost (USD)"], top, text_columns=(0, 1))]


def _models(result: dict[str, Any]) -> list[str]:
    rows = [
        [m["provider"], m["model"], f"{m['requests']:,}", _usd(m["cost_usd"]),
         m["cheapest"]["model"] if m["cheapest"] else "-",
         _usd(m["cheapest"]["cost_usd"]) if m["cheapest"] else "-"]
        for m in result["models"]
    ]
    header = ["provider", "model", "requests", "cost (USD)", "cheapest same provider~", "same tokens (USD)~"]
    return _table(header, rows, text_columns=(0, 1, 4))


def render_drivers(result: dict[str, Any], run_tag: str) -> str:
    out = [
        f"workspace {result['workspace_id']}  since {result['since'] or '-'}  until {result['until'] or '-'}  "
        f"total {_usd(result['total_cost_usd'])} USD (estimate)",
        "",
        "By automation, costliest first:",
        *_automations(result),
        "",
        *_runs(result, run_tag),
        "",
        "By model:",
        *_models(result),
        "",
        f"Costs are estimates from price table {result['prices_as_of']} (list prices, USD). Columns marked ~ are "
        "estimates: system prompt~ is the share of input tokens",
        "estimated from the system prompt's characters; cache saved~ is net of cache-write premiums; open saving~ is "
        "what caching the repeated system prompt",
        "would still save; cheapest~ prices the same tokens on the provider's cheapest model (price only, not "
        "quality). prompts/top calls: distinct system prompts",
        "and the calls of the most used one. Each call counts once in every grouping, whatever its tags.",
    ]
    return "\n".join(out)
