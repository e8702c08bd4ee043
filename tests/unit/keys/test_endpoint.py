"""worker.keys.endpoint: one spelling per endpoint, the binding sealed into a key, where a key may travel."""

from __future__ import annotations

import base64

import pytest

from schemas.models import Provider
from worker.keys.endpoint import (
    BINDING_VERSION,
    DEFAULT_BASE_URLS,
    Endpoint,
    EndpointError,
    binding,
    binding_b64,
    check_destination,
    normalize_base_url,
)


@pytest.mark.parametrize(("raw", "normal"), [
    ("https://api.openai.com/v1", "https://api.openai.com/v1"),
    ("HTTPS://API.OpenAI.COM/v1", "https://api.openai.com/v1"),
    ("https://api.openai.com/v1/", "https://api.openai.com/v1"),
    ("https://api.openai.com/v1///", "https://api.openai.com/v1"),
    ("https://api.openai.com/", "https://api.openai.com"),
    ("https://api.openai.com", "https://api.openai.com"),
    ("https://api.openai.com:443/v1", "https://api.openai.com/v1"),
    ("http://llm.internal:80/v1", "http://llm.internal/v1"),
    ("https://llm.internal:8443/v1", "https://llm.internal:8443/v1"),
    ("http://llm.internal:443/v1", "http://llm.internal:443/v1"),  # not http's default port
    ("https://llm.internal:80", "https://llm.internal:80"),
    ("  https://api.mistral.ai/  ", "https://api.mistral.ai"),
    ("https://gateway.example.com/OpenAI/V1", "https://gateway.example.com/OpenAI/V1"),  # paths keep case
    ("http://[::1]:11434/", "http://[::1]:11434"),
    ("http://[::1]:80", "http://[::1]"),
    ("http://LOCALHOST:11434", "http://localhost:11434"),
    ("https://api.example.com?", "https://api.example.com"),
])
def test_normalize_base_url(raw: str, normal: str) -> None:
    assert normalize_base_url(raw) == normal
    assert normalize_base_url(normal) == normal  # idempotent


@pytest.mark.parametrize(("raw", "reason"), [
    ("ftp://api.example.com", "http or https"),
    ("api.openai.com/v1", "http or https"),
    ("//api.openai.com/v1", "http or https"),
    ("https://", "no host"),
    ("https:///v1", "no host"),
    ("https://user:pass@api.example.com", "credentials"),
    ("https://api.openai.com@evil.example.com/v1", "credentials"),
    ("https://api.example.com/v1?key=abc", "query"),
    ("https://api.example.com/v1#frag", "fragment"),
    ("https://api.example.com:99999", "port"),
    ("https://api.example.com:http", "port"),
])
def test_bad_base_urls_are_refused(raw: str, reason: str) -> None:
    with pytest.raises(EndpointError, match=reason):
        normalize_base_url(raw)


def test_resolve_uses_the_provider_default_and_normalises() -> None:
    for provider in Provider:
        assert Endpoint.resolve(provider, None).base_url == DEFAULT_BASE_URLS[provider]
    spelled = Endpoint.resolve(Provider.OPENAI, "HTTPS://API.OPENAI.COM:443/v1/")
    assert spelled == Endpoint.resolve(Provider.OPENAI, None)
    assert Endpoint.resolve(Provider.MISTRAL, "").base_url == "https://api.mistral.ai"


@pytest.mark.parametrize(("url", "loopback"), [
    ("http://localhost:11434", True),
    ("http://127.0.0.1:8099", True),
    ("http://127.8.9.10", True),
    ("http://[::1]:11434", True),
    ("http://localhost.evil.example.com", False),
    ("http://0.0.0.0:11434", False),
    ("http://10.0.0.5", False),
    ("http://[::ffff:127.0.0.1]", False),  # mapped addresses do not count: refuse rather than guess
    ("https://api.openai.com", False),
])
def test_loopback(url: str, loopback: bool) -> None:
    assert Endpoint.resolve(Provider.OLLAMA, url).is_loopback is loopback


def test_the_host_is_the_bare_lower_case_name() -> None:
    assert Endpoint.resolve(Provider.OPENAI, "https://API.Example.com:8443/v1").host == "api.example.com"
    assert Endpoint.resolve(Provider.OLLAMA, "http://[::1]:11434").host == "::1"


class TestCheckDestination:
    def test_any_host_without_an_allow_list(self) -> None:
        check_destination(Endpoint.resolve(Provider.OPENAI, "https://anything.example.com"), None, carries_key=True)

    def test_hosts_outside_the_allow_list_are_refused(self) -> None:
        allowed = frozenset({"api.openai.com", "api.anthropic.com"})
        check_destination(Endpoint.resolve(Provider.OPENAI, None), allowed, carries_key=True)
        check_destination(Endpoint.resolve(Provider.OPENAI, "HTTPS://API.OPENAI.COM/v1"), allowed, carries_key=True)
        with pytest.raises(EndpointError, match="BYOK_ALLOWED_HOSTS"):
            check_destination(Endpoint.resolve(Provider.OPENAI, "https://api.openai.com.evil.example.com/v1"),
                              allowed, carries_key=True)
        with pytest.raises(EndpointError, match="BYOK_ALLOWED_HOSTS"):
            check_destination(Endpoint.resolve(Provider.MISTRAL, None), allowed, carries_key=True)
        with pytest.raises(EndpointError, match="BYOK_ALLOWED_HOSTS"):  # also without a key
            check_destination(Endpoint.resolve(Provider.OLLAMA, "http://10.0.0.5:11434"), allowed, carries_key=False)

    @pytest.mark.parametrize("url", ["http://api.example.com/v1", "http://10.0.0.5:8080",
                                     "http://localhost.evil.example.com", "http://0.0.0.0:11434"])
    def test_no_key_over_plain_http_off_loopback(self, url: str) -> None:
        endpoint = Endpoint.resolve(Provider.OPENAI, url)
        with pytest.raises(EndpointError, match="plain http"):
            check_destination(endpoint, None, carries_key=True)
        check_destination(endpoint, None, carries_key=False)  # keyless (Ollama) may go there

    @pytest.mark.parametrize("url", ["http://localhost:8099/v1", "http://127.0.0.1:8099", "http://[::1]:8099",
                                     "https://api.example.com/v1"])
    def test_keys_may_use_http_on_loopback_and_https_anywhere(self, url: str) -> None:
        check_destination(Endpoint.resolve(Provider.OPENAI, url), None, carries_key=True)


class TestBinding:
    def test_it_names_workspace_provider_and_normalised_url(self) -> None:
        endpoint = Endpoint.resolve(Provider.OPENAI, "HTTPS://API.OPENAI.COM/v1/")
        assert binding("ws-1", endpoint) == f"{BINDING_VERSION}|ws-1|openai|https://api.openai.com/v1".encode()
        assert base64.b64decode(binding_b64("ws-1", endpoint)) == binding("ws-1", endpoint)

    def test_every_part_changes_it(self) -> None:
        base = binding_b64("ws-1", Endpoint.resolve(Provider.OPENAI, None))
        others = {
            binding_b64("ws-2", Endpoint.resolve(Provider.OPENAI, None)),
            binding_b64("ws-1", Endpoint.resolve(Provider.MISTRAL, "https://api.openai.com/v1")),
            binding_b64("ws-1", Endpoint.resolve(Provider.OPENAI, "https://api.openai.com/v2")),
            binding_b64("ws-1", Endpoint.resolve(Provider.OPENAI, "https://api.openai.com:8443/v1")),
            binding_b64("ws-1", Endpoint.resolve(Provider.OPENAI, "http://api.openai.com/v1")),
        }
        assert base not in others and len(others) == 5

    def test_equivalent_spellings_bind_the_same(self) -> None:
        spellings = ["https://api.anthropic.com", "HTTPS://api.ANTHROPIC.com/", "https://api.anthropic.com:443//"]
        assert len({binding_b64("ws", Endpoint.resolve(Provider.ANTHROPIC, s)) for s in spellings}) == 1
        assert binding_b64("ws", Endpoint.resolve(Provider.ANTHROPIC, None)) == binding_b64(
            "ws", Endpoint.resolve(Provider.ANTHROPIC, spellings[1]))
