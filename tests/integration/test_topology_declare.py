"""``byok topology declare`` by an administrator, then a worker whose broker user has NO configure permission
(``^$``) runs jobs on that topology with ``BYOK_DECLARE_TOPOLOGY=false``.

The least-privileged user is made with ``rabbitmqctl`` on the session's vhost (RabbitMQ's management API is
not enabled on this broker), with permissions on this test's names only; it is deleted afterwards.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import pytest
from pydantic import SecretStr

from schemas.models import Provider
from tests.broker import broker_tap, byok, job_body, publish_jobs, running
from tests.conftest import Sealer
from tests.services import rabbitmqctl
from worker.broker.connection import BrokerUnavailable
from worker.broker.names import Topology
from worker.broker.topology import check_topology, deployed_topology
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

KEY = "sk-test-Topology0123456789abcdef"


@pytest.fixture
def no_configure_url(settings: Settings) -> Iterator[str]:
    """An AMQP URL for a user that may write and read this test's names (and reply through amq.default) but
    configure nothing, as deploy/rabbitmq/definitions.json gives byok-worker."""
    parts = urlsplit(settings.amqp_url.get_secret_value())
    vhost = parts.path.lstrip("/")
    # hex: a urlsafe password may start with "-", which rabbitmqctl reads as an option
    user, password = f"byok-noconf-{secrets.token_hex(4)}", secrets.token_hex(16)
    prefix = re.escape(settings.topology_prefix)
    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, user, "^$", f"^({prefix}\\..*|amq\\.default)$", f"^{prefix}\\..*$")
        yield urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))
    finally:
        rabbitmqctl("delete_user", user)


async def test_a_worker_without_configure_permission_runs_on_the_topology_an_admin_declared(
    settings: Settings, simulator: ProviderSimulator, seal: Sealer, no_configure_url: str
) -> None:
    restricted = settings.model_copy(update={"amqp_url": SecretStr(no_configure_url), "reconnect_max_s": 1.0})

    # Declaring needs configure: this user cannot start a worker that declares.
    with pytest.raises(BrokerUnavailable, match=r"ACCESS_REFUSED|AccessRefused"):
        async with running(Worker(restricted)):
            pass
    # Only checking, before anything is declared: nothing to find, the worker gives up (exit 1 in `byok worker`).
    with pytest.raises(BrokerUnavailable):
        async with running(Worker(restricted.model_copy(update={"declare_topology": False}))):
            pass

    # The administrator (guest here) declares it with the command deploy/ runs.
    declared = byok(settings, "topology", "declare")
    spec = deployed_topology(Topology(settings.topology_prefix), delivery_limit=settings.delivery_limit)
    assert declared.stdout.decode().strip() == (
        f"declared {len(spec.exchanges)} exchanges, {len(spec.queues)} queues and {len(spec.bindings)} bindings "
        f"(prefix {settings.topology_prefix}, delivery limit {settings.delivery_limit})")
    again = byok(settings, "topology", "declare")  # idempotent
    assert again.returncode == 0
    connection = await aio_pika.connect(no_configure_url)
    async with connection:
        await check_topology(await connection.channel(), spec)  # every exchange and queue, seen by the user

    base_url = simulator.base_url(Provider.OPENAI)
    model = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
             "sealed_key": seal("ws-topology", KEY, Provider.OPENAI, base_url)}
    total = 20
    async with (
        running(Worker(restricted.model_copy(update={"declare_topology": False}))) as worker,
        broker_tap(settings, copies=True) as tap,
    ):
        assert worker.ready.is_set()
        await publish_jobs(settings, [job_body(f"top-{i}", "ws-topology", model) for i in range(total)])
        await tap.wait_for(lambda: len(tap.results) == total and len(tap.usage) == total, timeout_s=30)
    assert sorted(r.json["job_id"] for r in tap.results) == sorted(f"top-{i}" for i in range(total))
    assert all(r.json["status"] == "succeeded" for r in tap.results)
    print(f"\n[topology] declared exchanges={len(spec.exchanges)} queues={len(spec.queues)} "
          f"bindings={len(spec.bindings)}; no-configure worker results={len(tap.results)} usage={len(tap.usage)}")


def test_a_delivery_limit_that_differs_from_the_declared_queue_is_refused(settings: Settings) -> None:
    byok(settings, "topology", "declare")
    refused = byok(settings, "topology", "declare", check=False, extra_env={"BYOK_DELIVERY_LIMIT": "7"})
    assert refused.returncode == 1
    assert len(refused.stderr.decode().strip().splitlines()) == 1
    assert "guest" not in refused.stderr.decode()  # never the URL's credentials
