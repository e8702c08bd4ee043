"""One source for the sealed-key and identifier patterns and the usage bucket names (schemas.models)."""

from __future__ import annotations

from dataclasses import fields

import pytest
from pydantic import ValidationError

from schemas.models import TOKEN_BUCKETS, ModelRef, TokenCounts, UsageEvent
from worker.aggregator.records import COUNTER_NAMES, Counters
from worker.keys.admin import SEALED_KEY, WORKSPACE_ID


def job_accepts(sealed: str) -> bool:
    try:
        ModelRef.model_validate({"provider": "openai", "name": "m", "sealed_key": sealed})
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(
    ("sealed", "valid"),
    [
        ("vault:v1:c2VhbGVk", True),
        ("vault:v1:ab==", True),
        ("vault:v12:AbC+/9=", True),
        ("vault:v1234567890:QUJD", True),
        ("vault:v0:QUJD", False),  # transit key versions start at 1
        ("vault:v01:QUJD", False),
        ("vault:v:QUJD", False),
        ("vault:v12345678901:QUJD", False),
        ("vault:v1:", False),
        ("vault:v1:ab=cd", False),  # padding only at the end
        ("vault:v1:ab===", False),
        ("vault:v1:ab-_", False),  # transit writes standard base64, not URL-safe
        ("vault:v1:QU JD", False),
        ("vault:v1:QUJD\n", False),
        (" vault:v1:QUJD", False),
        ("VAULT:v1:QUJD", False),
    ],
)
def test_the_job_schema_and_the_key_admin_agree_on_a_sealed_key(sealed: str, valid: bool) -> None:
    assert job_accepts(sealed) is valid
    assert (SEALED_KEY.fullmatch(sealed) is not None) is valid


@pytest.mark.parametrize(("identifier", "valid"), [("ws-1_A", True), ("x" * 64, True), ("x" * 65, False),
                                                   ("", False), ("ws.1", False), ("ws\n", False)])
def test_the_key_admin_takes_the_contract_identifier(identifier: str, valid: bool) -> None:
    assert (WORKSPACE_ID.fullmatch(identifier) is not None) is valid


def test_the_bucket_names_are_the_token_counts_fields() -> None:
    assert tuple(TokenCounts.model_fields) == TOKEN_BUCKETS
    assert set(TOKEN_BUCKETS) <= set(UsageEvent.model_fields)
    assert set(TOKEN_BUCKETS) <= set(COUNTER_NAMES) == {f.name for f in fields(Counters)}
