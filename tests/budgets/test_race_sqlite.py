"""The race (``tests/budgets/race.py``) on SQLite: four workers sharing one file on one host."""

from __future__ import annotations

from pathlib import Path

from tests.budgets.race import race
from tests.conftest import Sealer
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator


async def test_concurrent_workers_never_overshoot_a_block_budget_on_sqlite(
    settings: Settings, simulator: ProviderSimulator, seal: Sealer, sqlite_url: str, tmp_path: Path
) -> None:
    await race(settings, simulator, seal, sqlite_url, tmp_path)
