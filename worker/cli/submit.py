"""``byok submit``: publish a job to byok.jobs with a confirm; with ``--wait``, print its result."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from schemas.models import MAX_JOB_BYTES, CompletionJob
from worker.broker.names import JOB_ROUTING_KEY, Topology
from worker.broker.publisher import Publisher
from worker.cli.broker_errors import BrokerProblem, broker_problems
from worker.cli.common import configured_settings
from worker.settings import ProcessSettings


class SubmitError(RuntimeError):
    pass


def load_job(path: str) -> tuple[CompletionJob, bytes]:
    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    if len(raw) > MAX_JOB_BYTES:
        # The worker dead-letters such a job unread (invalid_job): refuse it before it is published.
        raise SubmitError(f"the job is {len(raw)} bytes; a job is at most {MAX_JOB_BYTES} bytes (1 MiB)")
    try:
        job = CompletionJob.model_validate_json(raw)
    except ValidationError as exc:
        raise SubmitError(f"the job does not match byok.completion_job.v1: {exc.error_count()} error(s)\n"
                          + "\n".join(f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
    return job, raw


async def submit(settings: ProcessSettings, job: CompletionJob, body: bytes, *, wait_s: float | None) -> bytes | None:
    """Publish ``body``; return the result body when ``wait_s`` is given (None on timeout)."""
    names = Topology(settings.topology_prefix)
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        reply_queue = None
        correlation_id = str(uuid.uuid4())
        if wait_s is not None:
            reply_queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        # A passive check first: a missing exchange is then a clear error, not a closed channel mid-publish.
        await channel.get_exchange(names.jobs_exchange)
        await Publisher(channel).publish(
            names.jobs_exchange, JOB_ROUTING_KEY, body, message_id=job.job_id,
            reply_to=reply_queue.name if reply_queue else None, correlation_id=correlation_id,
        )
        if reply_queue is None or wait_s is None:
            return None
        received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_reply(message: AbstractIncomingMessage) -> None:
            await message.ack()
            if message.correlation_id == correlation_id and not received.done():
                received.set_result(message.body)

        await reply_queue.consume(on_reply)
        try:
            return await asyncio.wait_for(received, wait_s)
        except TimeoutError:
            return None


def pretty(body: bytes) -> str:
    return orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode()


def _submit(args: argparse.Namespace) -> int:
    try:
        job, body = load_job(args.file)
    except (SubmitError, OSError) as exc:
        print(f"byok submit: {exc}", file=sys.stderr)
        return 2
    settings = configured_settings(ProcessSettings)
    try:
        with broker_problems(settings):
            result = asyncio.run(submit(settings, job, body, wait_s=args.timeout if args.wait else None))
    except BrokerProblem as exc:
        print(f"byok submit: {exc}", file=sys.stderr)
        return 1
    if not args.wait:
        print(f"published {job.job_id}")
        return 0
    if result is None:
        print(f"byok submit: no result for {job.job_id} within {args.timeout}s", file=sys.stderr)
        return 1
    print(pretty(result))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    commands = subparsers
    job = commands.add_parser(
        "submit", help="publish a completion job",
        description="Validates a job (byok.completion_job.v1, at most 1 MiB) and publishes it to the jobs exchange "
                    "with a publisher confirm; with --wait, prints its result when the worker answers.",
        epilog="settings: BYOK_AMQP_URL, BYOK_TOPOLOGY_PREFIX. exit codes: 0 published (or result printed), "
               "1 broker problem or no result within --timeout, 2 the job is invalid or too large",
    )
    job.add_argument("--file", required=True, help="job JSON file, or - for stdin")
    job.add_argument("--wait", action="store_true", help="wait for the result and print it")
    job.add_argument("--timeout", type=float, default=120.0, help="seconds to wait with --wait (default 120)")
    job.set_defaults(func=_submit)

