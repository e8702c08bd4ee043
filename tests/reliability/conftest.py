"""The reliability tests' own services: a three-node RabbitMQ cluster beside the machine's broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster import RabbitCluster


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    """Three clustered ``rabbitmq-server`` nodes for the session, halted and removed afterwards."""
    cluster = RabbitCluster(size=3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
