"""`byok simulate-provider` prints the base URL of each protocol, and each one answers its protocol."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from schemas.models import Provider

PATHS = {Provider.OPENAI: "/chat/completions", Provider.MISTRAL: "/v1/chat/completions",
         Provider.ANTHROPIC: "/v1/messages", Provider.OLLAMA: "/api/chat"}
HEADERS = {"authorization": "Bearer sk-sim", "x-api-key": "sk-sim", "anthropic-version": "2023-06-01"}


@pytest.mark.timeout(30)  # an old simulator printed nothing on stdout: fail, do not hang
def test_simulate_provider_prints_a_working_base_url_per_protocol() -> None:
    process = subprocess.Popen([sys.executable, "-m", "worker.cli.main", "simulate-provider", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(2 + len(Provider))]
        assert lines[0].startswith("provider simulator on http://127.0.0.1:"), lines
        urls = {Provider(line.split()[0]): line.split()[1] for line in lines[1:-1]}
        assert set(urls) == set(Provider), lines
        for provider, url in urls.items():
            body = {"model": "some-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hello"}]}
            answer = httpx.post(url + PATHS[provider], json=body, headers=HEADERS, timeout=10)
            assert answer.status_code == 200, (provider, answer.text)
        ledger = httpx.get(lines[-1].removeprefix("ledger: ").strip(), timeout=10).json()
        assert len(ledger["calls"]) == len(Provider)
    finally:
        process.terminate()
        process.wait(10)
