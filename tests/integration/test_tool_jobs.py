"""Agents and extractors through the real worker, broker and Vault, on each of the four protocols.

A two-step agent loop (the result's tool call is run locally and sent back as it is, with the tool's result)
and a structured-output job per protocol; every result (tool call id, name and arguments, final text, parsed
JSON) and its usage, in all five buckets and in the usage event too, equals what the simulator served and
billed (its ledger).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest

from schemas.models import Provider, TokenCounts
from tests.broker import BrokerTap, publish_jobs
from tests.conftest import Sealer
from tests.unit.testing.test_simulator_tools import EXTRACTED, EXTRACTION, ORDER, WEATHER, WEATHER_ARGS
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import LedgerCall, ProviderSimulator

KEYS = {
    Provider.OPENAI: "sk-test-openai-tools-00000000000000",
    Provider.ANTHROPIC: "sk-ant-test-tools-000000000000000000",
    Provider.MISTRAL: "MistralToolsKey00000000000000000",
    Provider.OLLAMA: None,
}
# Behaviours that put cache (and, on OpenAI, reasoning) tokens in the buckets, so all five are compared.
MODELS = {
    Provider.OPENAI: "sim-cached-reasoning",
    Provider.ANTHROPIC: "sim-cached",
    Provider.MISTRAL: "sim-cached",
    Provider.OLLAMA: "llama-tools",
}
BUCKETS = tuple(TokenCounts.model_fields)
QUESTION = "What is the weather in Paris? Please use get_weather."


def get_weather(city: str, unit: str) -> dict[str, Any]:
    """The agent's local tool."""
    return {"city": city, "temperature": 18 if unit == "celsius" else 64, "unit": unit, "sky": "clear"}


def job(job_id: str, provider: Provider, model: dict[str, Any], spec: dict[str, Any], run: str) -> bytes:
    return orjson.dumps({"job_id": job_id, "workspace_id": "ws-tools", "automation_id": f"agent-{provider.value}",
                         "tags": {"agent_run": run}, "model": model, "input": spec})


class Run:
    """One protocol's jobs, one at a time, each matched to the ledger call it caused."""

    def __init__(self, settings: Settings, tap: BrokerTap, simulator: ProviderSimulator, provider: Provider,
                 model: dict[str, Any]) -> None:
        self.settings, self.tap, self.simulator, self.provider, self.model = settings, tap, simulator, provider, model

    async def submit(self, job_id: str, spec: dict[str, Any], run: str) -> tuple[dict[str, Any], LedgerCall]:
        before = len(self.calls())
        await publish_jobs(self.settings, [job(job_id, self.provider, self.model, spec, run)])
        await self.tap.wait_for(lambda: any(r.json["job_id"] == job_id for r in self.tap.results)
                                and any(u.json["job_id"] == job_id for u in self.tap.usage), timeout_s=30)
        result = self.tap.result_for(job_id)
        assert result["status"] == "succeeded", result["error"]
        [call] = self.calls()[before:]
        assert call.usage is not None and result["usage"] == call.usage.model_dump(), (result["usage"], call.usage)
        [event] = [u.json for u in self.tap.usage if u.json["job_id"] == job_id]
        assert event["usage_reported"] and {name: event[name] for name in BUCKETS} == result["usage"]
        assert event["tags"] == {"agent_run": run}
        return result, call

    def calls(self) -> list[LedgerCall]:
        return [call for call in self.simulator.ledger.calls if call.protocol is self.provider]


def protocol_runs(settings: Settings, tap: BrokerTap, simulator: ProviderSimulator, seal: Sealer,
                  models: dict[Provider, str]) -> list[Run]:
    """One ``Run`` per protocol, on the simulator, with a key sealed for it (Ollama takes none)."""
    runs = []
    for provider, key in KEYS.items():
        base_url = simulator.base_url(provider)
        model: dict[str, Any] = {"provider": provider.value, "name": models[provider], "base_url": base_url}
        if key is not None:
            model["sealed_key"] = seal("ws-tools", key, provider, base_url)
        runs.append(Run(settings, tap, simulator, provider, model))
    return runs


async def agent_loop(run: Run) -> list[LedgerCall]:
    """Ask, run the tool the result calls, send its call and result back, and get the answer that uses it."""
    provider = run.provider
    tools = [WEATHER, ORDER]
    first, served = await run.submit(f"{provider.value}-step-1", {
        "system": "You are a weather agent.", "messages": [{"role": "user", "content": QUESTION}], "tools": tools,
    }, run=f"run-{provider.value}")
    output = first["output"]
    [call] = output["tool_calls"]
    [served_call] = served.tool_calls
    assert (call["name"], call["arguments"]) == (served_call.name, served_call.arguments) == ("get_weather",
                                                                                              WEATHER_ARGS)
    if provider is Provider.OLLAMA:
        assert served_call.id is None and call["id"].startswith("call_"), "Ollama gives no id: the worker makes one"
    else:
        assert call["id"] == served_call.id
    assert output["finish_reason"] == "tool_calls"
    assert output["text"] == served.text == ""

    tool_result = json.dumps(get_weather(**call["arguments"]))
    second, answered = await run.submit(f"{provider.value}-step-2", {
        "system": "You are a weather agent.", "tools": tools,
        "messages": [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": output["text"] or None, "tool_calls": output["tool_calls"]},
            {"role": "tool", "tool_call_id": call["id"], "content": tool_result},
        ],
    }, run=f"run-{provider.value}")
    final = second["output"]
    assert final["text"] == answered.text == f"sim: get_weather said {tool_result}"
    assert (final["finish_reason"], final["tool_calls"], answered.tool_calls) == ("stop", [], ())
    return [served, answered]


async def extraction(run: Run) -> LedgerCall:
    result, served = await run.submit(f"{run.provider.value}-extract", {
        "messages": [{"role": "user", "content": "Ada Lovelace, 36, ada@example.com, mathematician"}],
        "response_format": {"type": "json_schema", "name": "person", "schema": EXTRACTION, "strict": True},
    }, run=f"extract-{run.provider.value}")
    output = result["output"]
    assert output["parsed"] == EXTRACTED
    assert output["finish_reason"] == "stop"
    if run.provider is Provider.ANTHROPIC:  # structured output rides a forced tool named after the format
        assert [(c.name, c.arguments) for c in served.tool_calls] == [("person", EXTRACTED)]
    else:
        assert served.text is not None and json.loads(served.text) == EXTRACTED
    return served


@pytest.mark.timeout(120)
async def test_agent_loop_and_structured_output_on_every_protocol(
    settings: Settings, simulator: ProviderSimulator, running_worker: Worker, tap: BrokerTap, seal: Sealer
) -> None:
    runs = protocol_runs(settings, tap, simulator, seal, MODELS)

    async def both(run: Run) -> list[LedgerCall]:
        return [*await agent_loop(run), await extraction(run)]

    served = dict(zip(KEYS, await asyncio.gather(*(both(run) for run in runs)), strict=True))

    # Every call billed exactly once, and the worker's usage events add up to the ledger, bucket by bucket.
    assert len(simulator.ledger.billed()) == len(tap.usage) == 3 * len(KEYS)
    for bucket in BUCKETS:
        assert sum(u.json[bucket] for u in tap.usage) == simulator.ledger.totals()[bucket], bucket
    # The cache and reasoning buckets were really exercised, and tools counted as input on every step.
    for provider, calls in served.items():
        usages = [call.usage for call in calls]
        assert all(usage is not None for usage in usages)
        agent_calls = calls[:2]
        assert all(call.input_shape.tools == 2 and call.input_shape.tool_tokens > 0 for call in agent_calls)
        if provider is not Provider.OLLAMA:
            assert all(usage.cache_read_tokens > 0 for usage in usages if usage is not None), provider
    assert all(u.reasoning_tokens == 16 for u in (c.usage for c in served[Provider.OPENAI]) if u is not None)
    assert all(u.cache_write_tokens > 0 for u in (c.usage for c in served[Provider.ANTHROPIC]) if u is not None)


FORECAST = {"type": "object", "properties": {"summary": {"type": "string"}, "umbrella": {"type": "boolean"}},
            "required": ["summary", "umbrella"], "additionalProperties": False}


async def structured_agent(run: Run) -> None:
    """Tools and a response format together: a tool call first, then the structured final answer
    (on Anthropic the worker's forced answer tool, on the others the protocol's own JSON format)."""
    spec: dict[str, Any] = {
        "messages": [{"role": "user", "content": QUESTION}], "tools": [WEATHER],
        "response_format": {"type": "json_schema", "name": "forecast", "schema": FORECAST},
    }
    first, _ = await run.submit(f"{run.provider.value}-structured-1", spec, run=f"structured-{run.provider.value}")
    [call] = first["output"]["tool_calls"]
    assert (call["name"], first["output"]["parsed"]) == ("get_weather", None)
    spec["messages"] += [
        {"role": "assistant", "content": first["output"]["text"] or None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": json.dumps(get_weather(**call["arguments"]))},
    ]
    final, served = await run.submit(f"{run.provider.value}-structured-2", spec, run=f"structured-{run.provider.value}")
    assert final["output"]["parsed"] == {"summary": "sim", "umbrella": True}
    assert (final["output"]["finish_reason"], final["output"]["tool_calls"]) == ("stop", [])
    if run.provider is Provider.ANTHROPIC:
        assert [c.name for c in served.tool_calls] == ["forecast"]


@pytest.mark.timeout(120)
async def test_an_agent_whose_final_answer_is_structured(
    settings: Settings, simulator: ProviderSimulator, running_worker: Worker, tap: BrokerTap, seal: Sealer
) -> None:
    runs = protocol_runs(settings, tap, simulator, seal, dict.fromkeys(KEYS, "agent-model"))
    await asyncio.gather(*(structured_agent(run) for run in runs))
    assert len(simulator.ledger.billed()) == len(tap.usage) == 2 * len(KEYS)


@pytest.mark.timeout(60)
async def test_an_image_job_bills_the_documented_image_tokens(
    settings: Settings, simulator: ProviderSimulator, running_worker: Worker, tap: BrokerTap, seal: Sealer
) -> None:
    from tests.unit.testing.test_simulator_tools import IMAGE_B64, IMAGE_BYTES

    provider = Provider.ANTHROPIC
    base_url = simulator.base_url(provider)
    model = {"provider": provider.value, "name": "claude-like", "base_url": base_url,
             "sealed_key": seal("ws-tools", KEYS[provider], provider, base_url)}
    run = Run(settings, tap, simulator, provider, model)
    result, served = await run.submit("image-1", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is in this picture"},
        {"type": "image", "media_type": "image/png", "data": IMAGE_B64},
    ]}]}, run="image-run")
    assert (served.input_shape.images, served.input_shape.image_tokens) == (1, 85 + len(IMAGE_BYTES) // 100)
    assert result["usage"]["input_tokens"] == 5 + served.input_shape.image_tokens
    assert result["output"]["text"] == "sim: what is in this picture"
