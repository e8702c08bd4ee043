"""Render ``deploy/rabbitmq/definitions.json`` from the worker's own topology (``worker.broker.topology``).

The exchanges, queues and bindings are exactly what the processes declare on start: the worker's
``topology_spec(Topology(prefix), delivery_limit=N)`` plus the aggregator's ``aggregator_topology`` (its
failed-results queue), so neither meets a PRECONDITION_FAILED on a broker loaded with this file, and
neither needs to create anything there.
The users carry least-privilege permissions and NO password: the checked-in file has
``"password_hash": ""`` (no password login possible). Passwords are set at deploy time, either

* here: ``--passwords-from-env`` hashes ``BYOK_RABBIT_<ROLE>_PASSWORD`` with
  ``rabbit_password_hashing_sha256`` into the rendered copy (print it, or ``--import-api`` it), or
* on the broker: ``rabbitmqctl change_password byok-worker ...`` after an import.

Importing definitions overwrites the users it names, passwords included: re-run the password step after
every import.

Usage (from the repository root, or anywhere the ``worker`` package is installed, e.g. the byok image)::

    python deploy/rabbitmq/render_definitions.py > deploy/rabbitmq/definitions.json   # regenerate
    python deploy/rabbitmq/render_definitions.py --check deploy/rabbitmq/definitions.json
    python deploy/rabbitmq/render_definitions.py --passwords-from-env --import-api http://rabbitmq:15672
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import worker  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from worker.broker.names import Topology
from worker.broker.topology import aggregator_topology, deployed_topology

HASHING_ALGORITHM = "rabbit_password_hashing_sha256"


@dataclass(frozen=True)
class UserSpec:
    """A broker user: its permissions on the vhost and, per topic exchange, its topic permissions."""

    role: str
    name: str
    tags: tuple[str, ...]
    configure: str
    write: str
    read: str
    topic: tuple[tuple[str, str, str], ...] = ()  # (exchange, write, read)

    @property
    def password_env(self) -> str:
        return f"BYOK_RABBIT_{self.role.upper()}_PASSWORD"


def users(names: Topology) -> tuple[UserSpec, ...]:
    p = re.escape(names.prefix)
    results = names.results_exchange
    mine = aggregator_topology(names)
    my_queues = [q.name for q in mine.queues]
    return (
        # Configures nothing (it runs with BYOK_DECLARE_TOPOLOGY=false and only checks that the topology
        # exists, passively); consumes jobs, publishes results/usage/delays/dead letters and replies to
        # reply_to queues through the default exchange (write on amq.default).
        UserSpec("worker", "byok-worker", (), configure="^$",
                 write=f"^({p}\\..*|amq\\.default)$", read=f"^{p}\\..*$"),
        # `byok topology declare`: declares every exchange, queue and binding of the prefix (binding needs
        # write on the queue and read on the exchange). Used by deploy's set-up only, never by a process.
        UserSpec("topology", "byok-topology", (), configure=f"^{p}\\..*$", write=f"^{p}\\..*$",
                 read=f"^{p}\\..*$"),
        # Publishes jobs and nothing else; reads results through its own server-named exclusive queues
        # (amq.gen-*), bound to <prefix>.results or used as the job's reply_to.
        UserSpec("publisher", "byok-publisher", (), configure="^amq\\.gen-.*$",
                 write=f"^({re.escape(names.jobs_exchange)}|amq\\.gen-.*)$",
                 read=f"^({re.escape(results)}|amq\\.gen-.*)$",
                 # Topic permissions: never publish to results; bind with any <workspace>.<automation>.<status>
                 # key. Narrow the read pattern per tenant (e.g. ^acme\.) when publishers are per workspace.
                 topic=((results, "^$", ".*"),)),
        # Declares its part of the topology (aggregator_topology), consumes its queues (usage events, failed
        # results), publishes alerts. Binding a queue needs write on the queue and read on the exchange.
        UserSpec("aggregator", "byok-aggregator", (),
                 configure=_any_of(*(e.name for e in mine.exchanges), *my_queues),
                 write=_any_of(*my_queues, names.alerts_exchange),
                 read=_any_of(*dict.fromkeys(b.exchange for b in mine.bindings), *my_queues)),
        # KEDA's rabbitmq scaler reads queue depth over the management API: the monitoring tag and access
        # to the vhost, but no configure, write or read on any object.
        UserSpec("keda", "byok-keda", ("monitoring",), configure="^$", write="^$", read="^$"),
    )


def _any_of(*names: str) -> str:
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def hash_password(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt(4) + sha256(salt + password))."""
    salt = secrets.token_bytes(4) if salt is None else salt
    if len(salt) != 4:
        raise ValueError("the salt is 4 bytes")
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def render(prefix: str = "byok", *, delivery_limit: int = 5, vhost: str = "/",
           passwords: dict[str, str] | None = None) -> dict[str, Any]:
    """The definitions document; ``passwords`` maps user name to clear-text password (hashed here)."""
    names = Topology(prefix)
    spec = deployed_topology(names, delivery_limit=delivery_limit)
    passwords = passwords or {}
    user_specs = users(names)
    unknown = set(passwords) - {u.name for u in user_specs}
    if unknown:
        raise ValueError(f"passwords for unknown users: {sorted(unknown)}")
    return {
        "users": [
            {"name": u.name,
             "password_hash": hash_password(passwords[u.name]) if u.name in passwords else "",
             "hashing_algorithm": HASHING_ALGORITHM, "tags": list(u.tags), "limits": {}}
            for u in user_specs
        ],
        "vhosts": [{"name": vhost}],
        "permissions": [
            {"user": u.name, "vhost": vhost, "configure": u.configure, "write": u.write, "read": u.read}
            for u in user_specs
        ],
        "topic_permissions": [
            {"user": u.name, "vhost": vhost, "exchange": exchange, "write": write, "read": read}
            for u in user_specs for exchange, write, read in u.topic
        ],
        "parameters": [],
        "global_parameters": [],
        "policies": [],
        "exchanges": [
            {"name": e.name, "vhost": vhost, "type": e.kind, "durable": True, "auto_delete": False,
             "internal": False, "arguments": {}}
            for e in spec.exchanges
        ],
        "queues": [
            {"name": q.name, "vhost": vhost, "durable": True, "auto_delete": False,
             "arguments": dict(sorted(q.arguments.items()))}
            for q in spec.queues
        ],
        "bindings": [
            {"source": b.exchange, "vhost": vhost, "destination": b.queue, "destination_type": "queue",
             "routing_key": b.routing_key, "arguments": {}}
            for b in spec.bindings
        ],
    }


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2) + "\n"


def passwords_from_env(prefix: str) -> dict[str, str]:
    found, missing = {}, []
    for user in users(Topology(prefix)):
        value = os.environ.get(user.password_env, "")
        if value:
            found[user.name] = value
        else:
            missing.append(user.password_env)
    if missing:
        raise SystemExit(f"render_definitions: set {', '.join(missing)} (or drop --passwords-from-env)")
    return found


def import_via_api(document: dict[str, Any], api_url: str, *, wait_s: float = 120.0) -> None:
    """POST the definitions to the management API (``RABBITMQ_ADMIN_USER`` / ``RABBITMQ_ADMIN_PASSWORD``)."""
    user = os.environ.get("RABBITMQ_ADMIN_USER", "")
    password = os.environ.get("RABBITMQ_ADMIN_PASSWORD", "")
    if not user or not password:
        raise SystemExit("render_definitions: --import-api needs RABBITMQ_ADMIN_USER and RABBITMQ_ADMIN_PASSWORD")
    if not api_url.startswith(("http://", "https://")):
        raise SystemExit("render_definitions: --import-api takes an http(s):// URL")
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        api_url.rstrip("/") + "/api/definitions", data=json.dumps(document).encode(), method="POST",
        headers={"content-type": "application/json", "authorization": f"Basic {auth}"},
    )
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                print(f"render_definitions: imported into {api_url} ({response.status})", file=sys.stderr)
                return
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403) or time.monotonic() > deadline:
                raise SystemExit(f"render_definitions: import refused: HTTP {exc.code}") from None
        except OSError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"render_definitions: {api_url} did not answer: {exc}") from None
        time.sleep(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", default="byok", help="topology prefix (BYOK_TOPOLOGY_PREFIX)")
    parser.add_argument("--delivery-limit", type=int, default=5, help="BYOK_DELIVERY_LIMIT of the workers")
    parser.add_argument("--vhost", default="/")
    parser.add_argument("--passwords-from-env", action="store_true",
                        help="hash BYOK_RABBIT_{WORKER,PUBLISHER,AGGREGATOR,KEDA}_PASSWORD into the users")
    parser.add_argument("--check", metavar="FILE", help="exit 1 if FILE differs from the rendering")
    parser.add_argument("--import-api", metavar="URL", help="POST to the management API instead of printing")
    args = parser.parse_args(argv)
    if args.check and args.passwords_from_env:
        parser.error("--check compares the password-free file: drop --passwords-from-env")

    passwords = passwords_from_env(args.prefix) if args.passwords_from_env else None
    document = render(args.prefix, delivery_limit=args.delivery_limit, vhost=args.vhost, passwords=passwords)
    if args.check:
        if Path(args.check).read_text() != dumps(document):
            print(f"{args.check} is stale: regenerate it with {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    if args.import_api:
        import_via_api(document, args.import_api)
        return 0
    sys.stdout.write(dumps(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
