"""Every request body an adapter sends validates against the provider's own published definition."""

from __future__ import annotations

from typing import Any

import anthropic.types.message_create_params as anthropic_types
import ollama._types as ollama_types
import pytest
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator
from pydantic import TypeAdapter, ValidationError

from schemas.models import Provider
from tests.contract.corpus import FIXED_INPUTS, build, job_inputs
from tests.contract.specs import (
    MISTRAL_SPEC,
    OPENAI_SPEC,
    declared_properties,
    errors,
    load_spec,
    materialize,
    openapi_validator,
    unknown_keys,
)

ANTHROPIC_REQUEST: TypeAdapter[Any] = TypeAdapter(anthropic_types.MessageCreateParamsNonStreaming)
ANTHROPIC_KEYS = (anthropic_types.MessageCreateParamsNonStreaming.__required_keys__
                  | anthropic_types.MessageCreateParamsNonStreaming.__optional_keys__)

# Chat-completions servers other than api.openai.com get max_tokens instead of max_completion_tokens.
OPENAI_BASES = [None, "http://127.0.0.1:8000/v1"]


def openai_request_validator() -> Draft202012Validator:
    return openapi_validator(OPENAI_SPEC, "CreateChatCompletionRequest")


def mistral_request_validator() -> Draft202012Validator:
    return openapi_validator(MISTRAL_SPEC, "ChatCompletionRequest")


def check_openai(body: dict[str, Any]) -> None:
    assert errors(openai_request_validator(), body) == []
    spec = load_spec(OPENAI_SPEC)
    declared = declared_properties(spec, spec["components"]["schemas"]["CreateChatCompletionRequest"])
    assert unknown_keys(body, declared) == set()


def check_mistral(body: dict[str, Any]) -> None:
    # The schema itself forbids additional properties.
    assert errors(mistral_request_validator(), body) == []


def check_anthropic(body: dict[str, Any]) -> None:
    validated = materialize(ANTHROPIC_REQUEST.validate_python(body, strict=True))
    assert validated["messages"]  # consumed: every message was validated
    # TypedDicts ignore unknown keys: a key the SDK does not declare would pass silently.
    assert unknown_keys(body, ANTHROPIC_KEYS) == set()


def check_ollama(body: dict[str, Any]) -> None:
    ollama_types.ChatRequest.model_validate(body, strict=True)
    # ChatRequest takes any mapping for messages and options: check each against its own type too.
    for message in body["messages"]:
        ollama_types.Message.model_validate(message, strict=True)
        assert unknown_keys(message, ollama_types.Message.model_fields) == set()
    if "options" in body:
        ollama_types.Options.model_validate(body["options"], strict=True)
        assert unknown_keys(body["options"], ollama_types.Options.model_fields) == set()
    assert unknown_keys(body, ollama_types.ChatRequest.model_fields) == set()


CHECKS = {
    Provider.OPENAI: check_openai,
    Provider.MISTRAL: check_mistral,
    Provider.ANTHROPIC: check_anthropic,
    Provider.OLLAMA: check_ollama,
}


@pytest.mark.parametrize("name", list(FIXED_INPUTS))
@pytest.mark.parametrize("base_url", OPENAI_BASES)
def test_openai_requests(name: str, base_url: str | None) -> None:
    request = build(Provider.OPENAI, FIXED_INPUTS[name], base_url)
    assert request is not None
    check_openai(request.body)


@pytest.mark.parametrize("provider", [Provider.MISTRAL, Provider.ANTHROPIC, Provider.OLLAMA])
@pytest.mark.parametrize("name", list(FIXED_INPUTS))
def test_fixed_requests(provider: Provider, name: str) -> None:
    request = build(provider, FIXED_INPUTS[name])
    assert request is not None
    CHECKS[provider](request.body)


@pytest.mark.parametrize("provider", list(Provider))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=job_inputs())
def test_generated_requests(provider: Provider, spec: dict[str, Any]) -> None:
    request = build(provider, spec)
    if request is None:
        # Only a temperature beyond Mistral's published maximum (1.5) is refused before sending.
        assert provider is Provider.MISTRAL
        assert spec["temperature"] > 1.5
        return
    CHECKS[provider](request.body)


# -------------------------------------------------------------- the checks can fail (negative cases)


def _with(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**body, **changes}


BAD_ROLE = [{"role": "robot", "content": "beep"}]


@pytest.mark.parametrize("provider", [Provider.OPENAI, Provider.MISTRAL])
def test_openapi_rejects_bad_role_and_string_temperature(provider: Provider) -> None:
    request = build(provider, FIXED_INPUTS["full"])
    assert request is not None
    check = CHECKS[provider]
    check(request.body)
    for bad in (_with(request.body, messages=BAD_ROLE), _with(request.body, temperature="0.7"),
                _with(request.body, stop_sequences=["x"])):
        with pytest.raises(AssertionError):
            check(bad)


def test_anthropic_types_reject_bad_bodies() -> None:
    request = build(Provider.ANTHROPIC, FIXED_INPUTS["full"])
    assert request is not None
    check_anthropic(request.body)
    for bad in (_with(request.body, messages=BAD_ROLE), _with(request.body, max_tokens="256"),
                _with(request.body, messages=[{"role": "user", "content": 7}])):
        with pytest.raises(ValidationError):
            check_anthropic(bad)
    # Not declared by the SDK (deprecated sampling parameters; OpenAI's name for stop sequences).
    for bad in (_with(request.body, temperature=0.5), _with(request.body, stop=["x"])):
        with pytest.raises(AssertionError):
            check_anthropic(bad)


def test_ollama_types_reject_bad_bodies() -> None:
    request = build(Provider.OLLAMA, FIXED_INPUTS["full"])
    assert request is not None
    check_ollama(request.body)
    options = request.body["options"]
    for bad in (_with(request.body, options={**options, "temperature": "0.7"}), _with(request.body, model=""),
                _with(request.body, messages=[{"role": "user", "content": 7}])):
        with pytest.raises(ValidationError):
            check_ollama(bad)
    # ollama's Message.role is a free string, so a bad role is not its to reject; unknown keys are ours.
    for bad in (_with(request.body, options={**options, "max_tokens": 5}), _with(request.body, max_tokens=5)):
        with pytest.raises(AssertionError):
            check_ollama(bad)
