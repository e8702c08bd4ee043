"""The load generator and result collector: publishes jobs, timestamps every result as it arrives.

Hot paths use aiormq directly (the layer under aio-pika) so this process takes as little CPU from the
measured ones as it can; topology declarations go through ``worker.broker.topology`` like the worker's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
import orjson
from aiormq.abc import DeliveredMessage

from worker.broker.names import CONTENT_TYPE, JOB_ROUTING_KEY, Topology
from worker.broker.topology import TopologySpec, declare_topology, topology_spec

PUBLISH_BATCH = 500


def job_body(
    job_id: str, workspace_id: str, sealed_key: str, base_url: str, *, model: str = "gpt-4o-mini", run: str = "bench"
) -> bytes:
    """A typical small chat job: system prompt, one user message, a few options, tags and metadata."""
    return orjson.dumps({
        "schema": "byok.completion_job.v1",
        "job_id": job_id,
        "workspace_id": workspace_id,
        "automation_id": "bench-automation",
        "tags": {"run": run, "agent": "bench"},
        "model": {"provider": "openai", "name": model, "base_url": base_url, "sealed_key": sealed_key},
        "input": {
            "system": "You are a terse assistant.",
            "messages": [{"role": "user", "content": f"Benchmark job {job_id}: answer in one short sentence."}],
            "max_tokens": 64,
            "temperature": 0.2,
        },
        "metadata": {"run": run, "seq": job_id},
    })


@dataclass
class Window:
    """Rate and CPU between the ``lo``-th and the ``hi``-th result (warm-up and tail left out)."""

    lo: int
    hi: int
    started: float = 0.0
    ended: float = 0.0
    on_start: Callable[[], None] | None = None
    on_end: Callable[[], None] | None = None

    @property
    def rate(self) -> float:
        return (self.hi - self.lo) / (self.ended - self.started)


@dataclass
class Collector:
    """Every result on the results exchange: arrival time per message id."""

    expected: int = 0
    window: Window | None = None
    arrivals: dict[str, float] = field(default_factory=dict)
    count: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_message(self, message: DeliveredMessage) -> None:
        now = time.perf_counter()
        message_id = message.header.properties.message_id or ""
        self.arrivals[message_id] = now
        self.count += 1
        window = self.window
        if window is not None:
            if self.count == window.lo:
                window.started = now
                if window.on_start:
                    window.on_start()
            elif self.count == window.hi:
                window.ended = now
                if window.on_end:
                    window.on_end()
        if self.expected and self.count >= self.expected:
            self.done.set()

    def reset(self, expected: int, window: Window | None = None) -> None:
        self.expected = expected
        self.window = window
        self.count = 0
        self.arrivals = {}
        self.done = asyncio.Event()

    async def wait(self, timeout_s: float) -> None:
        await asyncio.wait_for(self.done.wait(), timeout_s)


class Load:
    """One topology (by prefix) on the bench vhost: publish jobs, collect results."""

    def __init__(self, amqp_url: str, prefix: str, delivery_limit: int = 5) -> None:
        self.amqp_url = amqp_url
        self.names = Topology(prefix)
        self.delivery_limit = delivery_limit
        self.collector = Collector()
        self.sent_at: dict[str, float] = {}
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._publish: aiormq.abc.AbstractChannel | None = None

    async def __aenter__(self) -> Load:
        declaring = await aio_pika.connect(self.amqp_url)
        async with declaring:
            channel = await declaring.channel()
            await declare_topology(channel, self._publishing_spec())
        self._connection = await aiormq.connect(self.amqp_url)
        self._publish = await self._connection.channel(publisher_confirms=True)
        consume = await self._connection.channel()
        declared = await consume.queue_declare(exclusive=True, auto_delete=True)
        assert declared.queue is not None
        await consume.queue_bind(declared.queue, self.names.results_exchange, routing_key="#")
        await consume.basic_consume(declared.queue, self.collector.on_message, no_ack=True)
        return self

    def _publishing_spec(self) -> TopologySpec:
        # Only what the bench publishes to and reads from (the exchanges and the jobs queue): the worker under
        # test declares the rest itself, so a worker from another tree (``--worker-src``) whose aggregator
        # queues carry other arguments is not refused for a declaration the bench made.
        full = topology_spec(self.names, delivery_limit=self.delivery_limit)
        queues = tuple(q for q in full.queues if q.name == self.names.jobs_queue)
        bindings = tuple(b for b in full.bindings if b.queue == self.names.jobs_queue)
        return TopologySpec(full.exchanges, queues, bindings)

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    def _properties(self, job_id: str) -> aiormq.spec.Basic.Properties:
        return aiormq.spec.Basic.Properties(content_type=CONTENT_TYPE, delivery_mode=2, message_id=job_id)

    async def _publish_one(self, job_id: str, body: bytes) -> Any:
        assert self._publish is not None
        return await self._publish.basic_publish(
            body, exchange=self.names.jobs_exchange, routing_key=JOB_ROUTING_KEY, properties=self._properties(job_id)
        )

    async def prefill(self, jobs: Sequence[tuple[str, bytes]]) -> float:
        """Publishes every job (confirmed) as fast as it can; returns seconds taken."""
        started = time.perf_counter()
        for offset in range(0, len(jobs), PUBLISH_BATCH):
            await asyncio.gather(*(self._publish_one(i, b) for i, b in jobs[offset : offset + PUBLISH_BATCH]))
        return time.perf_counter() - started

    async def paced(self, jobs: Sequence[tuple[str, bytes]], rate: float, start_at: float | None = None) -> None:
        """Publishes ``rate`` jobs per second, recording each one's publish time in ``sent_at``."""
        start = start_at or time.perf_counter()
        pending: set[asyncio.Task[Any]] = set()
        for index, (job_id, body) in enumerate(jobs):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self.sent_at[job_id] = time.perf_counter()
            task = asyncio.create_task(self._publish_one(job_id, body))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)

    async def burst(self, jobs: Sequence[tuple[str, bytes]]) -> None:
        """Publishes all of ``jobs`` at once, recording the publish time of each."""
        now = time.perf_counter()
        for job_id, _ in jobs:
            self.sent_at[job_id] = now
        await asyncio.gather(*(self._publish_one(i, b) for i, b in jobs))

    def latencies_ms(self, job_ids: Sequence[str]) -> list[float]:
        arrivals = self.collector.arrivals
        return [(arrivals[j] - self.sent_at[j]) * 1000 for j in job_ids if j in arrivals and j in self.sent_at]


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
