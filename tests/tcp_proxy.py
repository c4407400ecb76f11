"""A TCP proxy on 127.0.0.1 in front of PostgreSQL that can play a server restart.

``outage()`` closes every proxied connection (as a restarting server does)
and refuses new ones until ``restore()``: clients see exactly what a database
restart looks like from their side, without touching the shared server.
The upstream may be TCP or a unix socket (the embedded server has no TCP).
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs, urlsplit, urlunsplit


def upstream_of(url: str) -> tuple[str | None, str, int]:
    """(unix socket path or None, host, port) of a PostgreSQL URL."""
    parts = urlsplit(url)
    port = parts.port or 5432
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    if socket_dir:
        return f"{socket_dir}/.s.PGSQL.{port}", "", port
    return None, parts.hostname or "127.0.0.1", port


class PostgresProxy:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.socket, self.host, self.port = upstream_of(database_url)
        self.listen_port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        """`database_url`, but through the proxy."""
        parts = urlsplit(self.database_url)
        user = parts.username or "postgres"
        return urlunsplit(
            ("postgresql", f"{user}@127.0.0.1:{self.listen_port}", parts.path, "", "")
        )

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.socket:
                up_reader, up_writer = await asyncio.open_unix_connection(self.socket)
            else:
                up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._pipes.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)
        self._pipes.difference_update(pipes)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

    async def outage(self) -> None:
        """Drop every connection and refuse new ones (the server is down)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.sleep(0)

    async def restore(self) -> None:
        """Accept connections again, on the same port (the server is back)."""
        await self.start()

    async def close(self) -> None:
        await self.outage()
