"""The usage event's shape: sizes and the system prompt's fingerprint, never any text."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from schemas.models import CompletionInput
from worker.jobs.call_shape import call_shape, system_fingerprint

SYSTEM = "You answer in French. Confidential: the discount code is PLUM-77."
PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}}


def spec(**fields: Any) -> CompletionInput:
    return CompletionInput.model_validate({"messages": [{"role": "user", "content": "Bonjour"}], **fields})


def test_a_plain_job_counts_its_characters_and_messages() -> None:
    shape = call_shape(spec(system=SYSTEM))
    assert shape.system_chars == len(SYSTEM)
    assert shape.input_chars == len(SYSTEM) + len("Bonjour")
    assert (shape.messages, shape.tools, shape.images) == (1, 0, 0)
    assert shape.system_fingerprint == hashlib.sha256(SYSTEM.encode()).hexdigest()[:16]


def test_no_system_prompt_has_no_fingerprint() -> None:
    shape = call_shape(spec())
    assert (shape.system_chars, shape.system_fingerprint) == (0, None)
    assert system_fingerprint("") is None


def test_tools_tool_calls_results_and_images_are_sized_not_copied() -> None:
    image = {"type": "image", "media_type": "image/png", "data": "iVBORw0KGgo="}
    shape = call_shape(spec(
        system=SYSTEM,
        tools=[{"name": "weather", "description": "Weather now.", "parameters": PARAMS}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Paris?"}, image, image]},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "name": "weather", "arguments": {"city": "Paris"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
    ))
    tool_chars = len("weather") + len("Weather now.") + len(orjson.dumps(PARAMS, option=orjson.OPT_SORT_KEYS))
    call_chars = len("weather") + len(orjson.dumps({"city": "Paris"}))
    assert shape.input_chars == len(SYSTEM) + len("Paris?") + call_chars + len("sunny") + tool_chars
    assert (shape.messages, shape.tools, shape.images) == (3, 1, 2)
    dumped = shape.model_dump_json()
    assert "PLUM" not in dumped and "Paris" not in dumped and "sunny" not in dumped


def test_the_same_prompt_has_the_same_fingerprint_and_another_does_not() -> None:
    assert system_fingerprint(SYSTEM) == call_shape(spec(system=SYSTEM)).system_fingerprint
    assert system_fingerprint(SYSTEM + " ") != system_fingerprint(SYSTEM)
