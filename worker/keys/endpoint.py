"""Provider endpoints: base-URL normalisation, the binding sealed into a key, and where keys may travel."""

from __future__ import annotations

import base64
import functools
import ipaddress
import re
import socket
from collections.abc import Collection, Iterable
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
    """Scheme and host lower-case, default port dropped, trailing ``/`` removed (schemas/CONTRACT.md)."""
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

    @property
    def port(self) -> int:
        parts = urlsplit(self.base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)


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
    if allowed_hosts is not None and not is_listed(endpoint.host, endpoint.port, allowed_hosts):
        raise EndpointError(f"host {endpoint.host!r} is not in BYOK_ALLOWED_HOSTS")
    if carries_key and endpoint.is_plain_http and not endpoint.is_loopback:
        raise EndpointError("a key is never sent over plain http except to a loopback address")


def check_public(endpoint: Endpoint, allowed_hosts: frozenset[str] | None) -> None:
    """What the worker refuses before connecting: an IP literal (or ``localhost``) that is not a public address,
    unless listed. A host name is checked once resolved, on every connection (``check_resolved``)."""
    host = endpoint.host
    if allowed_hosts is not None and is_listed(host, endpoint.port, allowed_hosts):
        return
    literal = literal_address(host)
    if (literal is not None and not is_public_address(literal)) or _is_localhost_name(host):
        raise NonPublicAddress(host)


# -- where the worker may connect: public addresses, or what BYOK_ALLOWED_HOSTS lists ---------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata and host-agent services; most are in a refused range anyway, Azure's and Oracle's are not.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean…
    "169.254.170.2",  # AWS ECS task metadata
    "168.63.129.16",  # Azure wire server
    "100.100.100.200",  # Alibaba Cloud
    "192.0.0.192",  # Oracle Cloud (classic)
    "fd00:ec2::254",  # AWS over IPv6
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# What the C library reads as an IPv4 address besides the dotted quad: 2130706433, 127.1, 0x7f.0.0.1…
_NUMERIC_IPV4 = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\.?", re.IGNORECASE)


class NonPublicAddress(EndpointError):
    """The host is, or resolves to, an address the worker does not call unless the host is listed.

    One message whatever the address and whether anything listens there: a job learns nothing about
    the worker's network from it.
    """

    def __init__(self, host: str) -> None:
        super().__init__(
            f"host {host!r} is or resolves to a loopback, private, link-local or metadata address, which the "
            "worker does not call unless BYOK_ALLOWED_HOSTS lists it"
        )


def is_listed(host: str, port: int, allowed_hosts: Collection[str]) -> bool:
    """``host`` or ``host:port`` (``[v6]`` or ``[v6]:port`` for an IPv6 address) is in the list."""
    bracketed = f"[{host}]" if ":" in host else host
    return any(entry in allowed_hosts for entry in (host, bracketed, f"{bracketed}:{port}"))


def literal_address(host: str) -> IPAddress | None:
    """The address a host that is an IP literal stands for (legacy IPv4 spellings included), else None."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if _NUMERIC_IPV4.fullmatch(bare):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare.rstrip(".")))
        except OSError:
            return None
    return None


def is_public_address(address: IPAddress) -> bool:
    """A globally routable unicast address that is no metadata service, IPv4 embedded in IPv6 included."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public_address(embedded)
        if address.is_site_local:
            return False
    return address.is_global and not address.is_multicast and address not in METADATA_ADDRESSES


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _is_localhost_name(host: str) -> bool:
    name = host.rstrip(".")
    return name == "localhost" or name.endswith(".localhost")  # RFC 6761: always loopback


def check_resolved(host: str, port: int, addresses: Iterable[str], allowed_hosts: frozenset[str] | None) -> None:
    """What a host name resolved to, checked before the connection that uses it: every address must be public
    unless the host is listed. Run on every resolution, so a name that changes its answer (DNS rebinding)
    is caught at the address actually connected to."""
    if allowed_hosts is not None and is_listed(host, port, allowed_hosts):
        return
    for text in addresses:
        address = literal_address(text.split("%")[0])
        if address is None or not is_public_address(address):
            raise NonPublicAddress(host)
