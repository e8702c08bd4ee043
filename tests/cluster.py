"""A real three-node RabbitMQ cluster on this machine, beside the machine's own broker (never instead of it).

Each node is its own ``rabbitmq-server`` with its own node name (``byok-<run>-c1@localhost``…), AMQP and
distribution ports, data and log directories under one temporary directory, and the management plugin off.
They share one Erlang cookie (``$HOME/.erlang.cookie`` with ``HOME`` set to that directory, for the nodes and
for ``rabbitmqctl``), and nodes 2 and 3 join node 1 with ``rabbitmqctl stop_app; join_cluster; start_app``.
Every ``rabbitmqctl`` call names its node with ``-n``: the machine's ``rabbit@localhost`` is never touched,
and neither is ``/etc/rabbitmq`` (the nodes read an empty env file and a config file of their own).
``stop()`` halts the nodes and removes the directory.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.testing.devstack import port_answers

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
"""The scripts themselves: ``/usr/sbin/rabbitmq-server`` would switch to the rabbitmq user and its cookie."""
CLI_DIST_PORTS = range(35672, 35683)
"""The distribution ports ``rabbitmqctl`` itself listens on (25672 + 10000, ten more): never a node's port."""
START_TIMEOUT_S = 90.0


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in taken and port not in CLI_DIST_PORTS and port != 25672:
            taken.add(port)
            return port


@dataclass
class ClusterNode:
    name: str
    """The Erlang node name, ``byok-<run>-c1@localhost``."""
    amqp_port: int
    dist_port: int
    base: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.amqp_port}"


class RabbitCluster:
    """``start()`` three nodes clustered; ``stop_node``/``start_node`` one of them; ``stop()`` everything."""

    def __init__(self, size: int = 3) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="byok-cluster-"))
        run = secrets.token_hex(3)
        taken: set[int] = set()
        self.nodes = [
            ClusterNode(f"byok-{run}-c{i}@localhost", _free_port(taken), _free_port(taken), self.root / f"c{i}")
            for i in range(1, size + 1)
        ]
        cookie = self.root / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        (self.root / "rabbitmq-env.conf").write_text("")
        (self.root / "enabled_plugins").write_text("[].\n")
        for node in self.nodes:
            (node.base / "mnesia").mkdir(parents=True)
            (node.base / "log").mkdir()
            (node.base / "rabbitmq.conf").write_text(
                f"listeners.tcp.1 = 127.0.0.1:{node.amqp_port}\n"
            )

    def url(self, *nodes: ClusterNode) -> str:
        """``BYOK_AMQP_URL`` listing ``nodes`` in that order (every node when none is given)."""
        return ",".join(node.url for node in (nodes or tuple(self.nodes)))

    def node_at(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.amqp_port == port)

    def _env(self, node: ClusterNode | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env |= {"HOME": str(self.root), "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
                "ERL_EPMD_ADDRESS": "127.0.0.1"}
        if node is not None:
            env |= {
                "RABBITMQ_NODENAME": node.name,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(node.amqp_port),
                "RABBITMQ_DIST_PORT": str(node.dist_port),
                "RABBITMQ_MNESIA_BASE": str(node.base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(node.base / "log"),
                "RABBITMQ_CONFIG_FILE": str(node.base / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(node.base / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
                "RABBITMQ_PID_FILE": str(node.base / "rabbitmq.pid"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            }
        return env

    def ctl(self, node: ClusterNode, *args: str, timeout_s: float = 60.0) -> str:
        """``rabbitmqctl -n <node> …`` with the cluster's cookie; raises with its output when it fails."""
        done = subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", node.name, *args], env=self._env(),
                              capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {node.name} {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def _launch(self, node: ClusterNode) -> None:
        log = (node.base / "server.log").open("ab")
        node.process = subprocess.Popen([str(RABBIT_BIN / "rabbitmq-server")], env=self._env(node), stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def _await(self, node: ClusterNode) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_answers("127.0.0.1", node.amqp_port):
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"{node.name} exited while starting: {self.tail(node)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} did not start within {START_TIMEOUT_S}s: {self.tail(node)}")
            time.sleep(0.2)
        self.ctl(node, "await_startup", "--timeout", str(int(START_TIMEOUT_S)))

    def tail(self, node: ClusterNode) -> str:
        log = node.base / "server.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"

    def start(self) -> None:
        for node in self.nodes:
            self._launch(node)
        for node in self.nodes:
            self._await(node)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        self.ctl(first, "await_online_nodes", str(len(self.nodes)))

    def running_nodes(self, via: ClusterNode) -> list[str]:
        status = json.loads(self.ctl(via, "cluster_status", "--formatter", "json"))
        return sorted(status["running_nodes"])

    def stop_node(self, node: ClusterNode) -> None:
        """Halts the node (``rabbitmqctl stop``: its connections close, its queue members go away)."""
        self.ctl(node, "stop")
        if node.process is not None:
            node.process.wait(timeout=60)
            node.process = None

    def start_node(self, node: ClusterNode) -> None:
        """Starts a stopped node again; it rejoins the cluster from its own data directory."""
        self._launch(node)
        self._await(node)

    def queues(self, via: ClusterNode) -> dict[str, dict[str, Any]]:
        """Every queue of ``/`` with its type, leader and members, as one node sees them."""
        listed = json.loads(self.ctl(via, "list_queues", "-p", "/", "name", "type", "leader", "members",
                                     "--formatter", "json"))
        return {queue["name"]: queue for queue in listed}

    def stop(self) -> None:
        try:
            for node in self.nodes:
                if node.process is not None and node.process.poll() is None:
                    try:
                        self.ctl(node, "stop", timeout_s=30)
                        node.process.wait(timeout=30)
                    except (RuntimeError, subprocess.TimeoutExpired):
                        # The script runs erl as a child: its own session (started above) goes as a whole.
                        os.killpg(node.process.pid, signal.SIGKILL)
                        node.process.wait(timeout=10)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
