"""``BYOK_AMQP_URL`` with one broker node or several: parsing, validation, and a form safe to log.

The value is one URL or a comma-separated list, one per node of a cluster, tried in the order given::

    amqp://byok:secret@rabbit-1:5672/prod,amqp://byok:secret@rabbit-2:5672/prod,rabbit-3:5672

An entry after the first may be just ``host`` or ``host:port``: it takes the scheme, user, password, virtual
host and query of the first entry (a cluster's nodes share them). Errors never quote the value: it usually
carries a password.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

SCHEMES = ("amqp", "amqps")
DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
EXPECTED = "expected amqp://user:password@host:5672/vhost (or amqps://)"


class InvalidAmqpUrl(ValueError):
    """What is wrong with the value, never the value itself."""


@dataclass(frozen=True, slots=True)
class BrokerNode:
    """One node to connect to: its full URL (with the password) and ``host:port`` to name it in logs."""

    url: str
    host: str
    port: int

    @property
    def address(self) -> str:
        """``host:port``, never the user or password: what logs, errors and metrics name a node by."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_amqp_urls(value: str) -> tuple[BrokerNode, ...]:
    """The nodes of ``value`` in order; ``InvalidAmqpUrl`` (saying which entry, not quoting it) if any is wrong."""
    entries = [entry.strip() for entry in value.split(",")]
    if not entries or any(not entry for entry in entries):
        raise InvalidAmqpUrl(f"an empty entry in the list of nodes: {EXPECTED}, several separated by commas")
    first = _node(entries[0], None, 1)
    nodes = [first, *(_node(entry, first.url, n) for n, entry in enumerate(entries[1:], start=2))]
    addresses = [node.address for node in nodes]
    if len(set(addresses)) != len(addresses):
        raise InvalidAmqpUrl("the same node (host:port) is listed twice")
    return tuple(nodes)


def _node(entry: str, first_url: str | None, position: int) -> BrokerNode:
    where = "" if first_url is None and position == 1 else f" (node {position})"
    if first_url is not None and "://" not in entry:
        # host or host:port: the first entry's scheme, credentials, vhost and query.
        base = urlsplit(first_url)
        credentials = base.netloc.rpartition("@")[0]
        entry = urlunsplit(base._replace(netloc=f"{credentials}@{entry}" if credentials else entry))
    try:
        parts = urlsplit(entry)
        port = parts.port
    except ValueError:
        raise InvalidAmqpUrl(f"not a URL{where} (amqp://user:password@host:5672/vhost)") from None
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise InvalidAmqpUrl(f"{EXPECTED}{where}")
    return BrokerNode(entry, parts.hostname, port or DEFAULT_PORTS[parts.scheme])


def describe_nodes(value: str) -> str:
    """The nodes as ``host:port, host:port`` for logs and errors, or a placeholder when the value is invalid."""
    try:
        return ", ".join(node.address for node in parse_amqp_urls(value))
    except InvalidAmqpUrl:
        return "the broker in BYOK_AMQP_URL"


def redact_amqp_url(url: str) -> str:
    """``url`` with the password of each entry replaced: ``amqp://byok:***@rabbit-1:5672/prod,rabbit-2``."""
    redacted = []
    for entry in url.split(","):
        scheme, sep, rest = entry.strip().partition("://")
        if not sep:
            redacted.append(entry.strip())
            continue
        authority, slash, path = rest.partition("/")
        credentials, at, hostport = authority.rpartition("@")
        if at and ":" in credentials:
            credentials = credentials.split(":", 1)[0] + ":***"
        redacted.append(f"{scheme}://{credentials}{at}{hostport}{slash}{path}")
    return ",".join(redacted)
