"""worker.keys.endpoint: which addresses the worker calls by default, and how BYOK_ALLOWED_HOSTS opens others."""

from __future__ import annotations

import pytest

from schemas.models import Provider
from worker.keys.endpoint import (
    Endpoint,
    NonPublicAddress,
    check_public,
    check_resolved,
    is_listed,
    is_public_address,
    literal_address,
)
from worker.settings import Settings

REFUSED = {
    "loopback": ["http://127.0.0.1:11434", "http://127.8.9.10", "http://[::1]:8080", "http://localhost:11434",
                 "http://api.localhost", "http://localhost."],
    "legacy spellings of loopback": ["http://2130706433", "http://127.1", "http://0x7f.0.0.1",
                                     "http://017700000001"],
    "private (RFC 1918)": ["http://10.0.0.5", "http://172.16.0.1", "http://172.31.255.255", "http://192.168.1.1"],
    "unique local (fc00::/7)": ["http://[fc00::1]", "http://[fd12:3456::1]"],
    "link-local and metadata": ["http://169.254.169.254/latest", "http://169.254.170.2", "http://[fe80::1]",
                                "http://168.63.129.16", "http://100.100.100.200", "http://[fd00:ec2::254]"],
    "CGNAT (100.64/10)": ["http://100.64.0.1", "http://100.127.255.254"],
    "unspecified": ["http://0.0.0.0:11434", "http://[::]"],
    "multicast": ["http://224.0.0.1", "http://239.255.255.250", "http://[ff02::1]"],
    "IPv4 inside IPv6": ["http://[::ffff:127.0.0.1]", "http://[::ffff:a9fe:a9fe]", "http://[64:ff9b::a9fe:a9fe]",
                         "http://[2002:c0a8:101::1]"],
}
PUBLIC = ["https://8.8.8.8", "http://1.1.1.1:11434", "https://[2606:4700::1111]", "https://api.openai.com/v1",
          "http://localhost.evil.example.com", "http://100.128.0.1"]


@pytest.mark.parametrize("url", [url for urls in REFUSED.values() for url in urls])
@pytest.mark.parametrize("provider", [Provider.OLLAMA, Provider.OPENAI])
def test_non_public_destinations_are_refused_unless_listed(url: str, provider: Provider) -> None:
    endpoint = Endpoint.resolve(provider, url)
    with pytest.raises(NonPublicAddress) as refused:
        check_public(endpoint, None)
    # One message whatever the kind of address: a job learns nothing about the worker's network from it.
    assert str(refused.value) == str(NonPublicAddress(endpoint.host))
    with pytest.raises(NonPublicAddress):
        check_public(endpoint, frozenset({"api.openai.com"}))
    check_public(endpoint, frozenset({endpoint.host}))
    check_public(endpoint, frozenset({f"{_bracketed(endpoint.host)}:{endpoint.port}"}))


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@pytest.mark.parametrize("url", PUBLIC)
def test_public_destinations_need_no_listing(url: str) -> None:
    check_public(Endpoint.resolve(Provider.OLLAMA, url), None)


def test_a_host_port_listing_covers_that_port_only() -> None:
    listed = frozenset({"127.0.0.1:8099", "[::1]:11434"})
    check_public(Endpoint.resolve(Provider.OLLAMA, "http://127.0.0.1:8099"), listed)
    check_public(Endpoint.resolve(Provider.OLLAMA, "http://[::1]:11434"), listed)
    for other in ("http://127.0.0.1:8100", "http://127.0.0.1", "http://[::1]:11435"):
        with pytest.raises(NonPublicAddress):
            check_public(Endpoint.resolve(Provider.OLLAMA, other), listed)


def test_a_listing_names_the_default_port_too() -> None:
    assert is_listed("llm.internal", 443, {"llm.internal:443"})
    check_public(Endpoint.resolve(Provider.OLLAMA, "https://10.0.0.9"), frozenset({"10.0.0.9:443"}))
    assert not is_listed("llm.internal", 80, {"llm.internal:443"})
    assert is_listed("::1", 80, {"[::1]"}) and is_listed("::1", 80, {"::1"})


@pytest.mark.parametrize(("host", "address"), [
    ("127.0.0.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("127.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"),
    ("[::1]", "::1"), ("api.openai.com", None), ("1e100.net", None), ("deadbeef", None),
])
def test_literal_addresses_are_read_as_the_c_library_reads_them(host: str, address: str | None) -> None:
    found = literal_address(host)
    assert (str(found) if found is not None else None) == address


def test_resolved_addresses_are_all_checked() -> None:
    check_resolved("api.example.com", 443, ["93.184.216.34", "2606:2800:220:1::1"], None)
    for answer in (["93.184.216.34", "10.0.0.1"], ["fe80::1%eth0"], ["169.254.169.254"], ["not-an-address"]):
        with pytest.raises(NonPublicAddress):
            check_resolved("api.example.com", 443, answer, None)
    check_resolved("ollama.internal", 11434, ["10.0.0.1"], frozenset({"ollama.internal:11434"}))


def test_metadata_addresses_are_never_public() -> None:
    for text in ("169.254.169.254", "168.63.129.16", "fd00:ec2::254", "100.100.100.200"):
        address = literal_address(text)
        assert address is not None and not is_public_address(address)


def test_allowed_hosts_take_host_port_entries_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOK_ALLOWED_HOSTS", " 127.0.0.1:8099 , [::1]:11434,Ollama.Internal:11434 ")
    allowed = Settings().allowed_hosts
    assert allowed == frozenset({"127.0.0.1:8099", "[::1]:11434", "ollama.internal:11434"})
    check_public(Endpoint.resolve(Provider.OLLAMA, "http://[::1]:11434"), allowed)
    check_resolved("ollama.internal", 11434, ["10.0.0.7"], allowed)
