"""The consumption page in a real headless browser: Debian's Chromium (``/usr/bin/chromium``) driven by
Playwright for Python, against a real aggregator API over a seeded store, with real tokens.

A missing Chromium fails the tests (``.ci/run`` and ``make test`` install it with apt-get): nothing is skipped,
and no browser is ever downloaded.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from tests.browser.seed import Seeded, SeededBudgets, SeededDrivers, seed_budgets, seed_drivers, seed_workspaces
from worker.aggregator.api import AggregatorApi, ApiServer, ApiState
from worker.aggregator.metrics import AggregatorMetrics
from worker.aggregator.pricing import PriceTable, load_prices
from worker.aggregator.store import Store
from worker.aggregator.tokens import TokenRegistry, add_token
from worker.budgets.admin import BudgetAdmin

CHROMIUM = os.environ.get("BYOK_TEST_CHROMIUM", "/usr/bin/chromium")
AXE_VERSION = "4.14.1"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@dataclass
class PageStack:
    url: str
    tokens_file: Path
    tokens: dict[str, str]  # scope -> token
    seeded: Seeded

    async def api(self, path: str, token: str | None, **params: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as session, session.get(
            f"{self.url}{path}", params=params, headers=headers
        ) as response:
            body = await response.json() if response.content_type == "application/json" else await response.text()
            return response.status, body


@pytest.fixture
async def page_stack(tmp_path: Path) -> AsyncIterator[PageStack]:
    """An aggregator API with tokens, over a SQLite store seeded with two workspaces (``seed.py``)."""
    store = await Store.open(f"sqlite:///{tmp_path / 'consumption.db'}")
    tokens_file = tmp_path / "api-tokens.json"
    tokens = {scope: add_token(tokens_file, scope)[0] for scope in ("acme", "globex", "*")}
    server = ApiServer("127.0.0.1:0", AggregatorApi(
        store, load_prices(None), AggregatorMetrics(), ApiState(lambda: True, lambda: True),
        TokenRegistry(str(tokens_file)),
    ))
    try:
        seeded = await seed_workspaces(store)
        await server.start()
        yield PageStack(server.url, tokens_file, tokens, seeded)
    finally:
        await server.stop()
        await store.close()


@dataclass
class BudgetStack(PageStack):
    prices: PriceTable = field(default_factory=load_prices)
    drivers: SeededDrivers = field(default_factory=lambda: SeededDrivers(()))
    budgets: SeededBudgets = field(default_factory=lambda: SeededBudgets((), ()))


@pytest.fixture
async def budget_stack(tmp_path: Path) -> AsyncIterator[BudgetStack]:
    """``page_stack``'s aggregator serving budgets as the service does (``BudgetAdmin`` on the store), with
    acme's agent runs (``seed_drivers``), budgets set through its API and two calls held in flight by the
    worker's budget guard (``seed_budgets``)."""
    store_url = f"sqlite:///{tmp_path / 'consumption.db'}"
    store = await Store.open(store_url)
    prices = load_prices(None)
    tokens_file = tmp_path / "api-tokens.json"
    tokens = {scope: add_token(tokens_file, scope)[0] for scope in ("acme", "globex", "*")}
    server = ApiServer("127.0.0.1:0", AggregatorApi(
        store, prices, AggregatorMetrics(), ApiState(lambda: True, lambda: True),
        TokenRegistry(str(tokens_file)), budgets=BudgetAdmin(store.writer, prices),
    ))
    try:
        seeded = await seed_workspaces(store)
        drivers = await seed_drivers(store, seeded.today)
        await server.start()
        async with seed_budgets(server.url, tokens["acme"], store_url, prices) as budgets:
            yield BudgetStack(server.url, tokens_file, tokens, seeded, prices, drivers, budgets)
    finally:
        await server.stop()
        await store.close()


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    assert Path(CHROMIUM).exists(), (
        f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium; make test does it)"
    )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Console:
    """What the page said on its console, and the script errors it raised."""

    errors: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        def on_console(message: ConsoleMessage) -> None:
            if message.type in ("error", "warning"):
                self.errors.append(f"{message.type}: {message.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))


@pytest.fixture
async def open_page(browser: Browser) -> AsyncIterator[Any]:
    """``await open_page(viewport)`` -> (page, console): a fresh browser context (its own sessionStorage)."""
    contexts = []

    async def make(viewport: dict[str, int] = DESKTOP, **options: Any) -> tuple[Page, Console]:
        context = await browser.new_context(viewport=viewport, **options)  # type: ignore[arg-type]
        contexts.append(context)
        page = await context.new_page()
        console = Console()
        console.watch(page)
        return page, console

    yield make
    for context in contexts:
        await context.close()


SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture
def screenshot_path(tmp_path: Path) -> Callable[[str], Path]:
    """Where a test writes a screenshot: ``docs/screenshots/<name>`` when that file is missing or
    ``BYOK_UPDATE_SCREENSHOTS=1``, else a temporary file (the committed copy stays as it is, and a test run
    leaves the tree clean: the page shows today's dates, so each day's image differs)."""

    def where(name: str) -> Path:
        committed = SCREENSHOTS / name
        if os.environ.get("BYOK_UPDATE_SCREENSHOTS") == "1" or not committed.exists():
            committed.parent.mkdir(parents=True, exist_ok=True)
            return committed
        return tmp_path / name

    return where
