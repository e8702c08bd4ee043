"""The publisher's library: submit jobs, wait for one job's result, read results as they are published.

One connection, kept by ``worker.broker.connection``'s supervisor like the worker's: lost, it is opened
again with the same backoff, the reply queue and every result subscription declared anew on it. The first
connection is tried once: a wrong URL or a stopped broker fails ``async with Client()`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from pydantic import SecretStr, ValidationError

from schemas.models import MAX_JOB_BYTES, CompletionJob, CompletionResult
from worker.broker.connection import BrokerSupervisor, BrokerUnavailable, Link
from worker.broker.names import JOB_ROUTING_KEY, Topology
from worker.broker.publisher import Publisher
from worker.client.results import ResultSubscription, result_bindings
from worker.settings import BrokerSettings, InvalidSettings, describe_errors

log = structlog.get_logger("byok.client")

CONNECTION_LOST = (aiormq.exceptions.AMQPConnectionError, ConnectionError)
CHANNEL_LOST = (aiormq.exceptions.ChannelInvalidStateError,)
PUBLISH_ATTEMPTS = 5
"""A publish that failed because its connection or channel went is published again (on the next connection),
this many times at most: the job may then reach the broker twice (subscribers deduplicate on ``job_id``)."""


class ClientClosed(RuntimeError):
    """The client was used outside ``async with``, or after it closed."""


class JobNotRouted(RuntimeError):
    """The broker took the job but no queue is bound to the jobs exchange: nothing would ever run it."""


class ReplyLost(ConnectionError):
    """The connection was lost while ``run`` waited: the reply queue went with it, the job did not."""


@dataclass
class _Awaited:
    job_id: str
    reply: asyncio.Future[CompletionResult]
    published_on: Link | None = None


@dataclass
class _PublishChannel:
    link: Link
    channel: AbstractChannel
    publisher: Publisher = field(init=False)

    def __post_init__(self) -> None:
        self.publisher = Publisher(self.channel)


def as_job(job: CompletionJob | Mapping[str, Any]) -> CompletionJob:
    """A ``CompletionJob`` as it is, or a dict validated into one (``pydantic.ValidationError`` otherwise)."""
    return job if isinstance(job, CompletionJob) else CompletionJob.model_validate(job)


def job_body(job: CompletionJob) -> bytes:
    """The job as published: the fields it was given (by their wire names), at most ``MAX_JOB_BYTES``."""
    body = job.model_dump_json(by_alias=True, exclude_unset=True).encode()
    if len(body) > MAX_JOB_BYTES:
        # The worker dead-letters such a job unread (invalid_job): refuse it before it is published.
        raise ValueError(f"the job is {len(body)} bytes; a job is at most {MAX_JOB_BYTES} bytes (1 MiB)")
    return body


def broker_settings(
    amqp_url: str | SecretStr | None, topology_prefix: str | None, reconnect_max_s: float | None,
) -> BrokerSettings:
    """What is given, the rest from ``BYOK_AMQP_URL``, ``BYOK_TOPOLOGY_PREFIX`` and ``BYOK_RECONNECT_MAX_S``."""
    given = {"amqp_url": amqp_url, "topology_prefix": topology_prefix, "reconnect_max_s": reconnect_max_s}
    overrides: Any = {name: value for name, value in given.items() if value is not None}
    try:
        return BrokerSettings(**overrides)
    except ValidationError as exc:
        raise InvalidSettings(f"invalid settings: {describe_errors(exc)}") from None


class Client:
    """``async with Client() as client``: ``submit``, ``run`` and ``results`` (README, "The publisher library").

    ``amqp_url`` None reads ``BYOK_AMQP_URL``; ``topology_prefix`` and ``reconnect_max_s`` None read
    ``BYOK_TOPOLOGY_PREFIX`` and ``BYOK_RECONNECT_MAX_S`` (defaults ``byok`` and 60 s, as the worker's).
    """

    def __init__(
        self, amqp_url: str | SecretStr | None = None, *, topology_prefix: str | None = None,
        reconnect_max_s: float | None = None, name: str = "client",
    ) -> None:
        settings = broker_settings(amqp_url, topology_prefix, reconnect_max_s)
        self.names = Topology(settings.topology_prefix)
        self.broker = BrokerSupervisor(settings.amqp_url, reconnect_max_s=settings.reconnect_max_s, process=name)
        self._stop = asyncio.Event()
        self._link_changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._link: Link | None = None
        self._reply_queue: str | None = None
        self._publishing: _PublishChannel | None = None
        self._publish_lock = asyncio.Lock()
        self._awaited: dict[str, _Awaited] = {}
        self._subscriptions: set[ResultSubscription] = set()

    async def __aenter__(self) -> Client:
        if self._task is not None:
            raise ClientClosed("a Client is entered once")
        self._task = asyncio.create_task(
            self.broker.run(self._stop, self._on_connected, self._on_lost, wait_for_first=False)
        )
        self._task.add_done_callback(self._supervisor_ended)
        await self._current_link()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(BrokerUnavailable, *CONNECTION_LOST):
                await self._task
        self._end_everything(None)
        await self.broker.close()

    @property
    def connections(self) -> int:
        """Successful connections so far: 2 once the client reconnected."""
        return self.broker.connections

    async def submit(self, job: CompletionJob | Mapping[str, Any], *, headers: Mapping[str, str] | None = None) -> str:
        """Publishes ``job`` to the jobs exchange and returns its ``job_id`` once the broker confirmed it.

        ``headers`` go on the AMQP message (``traceparent``/``tracestate`` are carried through to the result).
        """
        checked = as_job(job)
        await self._publish(checked, job_body(checked), headers=headers)
        return checked.job_id

    async def run(
        self, job: CompletionJob | Mapping[str, Any], *, timeout: float,  # noqa: ASYNC109 - the contract's name
        headers: Mapping[str, str] | None = None,
    ) -> CompletionResult:
        """Publishes ``job`` with this client's reply queue as ``reply_to``, and returns its result.

        ``TimeoutError`` when no result came within ``timeout`` seconds (publishing included); ``ReplyLost``
        when the connection was lost after the job was published (the job still runs; its result is still
        published to the results exchange).
        """
        checked = as_job(job)
        body = job_body(checked)
        correlation_id = str(uuid.uuid4())
        awaited = _Awaited(checked.job_id, asyncio.get_running_loop().create_future())
        self._awaited[correlation_id] = awaited
        try:
            async with asyncio.timeout(timeout):
                await self._publish(checked, body, headers=headers, awaited=awaited, correlation_id=correlation_id)
                return await awaited.reply
        except TimeoutError:
            state = "published, but no result came" if awaited.published_on else "not even published"
            raise TimeoutError(
                f"job {checked.job_id}: {state} within {timeout:g}s. Is a worker consuming "
                f"{self.names.jobs_queue!r}? A result that comes later is still published to "
                f"{self.names.results_exchange!r}"
            ) from None
        finally:
            self._awaited.pop(correlation_id, None)

    def results(
        self, *, workspace: str | Iterable[str] | None = None, automation: str | Iterable[str] | None = None,
        status: str | Iterable[str] | None = None, queue: str | None = None, prefetch: int = 100,
    ) -> ResultSubscription:
        """The results of the workspace(s), automation(s) and status(es) given (None: any), as they are
        published: an async iterator of ``CompletionResult``.

        ``queue`` None reads from an exclusive queue of the subscription's own; a name reads from that durable
        quorum queue (declared if missing), which keeps results while nobody reads and across reconnects. The
        queue name must not start with the topology prefix (the worker's own queues are named so).
        """
        if queue is not None and (queue == self.names.prefix or queue.startswith(f"{self.names.prefix}.")):
            raise ValueError(f"a results queue is not named like the topology's own ({self.names.prefix}.…)")
        subscription = ResultSubscription(
            exchange=self.names.results_exchange, routing_keys=result_bindings(workspace, automation, status),
            queue=queue, prefetch=prefetch, current_link=self._current_link, forget=self._subscriptions.discard,
        )
        self._subscriptions.add(subscription)
        return subscription

    async def _publish(
        self, job: CompletionJob, body: bytes, *, headers: Mapping[str, str] | None,
        awaited: _Awaited | None = None, correlation_id: str | None = None,
    ) -> None:
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            publishing = await self._publish_channel()
            reply_to = self._reply_queue if awaited is not None else None
            try:
                await publishing.publisher.publish(
                    self.names.jobs_exchange, JOB_ROUTING_KEY, body, message_id=job.job_id,
                    headers=dict(headers or {}), correlation_id=correlation_id, reply_to=reply_to,
                )
            except aiormq.exceptions.PublishError:
                raise JobNotRouted(
                    f"no queue is bound to {self.names.jobs_exchange!r} with key {JOB_ROUTING_KEY!r}: start "
                    "`byok worker` once with this topology prefix (it declares the queues)"
                ) from None
            except (*CONNECTION_LOST, *CHANNEL_LOST) as exc:
                if attempt == PUBLISH_ATTEMPTS:
                    raise
                if isinstance(exc, CONNECTION_LOST):
                    # The connection is gone even if its close callback has not run yet: reconnect now.
                    publishing.link.lose(f"a publish failed ({type(exc).__name__})")
                log.warning("client.publish_again", job_id=job.job_id, error=type(exc).__name__)
                continue
            if awaited is not None:
                awaited.published_on = publishing.link
                if not publishing.link.alive:
                    self._reply_lost(awaited)
            return
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _publish_channel(self) -> _PublishChannel:
        """The current connection's publishing channel, opened on first use there.

        Apart from the watched one: a refused publish closes its channel, which must not cost the
        subscriptions their connection. The jobs exchange is checked first, so a missing topology is a
        NOT_FOUND error naming it rather than a closed channel.
        """
        async with self._publish_lock:
            link = await self._current_link()
            current = self._publishing
            if current is None or current.link is not link or current.channel.is_closed:
                channel = await link.connection.channel(publisher_confirms=True, on_return_raises=True)
                await channel.get_exchange(self.names.jobs_exchange)
                current = self._publishing = _PublishChannel(link, channel)
            return current

    async def _current_link(self) -> Link:
        """The connection in use; waits while the supervisor reconnects, raises once it gave up or closed."""
        while True:
            if self._task is None or self._stop.is_set():
                raise ClientClosed("the Client is not open: use it inside `async with Client() as client`")
            if self._task.done():
                raise self._task.exception() or ClientClosed("the Client closed")
            changed, link = self._link_changed, self._link
            if link is not None and link.alive:
                return link
            waiting = asyncio.ensure_future(changed.wait())
            try:
                await asyncio.wait([waiting, self._task], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()

    def _announce_link(self, link: Link | None) -> None:
        self._link = link
        changed, self._link_changed = self._link_changed, asyncio.Event()
        changed.set()

    async def _on_connected(self, link: Link) -> None:
        channel = await link.connection.channel()
        await link.watch(channel)
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        await replies.consume(self._on_reply, no_ack=True)
        self._reply_queue = replies.name
        for subscription in list(self._subscriptions):
            if subscription.started:
                await subscription.attach(link)
        self._announce_link(link)

    async def _on_lost(self) -> None:
        self._link = None
        self._reply_queue = None
        for awaited in self._awaited.values():
            if awaited.published_on is not None:
                self._reply_lost(awaited)

    def _reply_lost(self, awaited: _Awaited) -> None:
        if not awaited.reply.done():
            awaited.reply.set_exception(ReplyLost(
                f"the connection to the broker was lost while waiting for job {awaited.job_id}'s result; the job "
                f"was published and still runs: its result is published to {self.names.results_exchange!r}"
            ))

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        awaited = self._awaited.get(message.correlation_id or "")
        if awaited is None or awaited.reply.done():
            return  # a reply for a run that timed out already
        try:
            awaited.reply.set_result(CompletionResult.model_validate_json(message.body))
        except ValidationError as exc:
            awaited.reply.set_exception(ValueError(
                f"the reply for job {awaited.job_id} is not a byok.completion_result.v1: {exc.error_count()} error(s)"
            ))

    def _supervisor_ended(self, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        self._end_everything(error)

    def _end_everything(self, error: BaseException | None) -> None:
        self._announce_link(None)
        for subscription in list(self._subscriptions):
            subscription.end(error)
        self._subscriptions.clear()
        for awaited in self._awaited.values():
            if not awaited.reply.done():
                awaited.reply.set_exception(error or ClientClosed("the Client closed"))
