"""Fault injection on loopback: a TCP proxy whose connections a test can cut, and the broker closing a
connection itself (``rabbitmqctl close_connection``, as an operator or a node shutdown would)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``cut()`` drops every open connection at once.

    While ``refusing`` is set, new connections are closed as soon as they are accepted (the open ones carry
    on); ``connections`` counts every attempt, refused ones too. ``stall()`` stops forwarding on the open
    connections without closing them (a link that hangs before it drops: what is sent meanwhile is never
    confirmed); ``cut()`` ends the stall for the connections that come next.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.port = 0
        self.refusing = False
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.refusing:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        pipes = [asyncio.create_task(self._pipe(reader, up_writer)), asyncio.create_task(self._pipe(up_reader, writer))]
        self._tasks.update(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for task in pipes:
            task.cancel()
        for w in (writer, up_writer):
            w.close()
            self._writers.discard(w)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()

    def stall(self) -> None:
        """Stop forwarding bytes on every open connection, in both directions, until ``cut()``."""
        self._flowing.clear()

    async def cut(self) -> int:
        """Abort every open connection (like a network cut); returns how many were cut."""
        writers = list(self._writers)
        for writer in writers:
            transport = writer.transport
            transport.abort()
        self._writers.clear()
        self._flowing.set()
        return len(writers) // 2

    async def stop(self) -> None:
        await self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in self._tasks:
            task.cancel()


def broker_closes(vhost: str, connection_name: str) -> int:
    """The local broker closes every connection of ``vhost`` that is named ``connection_name``; returns how many."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "vhost", "client_properties"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.splitlines()
    named = f'{{"connection_name","{connection_name}"}}'
    pids = [line.split("\t")[0] for line in listed if line.split("\t")[1:2] == [vhost] and named in line]
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "closed by a test"], capture_output=True,
                       timeout=60, check=True)
    return len(pids)
