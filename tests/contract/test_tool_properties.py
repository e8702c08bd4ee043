"""Any valid conversation with tool calls maps to a request the provider's definition accepts, on all four
protocols, and in that request every tool result refers to a call made earlier in it."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from schemas.models import Provider
from tests.contract.test_tool_contracts import build, check_request
from tests.contract.tool_corpus import IMAGE_URL, tool_conversations
from worker.failures import InvalidJob
from worker.providers.mistral import mistral_call_id


def _ollama_refuses(spec: dict[str, Any]) -> bool:
    """What Ollama cannot express (forcing a tool call, an image by URL): the only refusals allowed."""
    forced = spec.get("tool_choice") == "required" or isinstance(spec.get("tool_choice"), dict)
    return forced or IMAGE_URL in repr(spec["messages"])


def chat_pairs(body: dict[str, Any], *, by_name: bool = False) -> tuple[list[str], list[str]]:
    """Call ids in order of appearance, and each tool result's id checked against the calls before it.
    Ollama has no ids (``by_name``): a tool result names its tool, which an earlier call must have called."""
    made: list[str] = []
    answered: list[str] = []
    for message in body["messages"]:
        made.extend(call["function"]["name"] if by_name else call["id"] for call in message.get("tool_calls") or [])
        if message["role"] == "tool":
            answers = message["tool_name"] if by_name else message["tool_call_id"]
            assert answers in made, "a tool result refers to a call made earlier"
            answered.append(answers)
    return made, answered


def anthropic_pairs(body: dict[str, Any]) -> tuple[list[str], list[str]]:
    made: list[str] = []
    answered: list[str] = []
    for message in body["messages"]:
        blocks = message["content"] if isinstance(message["content"], list) else []
        for block in blocks:
            if block["type"] == "tool_use":
                assert message["role"] == "assistant"
                made.append(block["id"])
            elif block["type"] == "tool_result":
                assert message["role"] == "user"
                assert block["tool_use_id"] in made, "a tool result refers to a call made earlier"
                answered.append(block["tool_use_id"])
    return made, answered


PAIRS = {Provider.OPENAI: chat_pairs, Provider.MISTRAL: chat_pairs, Provider.ANTHROPIC: anthropic_pairs,
         Provider.OLLAMA: partial(chat_pairs, by_name=True)}


def job_calls(spec: dict[str, Any], provider: Provider) -> list[str]:
    key = "name" if provider is Provider.OLLAMA else "id"
    calls = [call[key] for message in spec["messages"] for call in message.get("tool_calls") or []]
    return [mistral_call_id(call) for call in calls] if provider is Provider.MISTRAL else calls


@pytest.mark.parametrize("provider", list(Provider))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=tool_conversations())
def test_any_tool_conversation_maps_to_a_valid_request(provider: Provider, spec: dict[str, Any]) -> None:
    try:
        request = build(provider, spec)
    except InvalidJob:
        assert provider is Provider.OLLAMA and _ollama_refuses(spec)
        return
    assert not (provider is Provider.OLLAMA and _ollama_refuses(spec))
    check_request(provider, request.body)
    made, answered = PAIRS[provider](request.body)
    assert made == job_calls(spec, provider), "every call of the job is in the request, in order"
    assert sorted(answered) == sorted(made), "each call is answered exactly once"
