"""Test helpers that a user of the worker could use too: publish jobs, capture what the worker publishes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage

from tests.waiting import wait_until
from worker.aggregator.service import RunningAggregator, run_aggregator
from worker.aggregator.settings import AggregatorSettings
from worker.broker.names import DELAY_STEPS_MS, JOB_ROUTING_KEY, Topology
from worker.broker.topology import declare_topology, topology_spec
from worker.jobs.service import Worker
from worker.settings import Settings


@dataclass
class Captured:
    routing_key: str
    headers: dict[str, Any]
    body: bytes
    message_id: str | None
    correlation_id: str | None
    properties: dict[str, Any] = field(default_factory=dict)
    """Every property and header as the broker delivered it (aio-pika's ``message.info()``)."""

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


KINDS = ("results", "usage", "calls", "dead", "replies", "delayed", "alerts")


@dataclass
class BrokerTap:
    """Everything published on the topology: results, usage events, provider-call records (``calls``: they
    share the usage exchange, routing key ``<workspace>.<provider>.call``), dead letters, replies, delayed
    retries and alerts, as they arrive."""

    results: list[Captured] = field(default_factory=list)
    usage: list[Captured] = field(default_factory=list)
    calls: list[Captured] = field(default_factory=list)
    dead: list[Captured] = field(default_factory=list)
    replies: list[Captured] = field(default_factory=list)
    delayed: list[Captured] = field(default_factory=list)
    alerts: list[Captured] = field(default_factory=list)
    reply_queue: str = ""

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
        await wait_until(predicate, timeout=timeout_s, what=lambda: f"the tap to hold what it should; {self.counts()}")

    def of(self, kind: str) -> list[Captured]:
        captured: list[Captured] = getattr(self, kind)
        return captured

    def counts(self) -> dict[str, int]:
        return {kind: len(self.of(kind)) for kind in KINDS}

    def result_for(self, job_id: str) -> dict[str, Any]:
        matches = [c.json for c in self.results if c.json["job_id"] == job_id]
        assert matches, f"no result for {job_id}"
        return matches[-1]

    def everything(self) -> list[Captured]:
        return [captured for kind in KINDS for captured in self.of(kind)]


def _capture(into: list[Captured], calls: list[Captured] | None = None) -> Callable[[AbstractIncomingMessage], Any]:
    """Appends each message to ``into``; with ``calls``, provider-call records go there instead."""

    async def on_message(message: AbstractIncomingMessage) -> None:
        target = calls if calls is not None and (message.routing_key or "").endswith(".call") else into
        target.append(Captured(message.routing_key or "", dict(message.headers or {}), message.body,
                             message.message_id, message.correlation_id, dict(message.info())))
        await message.ack()

    return on_message


@contextlib.asynccontextmanager
async def broker_tap(settings: Settings, *, usage: bool = True, copies: bool = False) -> AsyncIterator[BrokerTap]:
    """Declares the topology, then listens on results (all keys), replies, delayed retries, alerts, the usage
    queue and the dead-letter queue.

    ``usage=False`` leaves the usage queue to an aggregator under test. ``copies=True`` takes nothing away
    from the real queues: usage events and dead letters are copied through queues of the tap's own, so
    an aggregator or ``byok dlq`` still finds them.
    """
    names = Topology(settings.topology_prefix)
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        await declare_topology(channel, topology_spec(names, delivery_limit=settings.delivery_limit))
        tap = BrokerTap()
        copied = {
            "results": (names.results_exchange, ["#"]),
            "delayed": (names.delay_exchange, [str(step) for step in DELAY_STEPS_MS]),
            "alerts": (names.alerts_exchange, ["#"]),
        }
        if copies:
            copied |= {"usage": (names.usage_exchange, ["#"]), "dead": (names.dead_letter_exchange, [""])}
        for kind, (exchange, keys) in copied.items():
            queue = await channel.declare_queue(exclusive=True)
            for key in keys:
                await queue.bind(exchange, routing_key=key)
            await queue.consume(_capture(tap.of(kind), tap.calls if kind == "usage" else None))
        replies = await channel.declare_queue(exclusive=True)
        tap.reply_queue = replies.name
        await replies.consume(_capture(tap.replies))
        if not copies:
            if usage:
                await (await channel.get_queue(names.usage_queue)).consume(_capture(tap.usage, tap.calls))
            await (await channel.get_queue(names.dead_letter_queue)).consume(_capture(tap.dead))
        yield tap


async def publish_jobs(
    settings: Settings, bodies: list[bytes], *, reply_to: str | None = None, headers: dict[str, Any] | None = None
) -> None:
    names = Topology(settings.topology_prefix)
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(names.jobs_exchange)
        await asyncio.gather(*(
            exchange.publish(
                aio_pika.Message(body, content_type="application/json", reply_to=reply_to,
                                 correlation_id=f"corr-{i}", headers=headers,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=JOB_ROUTING_KEY,
            )
            for i, body in enumerate(bodies)
        ))


def byok(settings: Settings, *args: str, stdin: bytes | None = None, check: bool = True,
         extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Runs the real ``byok`` command with the test's settings in its environment (never in argv)."""
    env = {
        **os.environ,
        "BYOK_AMQP_URL": settings.amqp_url.get_secret_value(),
        "BYOK_TOPOLOGY_PREFIX": settings.topology_prefix,
        "BYOK_VAULT_ADDR": settings.vault_addr,
        "BYOK_VAULT_TOKEN": settings.vault_token.get_secret_value() if settings.vault_token else "",
        "BYOK_STORE_URL": settings.store_url.get_secret_value(),
        **(extra_env or {}),
    }
    result = subprocess.run([sys.executable, "-m", "worker.cli.main", *args], input=stdin, capture_output=True,
                            env=env, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"byok {' '.join(args)} exited {result.returncode}: {result.stderr.decode()[-2000:]}")
    return result


def job_body(job_id: str, workspace_id: str, model: dict[str, Any], *, content: str = "hello there",
             **extra: Any) -> bytes:
    return orjson.dumps({
        "job_id": job_id, "workspace_id": workspace_id, "model": model,
        "input": {"messages": [{"role": "user", "content": content}]}, **extra,
    })


@contextlib.asynccontextmanager
async def running_aggregator(settings: AggregatorSettings) -> AsyncIterator[RunningAggregator]:
    """``running`` for the aggregator: started, ready (its API listening), stopped cleanly when the block ends."""
    stop = asyncio.Event()
    ready: asyncio.Future[RunningAggregator] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_aggregator(settings, stop=stop, on_ready=ready.set_result))
    done, _ = await asyncio.wait([ready, task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    assert ready in done, f"the aggregator did not start: {task.exception() if task.done() else 'timeout'}"
    try:
        yield ready.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)  # a clean stop; re-raises whatever crashed it


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """``worker`` consuming in this event loop until the block ends; its start-up error, if any, is raised."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    ready = asyncio.create_task(worker.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()  # the start-up error, e.g. PRECONDITION_FAILED
    assert ready in done, "the worker did not become ready"
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
