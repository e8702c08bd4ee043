"""The README's publisher-library example runs as it is printed, against the real broker, a worker and the
simulator (only the simulator's address differs: the test's simulator listens on a free port)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from schemas.models import Provider
from tests.conftest import Sealer
from tests.unit.test_readme import SIMULATOR_PORT, fenced, section
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

KEY = "sk-test-ReadmeClient0123456789abcdef"
PRINTED_SIMULATOR = f"http://127.0.0.1:{SIMULATOR_PORT}"


def example() -> str:
    (code,) = fenced(section("The publisher library"), "python")
    return code


def test_the_example_continues_run_it_by_hand() -> None:
    code = example()
    assert f"{PRINTED_SIMULATOR}/openai/v1" in code, "the endpoint `byok keys seal` sealed for in Run it by hand"
    assert 'Path("sealed.txt")' in code and '"workspace_id": "acme"' in code
    assert "async with Client() as client" in code, "the client reads BYOK_AMQP_URL as the contract says"


async def test_the_example_runs(
    settings: Settings, simulator: ProviderSimulator, running_worker: Worker, seal: Sealer, tmp_path: Path
) -> None:
    code = example().replace(PRINTED_SIMULATOR, simulator.root_url)
    base_url = simulator.base_url(Provider.OPENAI)
    (tmp_path / "sealed.txt").write_text(seal("acme", KEY, Provider.OPENAI, base_url) + "\n")
    env = {**os.environ, "BYOK_AMQP_URL": settings.amqp_url.get_secret_value(),
           "BYOK_TOPOLOGY_PREFIX": settings.topology_prefix}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0, stderr.decode()[-3000:]
    lines = stdout.decode().splitlines()
    assert lines[0].startswith("succeeded input_tokens=") and lines[0].endswith("sim: Hello from the library"), lines
    assert lines[1:3] == ["submitted lib-2", "submitted lib-3"]
    assert sorted(lines[3:]) == ["published lib-2 sim: Hello number 2", "published lib-3 sim: Hello number 3"]
    assert len(simulator.ledger.billed()) == 3
    print("\nREADME example output:\n" + "\n".join(lines))
