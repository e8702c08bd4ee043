"""``byok topology declare``: an administrator declares the broker topology, so workers need no configure
permission (``BYOK_DECLARE_TOPOLOGY=false`` makes them only check that it exists)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from worker.broker.connection import connect_any
from worker.broker.names import Topology
from worker.broker.topology import TopologySpec, declare_topology, deployed_topology
from worker.cli.broker_errors import BrokerProblem, broker_problems
from worker.cli.common import configured_settings
from worker.settings import TopologySettings


async def declare(settings: TopologySettings) -> TopologySpec:
    """Every exchange, queue and binding of the worker and the aggregator; idempotent, and a queue that exists
    with other arguments (another delivery limit) is refused with PRECONDITION_FAILED, changing nothing."""
    spec = deployed_topology(Topology(settings.topology_prefix), delivery_limit=settings.delivery_limit)
    connection = await connect_any(settings.amqp_url)  # the first live node of BYOK_AMQP_URL
    async with connection:
        await declare_topology(await connection.channel(), spec)
    return spec


def _run(args: argparse.Namespace) -> int:
    settings = configured_settings(TopologySettings)
    try:
        with broker_problems(settings):
            spec = asyncio.run(declare(settings))
    except BrokerProblem as exc:
        print(f"byok topology {args.topology_command}: {exc}", file=sys.stderr)
        return 1
    print(f"declared {len(spec.exchanges)} exchanges, {len(spec.queues)} queues and {len(spec.bindings)} bindings "
          f"(prefix {settings.topology_prefix}, delivery limit {settings.delivery_limit})")
    return 0


TOPOLOGY_EPILOG = ("settings: BYOK_AMQP_URL (a user with configure, write and read on the prefix's names), "
                   "BYOK_TOPOLOGY_PREFIX, BYOK_DELIVERY_LIMIT. exit codes: 0 declared, 1 broker problem "
                   "(refused, unreachable, or a queue that exists with other arguments), 2 invalid arguments")


def register(subparsers: Any) -> None:
    topology = subparsers.add_parser(
        "topology", help="declare the broker topology as an administrator",
        description="The broker topology (exchanges, quorum queues, bindings) of the worker and the aggregator.",
        epilog=TOPOLOGY_EPILOG,
    )
    verbs = topology.add_subparsers(dest="topology_command", required=True)
    declare_verb = verbs.add_parser(
        "declare", help="declare every exchange, queue and binding (idempotent)", epilog=TOPOLOGY_EPILOG,
        description="Declares every exchange, queue and binding the worker and the aggregator use, so workers "
                    "can run with BYOK_DECLARE_TOPOLOGY=false and a broker user without configure permission.",
    )
    declare_verb.set_defaults(func=_run)
