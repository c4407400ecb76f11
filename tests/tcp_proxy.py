"""A small asyncio TCP proxy for fault tests: the database "goes away" and comes back.

The proxy listens on 127.0.0.1 (a random port, kept across restarts) and
forwards every connection to an upstream TCP address or unix socket.

* :meth:`TcpProxy.stop` closes the listener (new connections are refused) and
  resets every open connection: what clients see when the server or the
  network between them dies.
* :meth:`TcpProxy.reset_connections` resets the open connections but keeps
  listening: what pooled clients see when the server restarts quickly.
* :meth:`TcpProxy.start` listens again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), not an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    def __init__(self, upstream: tuple[str, int] | str, host: str = "127.0.0.1") -> None:
        """`upstream` is (host, port) or the path of a unix socket."""
        self.upstream = upstream
        self.host = host
        self.port = 0
        self.accepted = 0  # connections accepted, ever
        self.active = 0  # connections being handled now
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and reset the open ones."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.reset_connections()
        if server is not None:
            await server.wait_closed()

    def reset_connections(self) -> None:
        """Reset every open connection (both sides); keep listening if running."""
        writers, self._writers = self._writers, set()
        for writer in writers:
            _reset(writer)

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.upstream, str):
            return await asyncio.open_unix_connection(self.upstream)
        host, port = self.upstream
        return await asyncio.open_connection(host, port)

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        self.accepted += 1
        self.active += 1
        try:
            await self._forward(client_reader, client_writer)
        finally:
            self.active -= 1

    async def _forward(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            upstream_reader, upstream_writer = await self._open_upstream()
        except OSError:
            _reset(client_writer)
            return
        if self._server is None:  # stopped while we were connecting upstream
            _reset(client_writer)
            _reset(upstream_writer)
            return
        pair = {client_writer, upstream_writer}
        self._writers |= pair
        pipes = [
            asyncio.ensure_future(_pipe(client_reader, upstream_writer)),
            asyncio.ensure_future(_pipe(upstream_reader, client_writer)),
        ]
        try:
            # When either side closes, close the other: PostgreSQL's protocol
            # never half-closes.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for writer in pair:
                self._writers.discard(writer)
                writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
