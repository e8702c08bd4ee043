"""The race (``tests/budgets/race.py``) on PostgreSQL: four workers sharing one database."""

from __future__ import annotations

from pathlib import Path

from tests.budgets.race import race
from tests.conftest import Sealer
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator


async def test_concurrent_workers_never_overshoot_a_block_budget_on_postgresql(
    settings: Settings, simulator: ProviderSimulator, seal: Sealer, pg_url: str, tmp_path: Path
) -> None:
    await race(settings, simulator, seal, pg_url, tmp_path)
