"""The consumption page in headless Chromium: a token asked once per tab, totals equal to the API's, period
and grouping switched, an anomaly listed, nothing of another workspace, no console error, screenshots."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from playwright.async_api import Page, expect

from tests.browser.conftest import DESKTOP, PHONE, PageStack
from tests.browser.seed import GLOBEX_SECRET, SPIKE_MESSAGE
from worker.aggregator.pricing import load_prices
from worker.aggregator.tokens import revoke_token, token_hash

BUCKETS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")


async def sign_in(page: Page, stack: PageStack, token: str, fragment: str = "") -> None:
    await page.goto(f"{stack.url}/{fragment}")
    await expect(page.locator("#login")).to_be_visible()
    await page.fill("#token-input", token)
    await page.click("#login-form button[type=submit]")


async def shown_range(page: Page) -> dict[str, str]:
    content = page.locator("#content")
    await expect(content).to_be_visible()
    return {
        "since": str(await content.get_attribute("data-since")),
        "until": str(await content.get_attribute("data-until")),
        "unit": str(await content.get_attribute("data-unit")),
    }


async def figures(page: Page) -> dict[str, str]:
    shown = {}
    for item in await page.locator("#headline .figure").all():
        shown[str(await item.get_attribute("data-figure"))] = str(await item.get_attribute("data-value"))
    return shown


async def assert_totals_equal_the_api(page: Page, stack: PageStack, token: str) -> dict[str, Any]:
    period = await shown_range(page)
    status, body = await stack.api("/v1/workspaces/acme/consumption", token,
                                   since=period["since"], until=period["until"])
    assert status == 200
    totals = body["totals"]
    shown = await figures(page)
    assert float(shown["cost_usd"]) == totals["cost_usd"]
    assert int(shown["requests"]) == totals["requests"]
    for bucket in BUCKETS:
        assert int(shown[bucket]) == totals[bucket], bucket
    assert int(shown["unreported_calls"]) == totals["unreported_calls"]
    headline = await page.locator("#headline").inner_text()
    assert f"{totals['requests']:,}" in headline
    assert f"{totals['input_tokens']:,}" in headline
    return {"period": period, "totals": totals}


async def wait_for_unit(page: Page, unit: str) -> None:
    await expect(page.locator("#content")).to_have_attribute("data-unit", unit)
    await expect(page.locator("#status")).to_contain_text("updated")


async def test_the_page_shows_a_workspace_as_the_api_counts_it(
    page_stack: PageStack, open_page: Any, screenshot_path: Any
) -> None:
    page, console = await open_page(DESKTOP)
    token = page_stack.tokens["acme"]
    await sign_in(page, page_stack, token)
    await expect(page.locator("#status")).to_contain_text("updated")

    # The default period: the last 7 days, by day.
    week = await assert_totals_equal_the_api(page, page_stack, token)
    assert week["period"]["unit"] == "day"
    assert week["totals"]["requests"] > 0
    assert week["totals"]["unreported_calls"] == 2
    print(f"\npage totals, last 7 days: {week['totals']['requests']} requests, "
          f"{week['totals']['cost_usd']} USD, {week['totals']['unreported_calls']} unreported calls (equal to the API)")
    await expect(page.locator("#range-note")).to_contain_text("UTC")
    as_of = load_prices(None).version
    await expect(page.locator("#prices-note")).to_contain_text(f"estimates from the price table of {as_of}")

    # Change against the previous 7 days, as the API counts them.
    await expect(page.locator('#headline [data-figure="cost_usd"] .change')).to_contain_text("previous period")

    await page.screenshot(path=screenshot_path("consumption-desktop.png"), full_page=True)

    # Stacked by automation, then by model; the table behind the chart follows.
    chart = page.locator("#chart svg")
    await expect(chart).to_have_attribute("data-stack", "automation")
    assert "support-triage" in str(await chart.get_attribute("data-series"))
    await page.focus('button[data-stack="model"]')
    await page.keyboard.press("Enter")  # a native button: the keyboard works it as the mouse does
    await expect(chart).to_have_attribute("data-stack", "model")
    assert "openai/gpt-4o-mini" in str(await chart.get_attribute("data-series"))
    await expect(page.locator("#chart-table caption")).to_contain_text("by model")
    await expect(page.locator('button[data-stack="model"]')).to_have_attribute("aria-pressed", "true")

    # Automations ranked by cost, as the API ranks them.
    status, by_automation = await page_stack.api(
        "/v1/workspaces/acme/consumption", token, since=week["period"]["since"], until=week["period"]["until"],
        group_by="automation",
    )
    assert status == 200
    costliest = max(by_automation["rows"], key=lambda row: row["cost_usd"] or 0)["automation_id"]
    await expect(page.locator("#automations tbody tr").first).to_contain_text(f"1. {costliest}")

    # The anomaly of the period, with its numbers.
    anomaly = page.locator('#anomalies li[data-kind="spike"]')
    await expect(anomaly).to_contain_text(SPIKE_MESSAGE)
    await expect(anomaly).to_contain_text("baseline mean")
    await expect(anomaly).to_contain_text("6.69")

    # Today, by hour.
    await page.select_option("#period", "today")
    await wait_for_unit(page, "hour")
    today = await assert_totals_equal_the_api(page, page_stack, token)
    assert today["totals"]["requests"] == 5
    assert await page.locator("#chart-table tbody tr").count() == 24

    # This month, and a custom range of two days.
    await page.select_option("#period", "month")
    await expect(page.locator("#status")).to_contain_text("this month")
    await assert_totals_equal_the_api(page, page_stack, token)
    await page.select_option("#period", "custom")
    await expect(page.locator("#custom-range")).to_be_visible()
    day = page_stack.seeded.today.date()
    await page.fill("#from", (day - timedelta(days=1)).isoformat())
    await page.fill("#to", day.isoformat())
    await page.click("#controls button[type=submit]")
    await expect(page.locator("#status")).to_contain_text(" to ")
    custom = await assert_totals_equal_the_api(page, page_stack, token)
    assert custom["period"]["unit"] == "hour"

    # A reload in the same tab does not ask again; the hash keeps the choice.
    await page.reload()
    await expect(page.locator("#login")).to_be_hidden()
    await expect(page.locator("#status")).to_contain_text("updated")
    await expect(page.locator("#period")).to_have_value("custom")

    assert console.errors == []


async def test_the_page_at_phone_width(page_stack: PageStack, open_page: Any, screenshot_path: Any) -> None:
    page, console = await open_page(PHONE)
    await sign_in(page, page_stack, page_stack.tokens["acme"], "#ws=acme&period=7d")
    await expect(page.locator("#status")).to_contain_text("updated")
    await assert_totals_equal_the_api(page, page_stack, page_stack.tokens["acme"])
    # Nothing wider than the screen but the tables' own scrolling regions.
    overflow = await page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    assert (await page.locator("#chart svg").bounding_box() or {"width": 999})["width"] <= PHONE["width"]
    await page.screenshot(path=screenshot_path("consumption-390px.png"), full_page=True)
    assert console.errors == []


async def test_another_workspace_shows_nothing(page_stack: PageStack, open_page: Any) -> None:
    page, console = await open_page(DESKTOP)
    # acme's token asking for globex: the API answers 404, the page shows nothing of globex.
    await sign_in(page, page_stack, page_stack.tokens["acme"], "#ws=globex")
    await expect(page.locator("#status")).to_contain_text("may not read that workspace")
    await expect(page.locator("#content")).to_be_hidden()
    assert GLOBEX_SECRET not in await page.content()
    status, _ = await page_stack.api("/v1/workspaces/globex/consumption", page_stack.tokens["acme"])
    assert status == 404
    # The browser logs the refused requests themselves; nothing else went wrong.
    assert console.errors, "the refused requests were not even made"
    assert all("status of 404" in error for error in console.errors), console.errors

    # globex's own token sees globex (so there was something to hide).
    other, other_console = await open_page(DESKTOP)
    await sign_in(other, page_stack, page_stack.tokens["globex"], "#ws=globex")
    await expect(other.locator("#chart svg")).to_have_attribute("data-series", GLOBEX_SECRET)
    assert other_console.errors == []

    # A wrong token is refused at the door; a revoked one from the next request on.
    wrong, _ = await open_page(DESKTOP)
    await sign_in(wrong, page_stack, "byok_not-a-token", "#ws=acme")
    await expect(wrong.locator("#login-error")).to_contain_text("refused")
    await expect(wrong.locator("#app")).to_be_hidden()

    revoke_token(page_stack.tokens_file, token_hash(page_stack.tokens["globex"])[:16])
    await other.click("#controls button[type=submit]")
    await expect(other.locator("#login")).to_be_visible()
    await expect(other.locator("#login-error")).to_contain_text("no longer accepted")
    assert GLOBEX_SECRET not in await other.content()


async def test_sections_follow_the_endpoints_the_aggregator_has(page_stack: PageStack, open_page: Any) -> None:
    """Drivers and budgets are shown when this aggregator serves them (equal to their answers), hidden
    otherwise, and the page never asks for an endpoint that is not there (no 404 on its console)."""
    token = page_stack.tokens["acme"]
    status, scope = await page_stack.api("/v1/token", token)
    assert status == 200 and scope["scope"] == "acme"
    page, console = await open_page(DESKTOP)
    await sign_in(page, page_stack, token, "#ws=acme&period=7d")
    await expect(page.locator("#status")).to_contain_text("updated")
    period = await shown_range(page)

    drivers = "/v1/workspaces/{workspace_id}/drivers" in scope["endpoints"]
    header = page.locator("#automations thead")
    if drivers:
        status, body = await page_stack.api("/v1/workspaces/acme/drivers", token,
                                            since=period["since"], until=period["until"])
        assert status == 200
        await expect(header).to_contain_text("System prompt share")
        rows = page.locator("#automations tbody tr")
        assert await rows.count() == len(body["automations"])
        await expect(page.locator("#models")).to_be_visible()
    else:
        await expect(header).not_to_contain_text("System prompt share")
        await expect(page.locator("#models")).to_be_hidden()

    budgets = "/v1/workspaces/{workspace_id}/budgets" in scope["endpoints"]
    if budgets:
        await expect(page.locator("#budgets-section")).to_be_visible()
    else:
        await expect(page.locator("#budgets-section")).to_be_hidden()

    status, consumption = await page_stack.api("/v1/workspaces/acme/consumption", token,
                                               since=period["since"], until=period["until"])
    unreported = page.locator('#headline [data-figure="unreported_calls"]')
    if "unreported_calls" in consumption["totals"]:
        await expect(unreported).to_have_attribute("data-value", str(consumption["totals"]["unreported_calls"]))
    else:
        await expect(unreported).to_have_count(0)
    print(f"\nsections: drivers {'shown' if drivers else 'hidden (no endpoint)'}, "
          f"budgets {'shown' if budgets else 'hidden (no endpoint)'}")
    assert console.errors == []
