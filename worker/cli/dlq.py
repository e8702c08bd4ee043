"""``byok dlq list|show|replay``: read dead letters with their reasons, republish chosen ones after a fix.

Reading never removes anything, and never counts as a delivery: a fetched dead letter is put back as a fresh
copy at the end of the queue (confirmed) before the one fetched is acked. Returning it unacked instead would
raise its delivery count, and a quorum queue drops a message past its delivery limit (20 by default since
RabbitMQ 4.0, where ``x-delivery-limit: -1`` lifts it; 3.x has no default and drops at once with -1).
A reader that dies between the two leaves a duplicate, never a loss.
Replay acks a dead letter only after its copy on ``byok.jobs`` is confirmed.

A job the broker itself dead-lettered past the jobs queue's delivery limit (the worker was killed or lost
the broker on each delivery, so no worker lived to say why) carries no ``x-byok-error``, only the broker's
``x-death`` record. It is read as ``delivery_limit`` with a reason taken from that record, and the copy put
back carries both headers, so every later reader (and ``byok dlq show``) sees them on the message itself.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage, DeliveryMode

from worker.broker.connection import connect_any
from worker.broker.names import (
    CONTENT_TYPE,
    DELIVERY_LIMIT_ERROR,
    HEADER_ATTEMPTS,
    HEADER_ERROR,
    HEADER_FIRST_SEEN,
    HEADER_NOT_BEFORE,
    HEADER_REASON,
    HEADER_REPLAYED,
    JOB_ROUTING_KEY,
    ROUTING_HEADERS,
    Topology,
)
from worker.cli.broker_errors import BrokerProblem, broker_problems
from worker.cli.common import configured_settings
from worker.cli.parser import bounded
from worker.settings import ProcessSettings

REPLAY_HEADER = HEADER_REPLAYED
DROPPED_ON_REPLAY = (HEADER_ERROR, HEADER_REASON, HEADER_ATTEMPTS, HEADER_FIRST_SEEN, HEADER_NOT_BEFORE,
                     "x-delivery-count", *ROUTING_HEADERS)


@dataclass(frozen=True, slots=True)
class DeadLetterView:
    message_id: str | None
    error: str
    reason: str
    workspace_id: str | None
    job_id: str | None
    size: int

    def as_json(self) -> dict[str, Any]:
        return {"message_id": self.message_id, "error": self.error, "reason": self.reason,
                "workspace_id": self.workspace_id, "job_id": self.job_id, "size": self.size}


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def broker_verdict(headers: dict[str, Any]) -> tuple[str, str]:
    """The error code and reason of a message the broker dead-lettered itself (no ``x-byok-error``)."""
    cause = _text(headers.get("x-first-death-reason", "unknown"))
    queue = _text(headers.get("x-first-death-queue", "?"))
    if cause != DELIVERY_LIMIT_ERROR:
        return cause, f"dead-lettered by the broker ({cause}) from {queue}"
    # The dead letter does not say how often it was delivered (its x-delivery-count is not kept): the limit did.
    return DELIVERY_LIMIT_ERROR, (f"delivered from {queue} as often as its delivery limit allows, never with an "
                                  "outcome (a worker was killed or lost the broker each time); dead-lettered by "
                                  "the broker")


def describe(message: AbstractIncomingMessage) -> DeadLetterView:
    headers = message.headers or {}
    error, reason = headers.get(HEADER_ERROR), headers.get(HEADER_REASON)
    if error is None:
        error, reason = broker_verdict(headers)
    try:
        body = orjson.loads(message.body)
    except orjson.JSONDecodeError:
        body = None
    job = body if isinstance(body, dict) else {}
    workspace, job_id = job.get("workspace_id"), job.get("job_id")
    return DeadLetterView(
        message_id=message.message_id,
        error=_text(error),
        reason=_text(reason or ""),
        workspace_id=workspace if isinstance(workspace, str) else None,
        job_id=job_id if isinstance(job_id, str) else None,
        size=len(message.body),
    )


Selector = Callable[[DeadLetterView], bool]


def selector(workspace: str | None, reason: str | None, message_id: str | None = None) -> Selector:
    def chosen(view: DeadLetterView) -> bool:
        return ((workspace is None or view.workspace_id == workspace)
                and (reason is None or view.error == reason)
                and (message_id is None or view.message_id == message_id))

    return chosen


async def scan(
    settings: ProcessSettings, chosen: Selector, limit: int, *, replay: bool = False, scan_max: int = 100_000
) -> list[tuple[DeadLetterView, AbstractIncomingMessage]]:
    """Dead letters that ``chosen`` selects (at most ``limit``); with ``replay``, republished and removed."""
    names = Topology(settings.topology_prefix)
    connection = await connect_any(settings.amqp_url)
    found: list[tuple[DeadLetterView, AbstractIncomingMessage]] = []
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(names.dead_letter_queue, passive=True)
        jobs = await channel.get_exchange(names.jobs_exchange)
        # Only what was there when the scan began: a replayed job that fails again must not be replayed twice.
        present = queue.declaration_result.message_count or 0
        for _ in range(min(present, scan_max)):
            if len(found) >= limit:
                break
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            view = describe(message)
            if chosen(view):
                found.append((view, message))
            if replay and chosen(view):
                await jobs.publish(replayed(message), routing_key=JOB_ROUTING_KEY)
            else:
                await channel.default_exchange.publish(put_back(message), routing_key=queue.name)
            await message.ack()
    return found


def put_back(message: AbstractIncomingMessage) -> aio_pika.Message:
    """The dead letter as it was, as a new message: its delivery count starts again (and CC routes no copy).
    One the broker dead-lettered itself gains ``x-byok-error`` and ``x-byok-reason`` from its ``x-death``."""
    dropped = ("x-delivery-count", *ROUTING_HEADERS)
    headers = {k: v for k, v in (message.headers or {}).items() if k not in dropped}
    if HEADER_ERROR not in headers:
        headers[HEADER_ERROR], headers[HEADER_REASON] = broker_verdict(message.headers or {})
    return aio_pika.Message(
        message.body, headers=headers,
        content_type=message.content_type, content_encoding=message.content_encoding,
        delivery_mode=DeliveryMode.PERSISTENT, message_id=message.message_id, correlation_id=message.correlation_id,
        reply_to=message.reply_to, timestamp=message.timestamp, type=message.type, app_id=message.app_id,
    )


def replayed(message: AbstractIncomingMessage) -> aio_pika.Message:
    headers = {k: v for k, v in (message.headers or {}).items()
               if k not in DROPPED_ON_REPLAY and not k.startswith("x-death") and not k.startswith("x-first-death")
               and not k.startswith("x-last-death")}
    previous = headers.get(REPLAY_HEADER)
    headers[REPLAY_HEADER] = (previous if isinstance(previous, int) else 0) + 1
    return aio_pika.Message(
        message.body, content_type=CONTENT_TYPE, content_encoding="utf-8", delivery_mode=DeliveryMode.PERSISTENT,
        message_id=message.message_id, correlation_id=message.correlation_id, reply_to=message.reply_to,
        headers=headers,
    )


def _print_table(views: list[DeadLetterView]) -> None:
    # Columns as wide as their longest cell: a message id is printed whole, to be pasted into `byok dlq show`.
    rows = [("message_id", "workspace", "error", "reason")]
    rows += [(view.message_id or "-", view.workspace_id or "-", view.error, view.reason) for view in views]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)), row[3]]).rstrip())
    print(f"{len(views)} dead letter(s)")


def _run(args: argparse.Namespace) -> int:
    settings = configured_settings(ProcessSettings)
    try:
        with broker_problems(settings):
            return _run_verb(args, settings)
    except BrokerProblem as exc:
        print(f"byok dlq {args.dlq_command}: {exc}", file=sys.stderr)
        return 1


def _run_verb(args: argparse.Namespace, settings: ProcessSettings) -> int:
    if args.dlq_command == "show":
        found = asyncio.run(scan(settings, selector(None, None, args.message_id), 1))
        if not found:
            print(f"byok dlq: no dead letter with message id {args.message_id}", file=sys.stderr)
            return 1
        view, message = found[0]
        print(orjson.dumps({**view.as_json(), "headers": {k: _text(v) for k, v in (message.headers or {}).items()},
                            "body": message.body.decode(errors="replace")}, option=orjson.OPT_INDENT_2).decode())
        return 0
    chosen = selector(args.workspace, args.reason)
    found = asyncio.run(scan(settings, chosen, args.limit, replay=args.dlq_command == "replay"))
    views = [view for view, _ in found]
    if args.json:
        print(orjson.dumps([v.as_json() for v in views]).decode())
    else:
        _print_table(views)
    if args.dlq_command == "replay":
        print(f"replayed {len(views)} job(s) to {Topology(settings.topology_prefix).jobs_exchange}", file=sys.stderr)
    return 0


DLQ_EPILOG = ("settings: BYOK_AMQP_URL, BYOK_TOPOLOGY_PREFIX (read on the dead-letter queue, write on the jobs "
              "exchange). exit codes: 0 done, 1 broker problem or no such dead letter, 2 invalid arguments")


def register(subparsers: Any) -> None:
    dlq = subparsers.add_parser(
        "dlq", help="inspect and replay dead-lettered jobs",
        description="Dead letters (the jobs.dead queue): failed jobs, malformed and poison messages, each with its "
                    "error code and reason. list and show remove nothing; replay republishes after a fix.",
        epilog=DLQ_EPILOG,
    )
    verbs = dlq.add_subparsers(dest="dlq_command", required=True)
    for verb, text, description in (
        ("list", "list dead letters with their reasons",
         "Lists dead letters (message id, workspace, error code, reason), oldest first; removes nothing."),
        ("replay", "republish chosen dead letters to byok.jobs (removed only once confirmed)",
         "Republishes the chosen dead letters to the jobs exchange without their error headers, and removes each "
         "only once its copy is confirmed. Fix the cause first."),
    ):
        parser = verbs.add_parser(verb, help=text, description=description, epilog=DLQ_EPILOG)
        parser.add_argument("--workspace", help="only this workspace's jobs")
        parser.add_argument("--reason", help="only this error code (e.g. provider_error, invalid_job, delivery_limit)")
        parser.add_argument("--limit", type=bounded(int, 1), default=100 if verb == "list" else 1000)
        parser.add_argument("--json", action="store_true")
        parser.set_defaults(func=_run)
    show = verbs.add_parser("show", help="one dead letter: headers and body", epilog=DLQ_EPILOG,
                            description="One dead letter, by the message id `byok dlq list` prints: its headers "
                                        "and body, as JSON.")
    show.add_argument("message_id")
    show.set_defaults(func=_run)
