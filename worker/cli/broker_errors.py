"""What a ``byok`` verb says when the broker is down or the topology is missing: one line, no traceback.

Never the AMQP URL itself (it carries the broker password): only the host and port of each node.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

from aiormq.exceptions import AMQPChannelError, AMQPConnectionError, AMQPError, ProbableAuthenticationError

from worker.amqp_urls import describe_nodes
from worker.settings import ProcessSettings

_MISSING = re.compile(r"no (exchange|queue) '([^']*)' in vhost '([^']*)'")


class BrokerProblem(RuntimeError):
    """The broker cannot do what a command needs; the message says what is wrong and what to do."""


def _where(amqp_url: str) -> str:
    """``host:port`` of the broker in ``amqp_url`` (each node's, when it lists several), no user or password."""
    return describe_nodes(amqp_url)


def explain(exc: AMQPError | ConnectionError, settings: ProcessSettings) -> str:
    """One line for a broker failure."""
    where = _where(settings.amqp_url.get_secret_value())
    if isinstance(exc, ProbableAuthenticationError):
        return f"the broker at {where} refused the login: check the user and password in BYOK_AMQP_URL"
    if isinstance(exc, AMQPChannelError):
        missing = _MISSING.search(str(exc))
        if missing:
            kind, name, vhost = missing.groups()
            return (f"the broker at {where} has no {kind} {name!r} in vhost {vhost!r}: the topology with "
                    f"BYOK_TOPOLOGY_PREFIX={settings.topology_prefix!r} is not declared there. Run `byok topology "
                    "declare` (or start `byok worker` once) with the same BYOK_AMQP_URL and BYOK_TOPOLOGY_PREFIX, "
                    "or load deploy/rabbitmq/definitions.json into the broker")
        return f"the broker at {where} refused: {exc}"
    if isinstance(exc, AMQPConnectionError | ConnectionError):
        return (f"cannot connect to the broker at {where} ({type(exc).__name__}): is RabbitMQ running there? "
                "Check BYOK_AMQP_URL")
    return (f"the broker at {where} refused the connection ({type(exc).__name__}): check the virtual host, "
            "user and password in BYOK_AMQP_URL")


@contextmanager
def broker_problems(settings: ProcessSettings) -> Iterator[None]:
    """Turns broker failures inside the block into ``BrokerProblem``; aiormq's own error log stays quiet."""
    aiormq_log = logging.getLogger("aiormq")
    level = aiormq_log.level
    aiormq_log.setLevel(logging.CRITICAL)
    try:
        yield
    except (AMQPError, ConnectionError) as exc:
        raise BrokerProblem(explain(exc, settings)) from None
    finally:
        aiormq_log.setLevel(level)
