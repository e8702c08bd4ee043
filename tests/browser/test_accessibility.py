"""axe-core (vendored from the npm registry, ``vendor/axe-core``) run inside the page in the same Chromium:
no serious or critical violation, on the sign-in form and on the page with data, at desktop and phone width."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.browser.conftest import AXE_VERSION, DESKTOP, PHONE, PageStack
from tests.browser.test_page import sign_in

AXE = Path(__file__).parent / "vendor" / "axe-core"
BLOCKING = ("serious", "critical")


def axe_source() -> str:
    script = (AXE / "axe.min.js").read_bytes()
    expected = (AXE / "SHA256SUMS").read_text().split()[0]
    assert hashlib.sha256(script).hexdigest() == expected, "vendor/axe-core/axe.min.js is not the vendored release"
    assert script.startswith(f"/*! axe v{AXE_VERSION}".encode())
    return script.decode()


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    # The page's CSP admits no script but its own: the test's context bypasses it to add axe (bypass_csp).
    await page.add_script_tag(content=axe_source())
    result: dict[str, Any] = await page.evaluate(
        "async () => await axe.run(document, {resultTypes: ['violations']})"
    )
    return [v for v in result["violations"] if v["impact"] in BLOCKING]


def describe(violations: list[dict[str, Any]]) -> str:
    return "\n".join(f"{v['impact']} {v['id']}: {v['help']} at {[n['target'] for n in v['nodes']][:5]}"
                     for v in violations)


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "390px"])
async def test_no_serious_accessibility_violation(
    page_stack: PageStack, open_page: Any, viewport: dict[str, int]
) -> None:
    page, _ = await open_page(viewport, bypass_csp=True)
    await page.goto(f"{page_stack.url}/")
    await expect(page.locator("#login")).to_be_visible()
    login = await axe_violations(page)
    assert login == [], describe(login)

    await sign_in(page, page_stack, page_stack.tokens["acme"], "#ws=acme&period=7d")
    await expect(page.locator("#status")).to_contain_text("updated")
    await page.click("#chart-table-toggle")  # the table behind the chart, shown as well
    await expect(page.locator("#chart-table")).to_be_visible()
    with_data = await axe_violations(page)
    print(f"\naxe-core {AXE_VERSION} at {viewport['width']} px: {len(with_data)} serious or critical violations")
    assert with_data == [], describe(with_data)
