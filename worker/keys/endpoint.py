"""Provider endpoints: base-URL normalisation, the binding sealed into a key, and where keys may travel."""

from __future__ import annotations

import base64
import functools
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from schemas.models import Provider

DEFAULT_BASE_URLS: dict[Provider, str] = {
    Provider.OPENAI: "https://api.openai.com/v1",
    Provider.ANTHROPIC: "https://api.anthropic.com",
    Provider.MISTRAL: "https://api.mistral.ai",
    Provider.OLLAMA: "http://127.0.0.1:11434",
}

BINDING_VERSION = "byok-binding-v1"


class EndpointError(ValueError):
    pass


def normalize_base_url(url: str) -> str:
    """Scheme and host lower-case, default port dropped, trailing ``/`` removed (DESIGN.md)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise EndpointError("base_url must use http or https")
    if not parts.hostname:
        raise EndpointError("base_url has no host")
    if parts.username or parts.password:
        raise EndpointError("base_url must not carry credentials")
    if parts.query or parts.fragment:
        raise EndpointError("base_url must not carry a query or fragment")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError as exc:
        raise EndpointError("base_url has an invalid port") from exc
    default_port = 443 if scheme == "https" else 80
    netloc = host if port in (None, default_port) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True, slots=True)
class Endpoint:
    provider: Provider
    base_url: str

    @classmethod
    def resolve(cls, provider: Provider, base_url: str | None) -> Endpoint:
        return _resolve(provider, base_url)

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or ""

    @property
    def is_plain_http(self) -> bool:
        return self.base_url.startswith("http://")

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_vault_addr(addr: str, *, allow_plain_http: bool) -> None:
    """Vault answers a decrypt with the clear key, and every request carries a token: https off loopback."""
    parts = urlsplit(addr)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointError(f"BYOK_VAULT_ADDR {addr!r} is not an http(s) URL")
    if parts.scheme == "http" and not allow_plain_http and not is_loopback_host(parts.hostname.lower()):
        raise EndpointError(
            f"BYOK_VAULT_ADDR {addr!r} is plain http to a host that is not loopback: keys and tokens would cross "
            "the network in clear. Use https, or set BYOK_VAULT_ALLOW_PLAIN_HTTP=true for a dev server"
        )


@functools.lru_cache(maxsize=1024)
def _resolve(provider: Provider, base_url: str | None) -> Endpoint:
    # Jobs name the same few endpoints over and over; a refused URL raises and is not cached.
    return Endpoint(provider, normalize_base_url(base_url or DEFAULT_BASE_URLS[provider]))


def binding(workspace_id: str, endpoint: Endpoint) -> bytes:
    """What a sealed key is bound to: the transit ``context`` of its derived workspace key, at seal and unseal."""
    return f"{BINDING_VERSION}|{workspace_id}|{endpoint.provider.value}|{endpoint.base_url}".encode()


def binding_b64(workspace_id: str, endpoint: Endpoint) -> str:
    return base64.b64encode(binding(workspace_id, endpoint)).decode()


def check_destination(endpoint: Endpoint, allowed_hosts: frozenset[str] | None, *, carries_key: bool) -> None:
    """Refuse before any byte leaves: hosts outside the allow-list, keys over plain http off loopback."""
    if allowed_hosts is not None and endpoint.host not in allowed_hosts:
        raise EndpointError(f"host {endpoint.host!r} is not in BYOK_ALLOWED_HOSTS")
    if carries_key and endpoint.is_plain_http and not endpoint.is_loopback:
        raise EndpointError("a key is never sent over plain http except to a loopback address")
