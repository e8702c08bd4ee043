"""Budgets and cost drivers on the consumption page, in headless Chromium: each budget's spent, reserved and
limit as a bar (with the table behind it), when it resets and its cap on calls in flight; the automations
ranked by cost with their drivers and the cheaper-model comparison; the price table's date on every section
of estimates; no console error; axe-core with all of it filled in.

Every expected figure is worked out twice: from the API's answer (what the page must show, formatted as the
page formats it) and from what ``seed.py`` put in (what the API must answer), never read off the page.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from playwright.async_api import Locator, Page, expect

from schemas.models import UsageEvent
from tests.browser.conftest import AXE_VERSION, DESKTOP, PHONE, BudgetStack
from tests.browser.seed import (
    AGENT,
    AGENT_CACHED,
    AGENT_INPUT,
    AGENT_MODEL,
    INPUT_CHARS,
    RUN_SIZES,
    SYSTEM_CHARS,
)
from tests.browser.test_accessibility import axe_violations, describe
from tests.browser.test_page import shown_range, sign_in
from worker.aggregator.pricing import PriceTable
from worker.aggregator.records import Counters

# ------------------------------------------------------------------ the page's number formats, in Python

NOTHING = "\u2013"  # the en dash the page shows where a figure has no value


def usd(value: float | None) -> str:
    """app.js ``usd``: Intl.NumberFormat en-US currency, which rounds the shortest decimal form half up."""
    if value is None:
        return "unpriced"
    magnitude = abs(value)
    digits = 2 if magnitude == 0 else 6 if magnitude < 0.01 else 4 if magnitude < 1 else 2
    rounded = Decimal(repr(value)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{'-' if rounded < 0 else ''}${abs(rounded):,.{digits}f}"


def fixed(value: float, digits: int) -> str:
    """``Number.prototype.toFixed``: the exact binary value, a tie to the larger."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def percent(share: float | None) -> str:
    return NOTHING if share is None else f"{fixed(share * 100, 1)}%"


def count(value: int | float) -> str:
    return f"{value:,}"


def utc_minute(iso: str) -> str:
    return f"{iso[:16].replace('T', ' ')} UTC"


# ------------------------------------------------------------------ what the seeds add up to


def cost_of(event: UsageEvent, prices: PriceTable) -> float:
    counters = Counters(0, 0, event.input_tokens, event.cache_read_tokens, event.cache_write_tokens,
                        event.output_tokens, event.reasoning_tokens)
    cost = prices.cost(event.provider.value, event.model, event.occurred_at.date(), counters)
    assert cost is not None, f"{event.model} has no price"
    return cost


def acme_events(stack: BudgetStack) -> list[UsageEvent]:
    return [e for e in (*stack.seeded.usage, *stack.drivers.usage) if e.workspace_id == "acme"]


def within(events: Iterable[UsageEvent], since: datetime, until: datetime) -> list[UsageEvent]:
    return [e for e in events if since <= e.occurred_at < until]


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """A UTC calendar day or month around ``now``, worked out here, not with ``worker.budgets.rules``."""
    if period == "day":
        start = datetime(now.year, now.month, now.day, tzinfo=UTC)
        return start, start + timedelta(days=1)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    following = datetime(now.year + 1, 1, 1, tzinfo=UTC) if now.month == 12 else \
        datetime(now.year, now.month + 1, 1, tzinfo=UTC)
    return start, following


def expected_budgets(stack: BudgetStack) -> list[dict[str, Any]]:
    """Each budget PUT by the seed, with what its period holds: the seeded calls' cost since the period began,
    the worst case of the calls held in flight in its scope, how many those are."""
    found = []
    for body in stack.budgets.put:
        automation = body.get("automation_id")
        period = body.get("period", "month")
        start, end = period_bounds(period, stack.budgets.set_at)
        events = [e for e in acme_events(stack)
                  if e.occurred_at >= start and automation in (None, e.automation_id)]
        held = [c for c in stack.budgets.held if automation in (None, c.job.automation_id)]
        found.append({
            "automation_id": automation, "period": period, "action": body.get("action", "block"),
            "limit_usd": body.get("limit_usd"), "max_in_flight": body.get("max_in_flight"),
            "weight": body.get("weight"),
            "period_start": start.isoformat(), "resets_at": end.isoformat(),
            "spent_usd": sum(cost_of(e, stack.prices) for e in events),
            "reserved_usd": sum(stack.budgets.reserved_usd[c.call_id] for c in held),
            "in_flight": len(held),
        })
    return sorted(found, key=lambda b: b["automation_id"] or "")


def nearest_rank(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


# ------------------------------------------------------------------ reading the page


async def open_acme(page: Page, stack: BudgetStack) -> dict[str, str]:
    await sign_in(page, stack, stack.tokens["acme"], "#ws=acme&period=7d")
    await expect(page.locator("#status")).to_contain_text("updated")
    await expect(page.locator("#budgets-section")).to_be_visible()
    return await shown_range(page)


async def cells(rows: Locator) -> list[list[str]]:
    return [[(await cell.inner_text()).strip() for cell in await row.locator("th, td").all()]
            for row in await rows.all()]


async def api_ok(stack: BudgetStack, path: str, **params: str) -> Any:
    status, body = await stack.api(path, stack.tokens["acme"], **params)
    assert status == 200, body
    return body


# ------------------------------------------------------------------ the tests


async def test_budgets_show_spent_reserved_limit_resets_and_caps_as_the_api_counts_them(
    budget_stack: BudgetStack, open_page: Any,
) -> None:
    stack = budget_stack
    page, console = await open_page(DESKTOP)
    await open_acme(page, stack)
    answer = (await api_ok(stack, "/v1/workspaces/acme/budgets"))["budgets"]

    # The API counts what was seeded.
    expected = expected_budgets(stack)
    assert [b["automation_id"] for b in answer] == [b["automation_id"] for b in expected]
    for got, want in zip(answer, expected, strict=True):
        for key in ("period", "action", "limit_usd", "max_in_flight", "weight", "period_start", "resets_at",
                    "in_flight"):
            assert got[key] == want[key], (want["automation_id"], key)
        assert got["spent_usd"] == pytest.approx(want["spent_usd"], abs=1e-9), want["automation_id"]
        assert got["reserved_usd"] == pytest.approx(want["reserved_usd"], abs=1e-9), want["automation_id"]
        assert got["reserved_usd"] > 0 and got["spent_usd"] > 0
    by_scope = {b["automation_id"]: b for b in answer}
    assert (by_scope[AGENT]["in_flight"], by_scope[AGENT]["max_in_flight"]) == (1, 4)
    assert by_scope["support-triage"]["limit_usd"] is None
    assert by_scope[None]["in_flight"] == 2 and by_scope[None]["max_in_flight"] is None
    assert by_scope[None]["weight"] == 2 and by_scope[AGENT]["weight"] is None

    # The page shows the API's figures: one item per budget, a bar for each limit, the table behind the bars.
    items = page.locator("#budgets li")
    await expect(items).to_have_count(len(answer))
    table_rows = page.locator("#budgets-table-wrap tbody tr")
    await expect(table_rows).to_have_count(len(answer))
    shown_table = await cells(table_rows)
    report = []
    for budget, row in zip(answer, shown_table, strict=True):
        item = page.locator(f'#budgets li[data-budget="{budget["automation_id"] or ""}"]')
        text = await item.inner_text()
        spent, reserved, limit = budget["spent_usd"], budget["reserved_usd"], budget["limit_usd"]
        resets = utc_minute(budget["resets_at"])
        flight = (f"{budget['in_flight']} of {budget['max_in_flight']} calls in flight"
                  if budget["max_in_flight"] else None)
        assert f"{usd(spent)} spent + {usd(reserved)} reserved" in text
        assert f"resets {resets}" in text
        if flight:
            assert flight in text, text
        else:
            assert "in flight" not in text, text
        assert f"per {budget['period']}" in text and budget["action"] in text
        bar = item.locator('svg[role="img"]')
        if limit is None:
            assert "no spending limit" in text
            await expect(bar).to_have_count(0)
            used = NOTHING
        else:
            used = f"{fixed((spent + reserved) / limit * 100, 0)}%"
            summary = f"{usd(spent)} spent + {usd(reserved)} reserved of {usd(limit)} ({used})"
            assert summary in text
            await expect(bar).to_have_attribute("aria-label", summary + (f"; {flight}" if flight else "")
                                                 + f"; resets {resets}")
            # The bar: spent, then reserved after it, then the limit's mark, on a scale of the larger.
            scale = max(limit, spent + reserved)
            rects = bar.locator("rect")
            await expect(rects).to_have_count(4)
            for index, attribute, value in ((1, "width", spent / scale * 100), (2, "x", spent / scale * 100),
                                            (2, "width", reserved / scale * 100),
                                            (3, "x", max(0.0, limit / scale * 100 - 0.4))):
                drawn = float(str(await rects.nth(index).get_attribute(attribute)))
                assert drawn == pytest.approx(value, rel=1e-9), (budget["automation_id"], index, attribute)
        scope = f"Automation {budget['automation_id']}" if budget["automation_id"] else "Whole workspace"
        assert row == [scope, budget["period"], budget["action"], usd(spent), usd(reserved),
                       usd(limit) if limit is not None else "no limit", used,
                       f"{budget['in_flight']} of {budget['max_in_flight']}" if budget["max_in_flight"] else "no cap",
                       str(budget["weight"] or 1), resets]
        of = f"of {usd(limit)} ({used})" if limit is not None else "(no limit)"
        report.append(f"{scope}: {usd(spent)} spent + {usd(reserved)} reserved {of}, {flight or 'no cap'}, "
                      f"resets {resets}")
    print("\nbudgets on the page (equal to the API and to the seeds):\n  " + "\n  ".join(report))

    # The table behind the bars is there for screen readers, and shown on request.
    wrap = page.locator("#budgets-table-wrap")
    await expect(wrap).to_have_class("table-wrap sr-only")
    await page.click("#budgets-table-toggle")
    await expect(page.locator("#budgets-table-toggle")).to_have_attribute("aria-expanded", "true")
    await expect(wrap).to_be_visible()
    await expect(wrap).not_to_have_class("table-wrap sr-only")

    # Estimates, from the price table of its date.
    await expect(page.locator("#budgets-note")).to_contain_text(
        f"estimates from the price table of {stack.prices.version}")
    assert console.errors == []


async def test_drivers_rank_automations_by_cost_with_their_drivers_as_the_api_counts_them(
    budget_stack: BudgetStack, open_page: Any,
) -> None:
    stack = budget_stack
    prices = stack.prices
    page, console = await open_page(DESKTOP)
    period = await open_acme(page, stack)
    body = await api_ok(stack, "/v1/workspaces/acme/drivers", since=period["since"], until=period["until"])
    since, until = (datetime.fromisoformat(period[key].replace("Z", "+00:00")) for key in ("since", "until"))
    events = within(acme_events(stack), since, until)

    # The API ranks the automations by their cost, as the seeded calls add up.
    costs: dict[str | None, float] = defaultdict(float)
    for event in events:
        costs[event.automation_id] += cost_of(event, prices)
    ranked = sorted(costs, key=lambda automation: -costs[automation])
    assert [a["automation_id"] for a in body["automations"]] == ranked
    for automation in body["automations"]:
        assert automation["cost_usd"] == pytest.approx(costs[automation["automation_id"]], abs=1e-6)
    assert body["total_cost_usd"] == pytest.approx(sum(costs.values()), abs=1e-6)

    # The agent's drivers, from what its calls carried.
    agent_events = [e for e in events if e.automation_id == AGENT]
    agent = next(a for a in body["automations"] if a["automation_id"] == AGENT)
    assert agent["system_prompt_share"] == SYSTEM_CHARS / INPUT_CHARS
    runs = agent["runs"]
    sizes = list(RUN_SIZES.values())
    assert runs["count"] == len(RUN_SIZES)
    assert runs["calls_per_run"] == {"p50": nearest_rank(sizes, 50), "p95": nearest_rank(sizes, 95), "max": max(sizes)}
    run_costs = [sum(cost_of(e, prices) for e in agent_events if e.tags["agent_run"] == run) for run in RUN_SIZES]
    for key, value in (("p50", nearest_rank(run_costs, 50)), ("p95", nearest_rank(run_costs, 95)),
                       ("max", max(run_costs))):
        assert runs["cost_per_run_usd"][key] == pytest.approx(value, abs=1e-6), key
    entry = prices.price("openai", AGENT_MODEL, stack.seeded.today.date())
    assert entry is not None
    cache_reads = sum(e.cache_read_tokens for e in agent_events)
    assert cache_reads == AGENT_CACHED * (len(agent_events) - len(RUN_SIZES))
    assert agent["cache"]["saved_usd"] == pytest.approx(cache_reads * (entry.input - entry.cache_read_price) / 1e6,
                                                        abs=1e-6)
    # Repeats of the (long) system prompt that read nothing from the cache: the first call of each run but the
    # very first, each with 3/4 of its input as system prompt that caching would bill at the cached price.
    misses = len(RUN_SIZES) - 1
    open_saving = misses * AGENT_INPUT * SYSTEM_CHARS / INPUT_CHARS * (entry.input - entry.cache_read_price) / 1e6
    assert agent["cache"]["open_saving_usd"] == pytest.approx(open_saving, abs=1e-6)
    assert agent["cache"]["saved_usd"] > 0 and agent["cache"]["open_saving_usd"] > 0

    # The page: the API's ranking, and each automation's drivers as the API gives them.
    header = await cells(page.locator("#automations thead tr"))
    assert header == [["Automation", "Est. cost", "Share", "Requests", "System prompt share", "Agent runs",
                       "Calls per run p50/p95/max", "Cost per run p50/p95/max", "Caching saved",
                       "Caching could save"]]
    shown = await cells(page.locator("#automations tbody tr"))

    def triple(r: dict[str, Any] | None, key: str, fmt: Any) -> str:
        return NOTHING if r is None else f"{fmt(r[key]['p50'])} / {fmt(r[key]['p95'])} / {fmt(r[key]['max'])}"

    want = [[f"{rank}. {a['automation_id'] or '(no automation)'}", usd(a["cost_usd"]), percent(a["cost_share"]),
             count(a["requests"]), percent(a["system_prompt_share"]),
             count(a["runs"]["count"]) if a["runs"] else NOTHING, triple(a["runs"], "calls_per_run", count),
             triple(a["runs"], "cost_per_run_usd", usd), usd(a["cache"]["saved_usd"]),
             usd(a["cache"]["open_saving_usd"])]
            for rank, a in enumerate(body["automations"], start=1)]
    assert shown == want
    agent_row = next(row for row in shown if row[0].endswith(f". {AGENT}"))
    print(f"\ndrivers of {AGENT} on the page (equal to the API and to the seeds): " + ", ".join(
        f"{name} {value}" for name, value in zip(header[0][1:], agent_row[1:], strict=True)))
    print("automations ranked: " + ", ".join(row[0] for row in shown))

    # The cheaper-model comparison: the same tokens on every priced model of the provider, the cheapest one.
    for model in body["models"]:
        same = [e for e in events if e.provider.value == model["provider"] and e.model == model["model"]]
        totals: dict[str, float] = defaultdict(float)
        for event in same:
            counters = Counters(0, 0, event.input_tokens, event.cache_read_tokens, event.cache_write_tokens,
                                event.output_tokens, event.reasoning_tokens)
            for name, price in prices.models_of(model["provider"], event.occurred_at.date()):
                totals[name] += price.cost(counters)
        cheapest = min(totals, key=lambda name: (totals[name], name))
        assert model["requests"] == len(same)
        assert model["cheapest"]["model"] == cheapest
        assert model["cheapest"]["cost_usd"] == pytest.approx(totals[cheapest], abs=1e-6)
        assert model["cheapest"]["cost_usd"] < model["cost_usd"]
    await expect(page.locator("#models")).to_be_visible()
    models = await cells(page.locator("#models tbody tr"))
    assert models == [[f"{m['provider']}/{m['model']}", count(m["requests"]), usd(m["cost_usd"]),
                       m["cheapest"]["model"], usd(m["cheapest"]["cost_usd"])] for m in body["models"]]
    print("cheaper-model comparison: " + "; ".join(f"{m[0]} {m[2]}, on {m[3]} {m[4]}" for m in models))

    # Every section of estimates says so, with the date of its price table; the API's date everywhere.
    token = await api_ok(stack, "/v1/token")
    consumption = await api_ok(stack, "/v1/workspaces/acme/consumption", since=period["since"],
                               until=period["until"])
    as_of = prices.version
    assert token["prices_as_of"] == consumption["prices_as_of"] == body["prices_as_of"] == as_of
    for note, text in (("#range-note", f"Estimated costs, price table of {as_of}"),
                       ("#drivers-note", f"(price table of {as_of})"),
                       ("#budgets-note", f"estimates from the price table of {as_of}"),
                       ("#prices-note", f"Costs are estimates from the price table of {as_of}")):
        await expect(page.locator(note)).to_contain_text(text)
    await expect(page.locator("#estimate-note")).to_contain_text("estimate")
    print(f"price table date shown: {as_of}")
    assert console.errors == []


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "390px"])
async def test_no_serious_accessibility_violation_with_budgets_and_drivers(
    budget_stack: BudgetStack, open_page: Any, viewport: dict[str, int],
) -> None:
    page, console = await open_page(viewport, bypass_csp=True)
    await open_acme(page, budget_stack)
    await expect(page.locator("#models")).to_be_visible()
    await expect(page.locator("#budgets li svg")).to_have_count(2)
    hidden = await axe_violations(page)
    assert hidden == [], describe(hidden)
    for toggle, table in (("#chart-table-toggle", "#chart-table"), ("#budgets-table-toggle", "#budgets-table-wrap")):
        await page.click(toggle)
        await expect(page.locator(table)).to_be_visible()
    shown = await axe_violations(page)
    print(f"\naxe-core {AXE_VERSION} with budgets and drivers at {viewport['width']} px: "
          f"{len(shown)} serious or critical violations")
    assert shown == [], describe(shown)
    overflow = await page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    assert console.errors == []
