"""``byok submit``: publish a job to byok.jobs with a confirm (through ``worker.client``); with ``--wait``, print its
result."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import orjson
from pydantic import ValidationError

from schemas.models import MAX_JOB_BYTES, CompletionJob, CompletionResult
from worker.broker.connection import BrokerUnavailable
from worker.cli.broker_errors import BrokerProblem, broker_problems
from worker.cli.common import configured_settings
from worker.cli.parser import bounded
from worker.client import Client, JobNotRouted, ReplyLost
from worker.settings import ProcessSettings


class SubmitError(RuntimeError):
    pass


def load_job(path: str) -> CompletionJob:
    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    if len(raw) > MAX_JOB_BYTES:
        # The worker dead-letters such a job unread (invalid_job): refuse it before it is published.
        raise SubmitError(f"the job is {len(raw)} bytes; a job is at most {MAX_JOB_BYTES} bytes (1 MiB)")
    try:
        job = CompletionJob.model_validate_json(raw)
    except ValidationError as exc:
        raise SubmitError(f"the job does not match byok.completion_job.v1: {exc.error_count()} error(s)\n"
                          + "\n".join(f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
    return job


async def submit(settings: ProcessSettings, job: CompletionJob, *, wait_s: float | None) -> CompletionResult | None:
    """Publish ``job`` through ``worker.client``; with ``wait_s``, return its result (``TimeoutError`` if none)."""
    async with Client(settings.amqp_url, topology_prefix=settings.topology_prefix,
                      reconnect_max_s=settings.reconnect_max_s, name="submit") as client:
        if wait_s is None:
            await client.submit(job)
            return None
        return await client.run(job, timeout=wait_s)


def pretty(result: CompletionResult) -> str:
    return orjson.dumps(result.model_dump(mode="json", by_alias=True), option=orjson.OPT_INDENT_2).decode()


def _submit(args: argparse.Namespace) -> int:
    try:
        job = load_job(args.file)
    except (SubmitError, OSError) as exc:
        print(f"byok submit: {exc}", file=sys.stderr)
        return 2
    settings = configured_settings(ProcessSettings)
    try:
        with broker_problems(settings):
            result = asyncio.run(submit(settings, job, wait_s=args.timeout if args.wait else None))
    except (BrokerProblem, JobNotRouted, ReplyLost, BrokerUnavailable) as exc:
        print(f"byok submit: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"byok submit: no result for {job.job_id} within {args.timeout:g}s", file=sys.stderr)
        return 1
    if result is None:
        print(f"published {job.job_id}")
        return 0
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
    job.add_argument("--timeout", type=bounded(float, 0.001), default=120.0,
                     help="seconds to wait with --wait (default 120)")
    job.set_defaults(func=_submit)

