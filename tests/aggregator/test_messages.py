"""What the consumers accept, ignore, and reject (with a reason that never repeats the body)."""

from __future__ import annotations

import orjson
import pytest

from schemas.models import Status, UsageShape
from tests.aggregator.helpers import failed, usage
from worker.aggregator.consumer import InvalidMessage
from worker.aggregator.messages import MAX_TOKENS_PER_EVENT, parse_failed_result, parse_usage


def body(model: object) -> bytes:
    return model.model_dump_json(by_alias=True).encode()  # type: ignore[attr-defined,no-any-return]


def test_a_usage_event_round_trips() -> None:
    event = usage("2025-03-01 10:00", input_tokens=5, tags={"run": "r1"})
    assert parse_usage(body(event)) == event
    shaped = event.model_copy(update={"shape": UsageShape(
        system_chars=10, input_chars=20, messages=1, tools=0, images=0, system_fingerprint="0123456789abcdef")})
    assert parse_usage(body(shaped)) == shaped


def _with_shape(**shape: object) -> bytes:
    fields = {"system_chars": 0, "input_chars": 0, "messages": 1, "tools": 0, "images": 0, **shape}
    return orjson.dumps({**orjson.loads(body(usage("2025-03-01 10:00"))), "shape": fields})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json at all", "json_invalid"),
        (b'{"schema": "byok.usage_event.v1"}', "event_id: missing"),
        (orjson.dumps({**orjson.loads(body(usage("2025-03-01 10:00"))), "workspace_id": "bad ws"}), "workspace_id"),
        (body(usage("2025-03-01 10:00", model="gpt\u0000")), "NUL"),
        (body(usage("2025-03-01 10:00", input_tokens=MAX_TOKENS_PER_EVENT + 1)), "implausible"),
        (_with_shape(input_chars=2**63), "implausible shape counts in input_chars"),
        (_with_shape(system_fingerprint="not hex"), "shape.system_fingerprint"),
        (_with_shape(images=-1), "shape.images"),
    ],
)
def test_unusable_usage_messages_are_invalid(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        parse_usage(raw)


def test_the_reason_never_contains_the_input() -> None:
    secret = "key: sk-proj-abcdefghijklmnopqrstuvwxyz0123"  # not an identifier: fails validation
    raw = orjson.dumps({**orjson.loads(body(usage("2025-03-01 10:00"))), "workspace_id": secret})
    with pytest.raises(InvalidMessage) as caught:
        parse_usage(raw)
    assert secret not in str(caught.value)
    assert "workspace_id" in str(caught.value)


def test_failed_results_are_kept_and_others_ignored() -> None:
    result = failed("2025-03-01 10:00")
    assert parse_failed_result(body(result)) == result
    succeeded = result.model_copy(update={"status": Status.SUCCEEDED, "error": None})
    assert parse_failed_result(body(succeeded)) is None
    with pytest.raises(InvalidMessage, match="completion result"):
        parse_failed_result(b"{}")
