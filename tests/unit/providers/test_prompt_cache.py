"""Automatic prompt caching per protocol: Anthropic's marker once the prefix is long enough, OpenAI's key,
nothing for Mistral and Ollama, and nothing at all with ``cache: off``."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from schemas.models import CompletionJob, Provider
from worker.keys.endpoint import Endpoint
from worker.providers import ADAPTERS
from worker.providers.prompt_cache import CHARS_PER_TOKEN, MAX_CACHE_KEY

LONG = "x" * (1024 * CHARS_PER_TOKEN)  # exactly the 1024-token estimate
TOOL = {"name": "lookup", "description": "Looks a ticket up.", "parameters": {"type": "object"}}


def request(provider: Provider, model: str = "claude-sonnet-4-5", automation: str | None = "triage",
            workspace: str = "acme", **spec: Any) -> dict[str, Any]:
    ref: dict[str, Any] = {"provider": provider.value, "name": model}
    if provider is not Provider.OLLAMA:
        ref["sealed_key"] = "vault:v1:c2VhbGVk"
    job = CompletionJob.model_validate({
        "job_id": "j", "workspace_id": workspace, "automation_id": automation, "model": ref,
        "input": {"messages": [{"role": "user", "content": "hi"}], **spec},
    })
    key = None if provider is Provider.OLLAMA else "sk-test"
    body: dict[str, Any] = ADAPTERS[provider].build_request(job, Endpoint.resolve(provider, None), key).body
    return body


def test_anthropic_marks_a_long_system_prompt() -> None:
    body = request(Provider.ANTHROPIC, system=LONG, tools=[TOOL])
    assert body["system"] == [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]
    assert "cache_control" not in body["tools"][0], "one marker, at the end of the prefix"


def test_anthropic_leaves_a_short_prefix_alone() -> None:
    body = request(Provider.ANTHROPIC, system=LONG[: -CHARS_PER_TOKEN - 1])
    assert body["system"] == LONG[: -CHARS_PER_TOKEN - 1]
    assert "cache_control" not in orjson.dumps(body).decode()


def test_haiku_needs_twice_the_prefix() -> None:
    assert request(Provider.ANTHROPIC, model="claude-haiku-4-5", system=LONG)["system"] == LONG
    marked = request(Provider.ANTHROPIC, model="claude-haiku-4-5", system=LONG * 2)["system"]
    assert marked[0]["cache_control"] == {"type": "ephemeral"}


def test_anthropic_marks_the_last_tool_when_there_is_no_system_prompt() -> None:
    tools = [{**TOOL, "name": f"t{n}", "description": LONG[:1000]} for n in range(5)]
    body = request(Provider.ANTHROPIC, tools=tools)
    assert [("cache_control" in tool) for tool in body["tools"]] == [False] * 4 + [True]


def test_anthropic_with_cache_off_marks_nothing() -> None:
    body = request(Provider.ANTHROPIC, system=LONG * 2, tools=[TOOL], cache="off")
    assert "cache_control" not in orjson.dumps(body).decode()
    assert body["system"] == LONG * 2


def test_openai_gets_a_prompt_cache_key_of_workspace_and_automation() -> None:
    assert request(Provider.OPENAI, model="gpt-4o")["prompt_cache_key"] == "acme/triage"
    assert request(Provider.OPENAI, model="gpt-4o", automation=None)["prompt_cache_key"] == "acme/_"
    assert "prompt_cache_key" not in request(Provider.OPENAI, model="gpt-4o", cache="off")


def test_a_long_openai_cache_key_is_hashed_within_the_limit() -> None:
    key = request(Provider.OPENAI, model="gpt-4o", workspace="w" * 64, automation="a" * 64)["prompt_cache_key"]
    other = request(Provider.OPENAI, model="gpt-4o", workspace="w" * 64, automation="b" * 64)["prompt_cache_key"]
    assert len(key) <= MAX_CACHE_KEY and key != other


@pytest.mark.parametrize("provider", [Provider.MISTRAL, Provider.OLLAMA])
def test_protocols_without_caching_fields_get_nothing(provider: Provider) -> None:
    text = orjson.dumps(request(provider, model="m", system=LONG * 2)).decode()
    assert "cache_control" not in text and "prompt_cache_key" not in text
