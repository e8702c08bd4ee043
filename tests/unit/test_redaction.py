"""worker.redaction: keys out of every string and log event, ordinary text left alone."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import httpx
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from worker.redaction import REDACTED, is_sensitive_name, redact_event, redact_text, scrub_text

OPENAI = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
ANTHROPIC = "sk-ant-api03-Zx9yW8vU7tS6rQ5pO4nM3lK2jI1hG0fE-AbCdEf"
MISTRAL = "q8Zr3LmN5pT7vX9bC2dF4gH6jK8mQ0sU"  # no prefix: only its context gives it away
OPENBAO_TOKEN = "s.lvQ3xZr8Kp2Lm9Nc4Vb7Tg1H"
JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@pytest.mark.parametrize(("text", "secret"), [
    (f"calling with {OPENAI} now", OPENAI),
    ("legacy sk-AbCdEfGhIjKlMnOpQrStUvWx01234567", "sk-AbCdEfGhIjKlMnOpQrStUvWx01234567"),
    ("service sk-svcacct-AbCdEfGhIjKl_mnop-1234", "sk-svcacct-AbCdEfGhIjKl_mnop-1234"),
    (f'{{"api_key": "{ANTHROPIC}"}}', ANTHROPIC),
    (f"Authorization: Bearer {OPENAI}", OPENAI),
    ("authorization: bearer abcdef0123456789abcdef", "abcdef0123456789abcdef"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZC0xMjM0NQ==", "dXNlcjpwYXNzd29yZC0xMjM0NQ=="),
    (f"x-api-key: {MISTRAL}", MISTRAL),
    (f"{{'x-api-key': '{MISTRAL}', 'accept': 'json'}}", MISTRAL),
    (f'headers={{"Authorization": "Bearer {MISTRAL}"}}', MISTRAL),
    (f"api-key={MISTRAL}", MISTRAL),
    (f"X-Vault-Token: {OPENBAO_TOKEN}", OPENBAO_TOKEN),
    (f"token {OPENBAO_TOKEN} expired", OPENBAO_TOKEN),
    ("vault token hvs.CAESIAbCdEfGhIjKlMnOp12345", "hvs.CAESIAbCdEfGhIjKlMnOp12345"),
    (f"service account {JWT}", JWT),
    (f"GET https://generativelanguage.example.com/v1/models?key={MISTRAL}&alt=json", MISTRAL),
    (f"https://host/path?api_key={MISTRAL}", MISTRAL),
    (f"https://host/path?x=1&access_token={MISTRAL}#frag", MISTRAL),
    ("https://host/login?password=hunter2hunter2", "hunter2hunter2"),
    ("connecting to amqp://byok-worker:Rabbit-Pa55@rabbitmq:5672/", "Rabbit-Pa55"),
    ("store postgresql://agg:pg.Pa55-word@db:5432/byok unreachable", "pg.Pa55-word"),
])
def test_secrets_are_scrubbed_from_text(text: str, secret: str) -> None:
    out = redact_text(text)
    assert secret not in out
    assert REDACTED in out


def test_the_text_around_a_secret_survives() -> None:
    assert redact_text(f"provider said: invalid key {OPENAI}.") == f"provider said: invalid key {REDACTED}."
    assert redact_text(f"https://h/v1?key={MISTRAL}&alt=json") == f"https://h/v1?key={REDACTED}&alt=json"
    assert redact_text(f"x-api-key: {MISTRAL}, accept: json") == f"x-api-key: {REDACTED}, accept: json"


@pytest.mark.parametrize("text", [
    "the disk-usage-warning fired for task-runner-queue-7",
    "risk-assessment-completed",
    "process.abcdefghijklmnopqrstuvwxyz0123",
    "input_tokens=1234 output_tokens=56 max_tokens=4096",
    "https://api.openai.com/v1/chat/completions",
    "authorization failed for workspace ws-1",
    "model gpt-4o-mini answered in 812 ms",
    "Incorrect API key provided: sk-proj-****************************abcd.",  # already masked by OpenAI
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_text(text) == text


_KEY_BODY = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=16,
                    max_size=64)


@given(prefix=st.sampled_from(["sk-", "sk-proj-", "sk-ant-api03-", "sk-svcacct-"]), body=_KEY_BODY,
       before=st.text(max_size=30), after=st.text(max_size=30),
       delimiter=st.sampled_from([" ", '"', "'", "=", ":", "(", "/", ",", "\n", "\t"]))
def test_a_prefixed_key_never_survives_in_any_text(prefix: str, body: str, before: str, after: str,
                                                   delimiter: str) -> None:
    key = prefix + body
    out = redact_text(before + delimiter + key + delimiter + after)
    assert key not in out


@given(value=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", min_size=12,
                     max_size=48),
       header=st.sampled_from(["x-api-key", "X-Api-Key", "api-key", "Authorization", "x-goog-api-key"]),
       sep=st.sampled_from([": ", "=", "': '", '": "', ":"]))
def test_any_header_value_never_survives(value: str, header: str, sep: str) -> None:
    out = redact_text(f"{{'{header}{sep}{value}'}}" if sep.startswith("'") else f"{header}{sep}{value}")
    assert value not in out


@pytest.mark.parametrize("name", [
    "authorization", "Authorization", "x-api-key", "X_API_KEY", "api_key", "apiKey", "x-vault-token",
    "token", "secret_id", "plaintext", "password", "key", "provider_key", "vault_token", "openai_api_key",
    "client_secret", "refresh_token", "jwt", b"authorization", b"X-Api-Key",
])
def test_sensitive_names(name: str | bytes) -> None:
    assert is_sensitive_name(name)


@pytest.mark.parametrize("name", [
    "event", "workspace_id", "input_tokens", "output_tokens", "max_tokens", "cache_read_tokens", "provider",
    "sealed_key_version", "status", "latency_ms", 42, None,
])
def test_ordinary_names(name: object) -> None:
    assert not is_sensitive_name(name)


def test_redact_event_replaces_sensitive_fields_and_scrubs_the_rest() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    event = redact_event(None, "info", {
        "event": f"call failed with {OPENAI}",
        "X-Api-Key": MISTRAL,
        "vault_token": OPENBAO_TOKEN,
        "secret_id": "0b1d7a5e-0000-4000-8000-00000000dead",
        "input_tokens": 12,
        "ok": True,
        "at": when,
        "request": {"headers": {"Authorization": f"Bearer {MISTRAL}", "accept": "json"},
                    "url": f"https://h/v1?key={MISTRAL}"},
        "raw_headers": [(b"x-api-key", MISTRAL.encode()), (b"accept", b"json")],
        "pairs": [["authorization", f"Bearer {MISTRAL}"]],
        "error": RuntimeError(f"provider rejected {ANTHROPIC}"),
        "body": f'{{"key": "{OPENAI}"}}'.encode(),
        "secret": SecretStr(MISTRAL),
        "tags": ("plain", OPENAI),
    })
    rendered = json.dumps(event, default=str)
    for secret in (OPENAI, MISTRAL, ANTHROPIC, OPENBAO_TOKEN, "0b1d7a5e-0000-4000-8000-00000000dead"):
        assert secret not in rendered
    assert event["input_tokens"] == 12 and event["ok"] is True and event["at"] == when
    assert event["X-Api-Key"] == REDACTED
    assert event["request"]["headers"] == {"Authorization": REDACTED, "accept": "json"}
    assert event["raw_headers"] == [["x-api-key", REDACTED], ["accept", "json"]]
    assert "RuntimeError" in event["error"] and "provider rejected" in event["error"]
    assert event["tags"] == ["plain", REDACTED]


def test_httpx_objects_are_scrubbed() -> None:
    headers = httpx.Headers({"Authorization": f"Bearer {OPENAI}", "x-api-key": MISTRAL, "accept": "json"})
    url = httpx.URL(f"https://h/v1/models?key={MISTRAL}")
    event = redact_event(None, "info", {"event": "request", "headers": headers, "url": url})
    assert event["headers"] == {"authorization": REDACTED, "x-api-key": REDACTED, "accept": "json"}
    assert MISTRAL not in event["url"]


def test_a_structlog_json_pipeline_never_prints_a_key() -> None:
    out = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(file=out),
        processors=[structlog.processors.format_exc_info, redact_event, structlog.processors.JSONRenderer()],
    )
    logger.info("provider call", authorization=f"Bearer {OPENAI}", headers={"x-api-key": MISTRAL})
    try:
        raise ValueError(f"bad key {ANTHROPIC}")
    except ValueError:
        logger.exception("provider call failed", url=f"https://h/?api_key={MISTRAL}")
    text = out.getvalue()
    for secret in (OPENAI, MISTRAL, ANTHROPIC):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["event"] == "provider call"
    assert "ValueError: bad key" in lines[1]["exception"]


_FRAGMENTS = [OPENAI, ANTHROPIC, MISTRAL, OPENBAO_TOKEN, JWT, "amqp://", "u:p@", "https://",
              "hvs.CAESIAbCdEfGhIjKlMnOp12345", "Bearer ", "BASIC ",
              "Authorization", "x-api-key", "X-Goog-Api-Key", "x-vault-token", "Cookie", "api_key=", "?key=",
              "&token=", ": ", "=", "'", '"', " ", "job-17", "ws_a", "gpt-4o-mini", "s.", "b.", "r.", "eyJ", "sk-"]


@given(st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=12)), max_size=12))
def test_the_quick_path_changes_nothing(parts: list[str]) -> None:
    text = "".join(parts)
    assert redact_text(text) == scrub_text(text)
