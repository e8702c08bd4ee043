"""The raw limit for P1: a bare aio-pika loop doing only the broker work of one job.

Consume a job, publish two confirmed persistent messages (a result and a usage event of the
worker's usual size, to the same exchanges), then ack; same prefetch as the worker. Nothing else:
no parsing, no Vault, no provider call. ``python -m tests.bench.bare`` with ``BENCH_AMQP_URL``,
``BENCH_PREFIX`` and ``BENCH_PREFETCH`` in the environment; SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage

from worker.broker.names import CONTENT_TYPE, Topology

# A result and a usage event shaped like the worker's for the bench jobs (sizes matter to the broker).
RESULT = orjson.dumps({
    "schema": "byok.completion_result.v1", "job_id": "bench-0000000", "workspace_id": "bench-ws-00",
    "automation_id": "bench-automation", "status": "succeeded", "provider": "openai", "model": "gpt-4o-mini",
    "output": {"text": "sim: Benchmark job bench-0000000: answer in", "finish_reason": "stop"},
    "usage": {"input_tokens": 14, "cache_read_tokens": 0, "cache_write_tokens": 0, "output_tokens": 7,
              "reasoning_tokens": 0},
    "error": None, "attempts": 1, "latency_ms": 1.234, "finished_at": "2025-01-01T00:00:00.000000Z",
    "metadata": {"run": "bench", "seq": "bench-0000000"},
})
USAGE = orjson.dumps({
    "input_tokens": 14, "cache_read_tokens": 0, "cache_write_tokens": 0, "output_tokens": 7, "reasoning_tokens": 0,
    "schema": "byok.usage_event.v1", "event_id": "6f1c1f4e-8d0b-4a57-9d6c-7a4f0b1b2c3d", "job_id": "bench-0000000",
    "workspace_id": "bench-ws-00", "automation_id": "bench-automation", "tags": {"run": "bench", "agent": "bench"},
    "provider": "openai", "model": "gpt-4o-mini", "occurred_at": "2025-01-01T00:00:00.000000Z", "latency_ms": 1.0,
    "status": "succeeded", "usage_reported": True,
    "raw_usage": {"prompt_tokens": 14, "completion_tokens": 7, "total_tokens": 21},
})


async def main() -> None:
    names = Topology(os.environ["BENCH_PREFIX"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    connection = await aio_pika.connect(os.environ["BENCH_AMQP_URL"])
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=int(os.environ["BENCH_PREFETCH"]))
        results = await channel.get_exchange(names.results_exchange, ensure=False)
        usage = await channel.get_exchange(names.usage_exchange, ensure=False)
        queue = await channel.get_queue(names.jobs_queue, ensure=False)

        def message(body: bytes, message_id: str | None) -> aio_pika.Message:
            return aio_pika.Message(body, content_type=CONTENT_TYPE, content_encoding="utf-8",
                                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=message_id,
                                    timestamp=datetime.now(UTC))

        async def on_message(incoming: AbstractIncomingMessage) -> None:
            await asyncio.gather(
                results.publish(message(RESULT, incoming.message_id), "bench-ws.bench-automation.succeeded"),
                usage.publish(message(USAGE, None), "bench-ws.openai"),
            )
            await incoming.ack()

        await queue.consume(on_message)
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
