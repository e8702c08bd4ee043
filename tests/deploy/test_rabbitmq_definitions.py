"""deploy/rabbitmq/definitions.json: generated from the worker's topology, imports into a real RabbitMQ,
a real worker starts on it without a PRECONDITION_FAILED, and each user can do its job and no more.

The live test imports the checked-in file with ``rabbitmqctl import_definitions`` into a throwaway vhost
(the file names vhost "/", so a copy is renamed; its users get a random suffix and passwords hashed by
render_definitions.hash_password), and removes the vhost and the users afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import aio_pika
import aiormq
import orjson
import pytest
import structlog

from schemas.models import CompletionJob, Provider
from tests.broker import running
from tests.deploy.conftest import DEPLOY
from tests.services import RABBIT_HOST, RABBIT_PORT, VaultServer, wait_for_port
from tests.waiting import wait_until_sync
from worker.broker.connection import BrokerUnavailable
from worker.broker.names import JOB_ROUTING_KEY, Topology
from worker.broker.topology import aggregator_topology, declare_topology, topology_spec
from worker.cli.submit import submit
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

DEFINITIONS = DEPLOY / "rabbitmq" / "definitions.json"
NAMES = Topology("byok")


def _load_renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_definitions", DEPLOY / "rabbitmq" / "render_definitions.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


render_definitions = _load_renderer()


# ---------------------------------------------------------------- offline

def test_the_checked_in_file_is_what_the_script_renders() -> None:
    assert render_definitions.main(["--check", str(DEFINITIONS)]) == 0, (
        "regenerate: python deploy/rabbitmq/render_definitions.py > deploy/rabbitmq/definitions.json"
    )


def test_the_file_holds_exactly_what_the_worker_and_the_aggregator_declare() -> None:
    """Read independently of the renderer: the objects and arguments the two processes declare, no more."""
    definitions = json.loads(DEFINITIONS.read_text())
    specs = (topology_spec(NAMES, delivery_limit=Settings().delivery_limit), aggregator_topology(NAMES))
    assert {(e["name"], e["type"]) for e in definitions["exchanges"]} == {
        (e.name, e.kind) for spec in specs for e in spec.exchanges
    }
    queues = {q["name"]: q["arguments"] for q in definitions["queues"]}
    assert len(queues) == len(definitions["queues"])
    for spec in specs:
        for queue in spec.queues:
            assert queues.pop(queue.name, queue.arguments) == queue.arguments, queue.name
    assert queues == {}, "queues nobody declares"
    assert sorted((b["source"], b["destination"], b["routing_key"]) for b in definitions["bindings"]) == sorted(
        {(b.exchange, b.queue, b.routing_key) for spec in specs for b in spec.bindings}
    )
    for item in (*definitions["exchanges"], *definitions["queues"]):
        assert item["durable"] is True and item["auto_delete"] is False, item["name"]
    assert all(b["destination_type"] == "queue" for b in definitions["bindings"])
    assert [v["name"] for v in definitions["vhosts"]] == ["/"]
    everything = [*definitions["exchanges"], *definitions["queues"], *definitions["bindings"],
                  *definitions["permissions"], *definitions["topic_permissions"]]
    assert {item["vhost"] for item in everything} == {"/"}


def test_every_queue_a_process_consumes_dead_letters_into_a_declared_queue() -> None:
    """Nothing the worker or the aggregator rejects is dropped: each queue they consume dead-letters somewhere."""
    definitions = json.loads(DEFINITIONS.read_text())
    queues = {q["name"]: q["arguments"] for q in definitions["queues"]}
    bound = {b["source"] for b in definitions["bindings"]}
    for consumed in (NAMES.jobs_queue, NAMES.usage_queue, NAMES.results_aggregator_queue):
        exchange = queues[consumed].get("x-dead-letter-exchange")
        assert exchange in bound, f"{consumed} dead-letters to {exchange!r}, which routes nowhere"
    assert queues[NAMES.usage_queue]["x-dead-letter-exchange"] == NAMES.aggregator_dead_letter_exchange
    assert NAMES.aggregator_dead_letter_queue in queues


def test_no_password_is_checked_in() -> None:
    definitions = json.loads(DEFINITIONS.read_text())
    assert {u["name"] for u in definitions["users"]} == {"byok-worker", "byok-topology", "byok-publisher",
                                                         "byok-aggregator", "byok-keda"}
    assert all(u["password_hash"] == "" for u in definitions["users"])
    assert not any("administrator" in u["tags"] for u in definitions["users"])


def test_passwords_are_hashed_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for user in ("WORKER", "TOPOLOGY", "PUBLISHER", "AGGREGATOR", "KEDA"):
        monkeypatch.setenv(f"BYOK_RABBIT_{user}_PASSWORD", f"pw-{user.lower()}")
    assert render_definitions.main(["--passwords-from-env"]) == 0
    rendered = json.loads(capsys.readouterr().out)
    hashes = [u["password_hash"] for u in rendered["users"]]
    assert all(hashes) and len(set(hashes)) == 5
    assert "pw-worker" not in json.dumps(rendered)
    monkeypatch.delenv("BYOK_RABBIT_KEDA_PASSWORD")
    with pytest.raises(SystemExit, match="BYOK_RABBIT_KEDA_PASSWORD"):
        render_definitions.main(["--passwords-from-env"])


# ---------------------------------------------------------------- live, on the local broker

def _ctl(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(["rabbitmqctl", "-q", *args], input=stdin, capture_output=True, text=True, timeout=60,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args[0]} failed: {result.stderr or result.stdout}")
    return result.stdout


@dataclass
class Imported:
    vhost: str
    users: dict[str, tuple[str, str]]  # role (worker, publisher, …) -> (user name, password)

    def url(self, role: str) -> str:
        name, password = self.users[role]
        return f"amqp://{name}:{password}@{RABBIT_HOST}:{RABBIT_PORT}/{self.vhost}"


@pytest.fixture(scope="module")
def imported() -> Iterator[Imported]:
    wait_for_port(RABBIT_HOST, RABBIT_PORT, 30)
    suffix = secrets.token_hex(4)
    vhost = f"byok-deploy-{suffix}"
    document: dict[str, Any] = json.loads(DEFINITIONS.read_text())
    users: dict[str, tuple[str, str]] = {}
    renamed: dict[str, str] = {}
    for user in document["users"]:
        role = user["name"].removeprefix("byok-")
        password = secrets.token_urlsafe(16)
        renamed[user["name"]] = f"{user['name']}-{suffix}"
        users[role] = (renamed[user["name"]], password)
        user.update(name=renamed[user["name"]], password_hash=render_definitions.hash_password(password))
    document["vhosts"] = [{"name": vhost}]
    for key in ("permissions", "topic_permissions", "exchanges", "queues", "bindings"):
        for item in document[key]:
            item["vhost"] = vhost
            if "user" in item:
                item["user"] = renamed[item["user"]]
    try:
        # On stdin: the rabbitmqctl wrapper runs as the rabbitmq user, which cannot read pytest's tmp dirs.
        _ctl("import_definitions", "--format", "json", stdin=json.dumps(document))
        expected = {q["name"] for q in document["queues"]}
        # Each rabbitmqctl is an Erlang node of its own: polled every 0.2 s, not every 0.02 s.
        wait_until_sync(lambda: set(_ctl("list_queues", "-p", vhost, "name", "--no-table-headers").split()) == expected,
                        poll_s=0.2, what="the definitions import to complete")
        yield Imported(vhost, users)
    finally:
        # Each rabbitmqctl is a short-lived Erlang node: run the five clean-ups side by side.
        cleanups = [["delete_vhost", vhost], *(["delete_user", name] for name, _ in users.values())]
        running = [subprocess.Popen(["rabbitmqctl", "-q", *args], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL) for args in cleanups]
        for process in running:
            process.wait(60)


def _settings(imported: Imported, vault: VaultServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "amqp_url": imported.url("worker"), "topology_prefix": "byok", "vault_addr": vault.addr,
        "vault_token": vault.root_token, "metrics_listen": "127.0.0.1:0", "shutdown_grace_s": 2,
        "declare_topology": False,  # as deployed: byok-worker may configure nothing
        "store_url": "sqlite:///:memory:", "allowed_hosts": frozenset({"127.0.0.1"}),  # the simulator
        **overrides,
    }
    return Settings(**values)


async def _refused(action: Any) -> bool:
    try:
        await action
    except aiormq.exceptions.ChannelAccessRefused:
        return True
    return False


async def test_a_worker_starts_on_the_imported_definitions_and_users_stay_in_their_lane(
    imported: Imported, vault: VaultServer, simulator: ProviderSimulator
) -> None:
    # byok-worker configures nothing: a worker that declares is refused, one that only checks starts.
    with pytest.raises(BrokerUnavailable, match="ACCESS_REFUSED"):
        async with running(Worker(_settings(imported, vault, declare_topology=True))):
            pass
    with structlog.testing.capture_logs() as logs:
        async with running(Worker(_settings(imported, vault))) as worker:
            assert worker.ready.is_set()
            assert [e for e in logs if e["log_level"] in ("warning", "error")] == [], "a clean first start"
            await _exercise_users(imported, simulator)


async def _exercise_users(imported: Imported, simulator: ProviderSimulator) -> None:
    # byok-publisher: a job in, its result back through reply_to and through byok.results.
    publisher = await aio_pika.connect(imported.url("publisher"))
    async with publisher:
        channel = await publisher.channel()
        subscription = await channel.declare_queue(exclusive=True)
        await subscription.bind(NAMES.results_exchange, routing_key="ws-deploy.#")
        body = orjson.dumps({
            "job_id": "deploy-1", "workspace_id": "ws-deploy",
            "model": {"provider": "ollama", "name": "llama3", "base_url": simulator.base_url(Provider.OLLAMA)},
            "input": {"messages": [{"role": "user", "content": "hello"}]},
        })
        job = CompletionJob.model_validate_json(body)
        publisher_settings = Settings(amqp_url=imported.url("publisher"), topology_prefix="byok")
        reply = await submit(publisher_settings, job, wait_s=20)
        assert reply is not None and reply.status == "succeeded"
        message = await subscription.get(timeout=10, fail=True)
        assert message is not None and message.routing_key == "ws-deploy._.succeeded"
        await message.ack()

        # ... and nothing else: no publishing to results or usage, no reading the jobs queue.
        assert await _refused(_publish(imported.url("publisher"), NAMES.results_exchange, "ws-deploy._.succeeded"))
        assert await _refused(_publish(imported.url("publisher"), NAMES.usage_exchange, "ws-deploy.ollama"))
        assert await _refused(_consume(imported.url("publisher"), NAMES.jobs_queue))
        assert await _refused(_consume(imported.url("publisher"), NAMES.dead_letter_queue))

    # byok-aggregator: declares its part of the topology as it does on start, consumes usage events and
    # failed results, publishes alerts; no jobs.
    aggregator = await aio_pika.connect(imported.url("aggregator"))
    async with aggregator:
        await declare_topology(await aggregator.channel(), aggregator_topology(NAMES))
    for queue in aggregator_topology(NAMES).queues:
        assert not await _refused(_consume(imported.url("aggregator"), queue.name)), queue.name
    assert not await _refused(_publish(imported.url("aggregator"), NAMES.alerts_exchange, "ws-deploy.spike"))
    assert await _refused(_publish(imported.url("aggregator"), NAMES.jobs_exchange, JOB_ROUTING_KEY))
    assert await _refused(_consume(imported.url("aggregator"), NAMES.jobs_queue))

    # byok-keda: may look at the queue depth, not touch a message.
    keda = await aio_pika.connect(imported.url("keda"))
    async with keda:
        depth = await (await keda.channel()).declare_queue(NAMES.jobs_queue, passive=True)
        assert depth.declaration_result.message_count == 0
    assert await _refused(_consume(imported.url("keda"), NAMES.jobs_queue))
    assert await _refused(_publish(imported.url("keda"), NAMES.jobs_exchange, JOB_ROUTING_KEY))


async def test_a_topology_that_differs_from_the_definitions_is_refused(imported: Imported) -> None:
    """The control for the test above: the same declaration passes, a different one (here the delivery
    limit) is a PRECONDITION_FAILED, so a clean start really means the file matches the worker."""
    spec = topology_spec(NAMES, delivery_limit=Settings().delivery_limit)
    connection = await aio_pika.connect(imported.url("topology"))
    async with connection:
        await declare_topology(await connection.channel(), spec)
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="x-delivery-limit"):
            await declare_topology(await connection.channel(), topology_spec(NAMES, delivery_limit=6))


async def _publish(url: str, exchange: str, routing_key: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange, ensure=False)
        await target.publish(aio_pika.Message(b"{}", content_type="application/json"), routing_key=routing_key)


async def _consume(url: str, queue_name: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name, ensure=False)
        tag = await queue.consume(_ignore, no_ack=False)
        await queue.cancel(tag)


async def _ignore(_message: aio_pika.abc.AbstractIncomingMessage) -> None:
    return None

