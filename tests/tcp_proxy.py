"""A small asyncio TCP proxy for fault tests: the database "goes away" and comes back.

The proxy listens on 127.0.0.1 (a random port, kept across restarts) and
forwards every connection to an upstream TCP address or unix socket.

* :meth:`TcpProxy.stop` closes the listener (new connections are refused) and
  resets every open connection: what clients see when the server or the
  network between them dies.
* :meth:`TcpProxy.reset_connections` resets the open connections but keeps
  listening: what pooled clients see when the server restarts quickly.
* :meth:`TcpProxy.start` listens again on the same port.

With ``record=True`` it also decodes what clients send (the PostgreSQL
frontend protocol) into :attr:`TcpProxy.messages`: every message, in order,
with its type byte and its SQL where it has one. A client
waits for the server after each 'Q' (simple query), each 'S' (Sync, the end
of an extended-protocol exchange) and each 'H' (Flush: asyncpg's Parse,
Describe, Flush of a statement it has not prepared yet):
:meth:`TcpProxy.round_trips` lists those, each with its statement.
Messages are recorded before they are forwarded, so whatever the server has
answered is already in the list.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), not an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# Untyped requests a client may send before its startup message.
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
# Messages after which the client waits for the server: Query and Sync (until
# ReadyForQuery), Flush (asyncpg sends Parse, Describe, Flush to learn a
# statement's types, and waits for the description).
ROUND_TRIP_ENDS = frozenset({"Q", "S", "H"})


@dataclass(frozen=True)
class Message:
    """One frontend message: `connection` numbers the client connections (from 1)."""

    connection: int
    type: str
    # The statement of a Query ('Q'), a Parse ('P') or a Bind ('B': the
    # statement it binds, parsed earlier on the same connection).
    sql: str | None = None


@dataclass(frozen=True)
class RoundTrip:
    """The client waited for the server: `kind` is 'Q' (a simple query), 'H' (the
    description of a statement being prepared) or 'S' (a statement executed)."""

    kind: str
    sql: str | None


def round_trips(messages: list[Message]) -> list[RoundTrip]:
    """Each wait for the server in `messages`, with the statement it was for."""
    trips = []
    current: str | None = None  # the statement of the extended-protocol exchange
    for message in messages:
        if message.type in ("P", "B"):
            current = message.sql
        elif message.type == "Q":
            trips.append(RoundTrip("Q", message.sql))
        elif message.type in ROUND_TRIP_ENDS:
            trips.append(RoundTrip(message.type, current))
    return trips


class FrontendDecoder:
    """Splits one client's byte stream into messages (startup packets first)."""

    def __init__(self, connection: int, sink: list[Message]) -> None:
        self.connection = connection
        self.sink = sink
        self.buffer = bytearray()
        self.started = False  # past the untyped startup packets
        self.statements: dict[bytes, str] = {}  # prepared statement name -> SQL

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if not self.started:
                if len(self.buffer) < 8:
                    return
                length, code = struct.unpack_from("!ii", self.buffer)
                if len(self.buffer) < length:
                    return
                del self.buffer[:length]
                # After SSLRequest/GSSENCRequest (refused: the proxy's clients
                # connect without TLS) the startup message follows, untyped too.
                self.started = code not in (SSL_REQUEST, GSSENC_REQUEST)
                continue
            if len(self.buffer) < 5:
                return
            kind = chr(self.buffer[0])
            (length,) = struct.unpack_from("!i", self.buffer, 1)
            if len(self.buffer) < 1 + length:
                return
            body = bytes(self.buffer[5 : 1 + length])
            del self.buffer[: 1 + length]
            self.sink.append(Message(self.connection, kind, self._sql(kind, body)))

    def _sql(self, kind: str, body: bytes) -> str | None:
        if kind == "Q":
            return body.rstrip(b"\0").decode()
        if kind == "P":  # statement name, query, parameter types
            name, _, rest = body.partition(b"\0")
            self.statements[name] = rest.partition(b"\0")[0].decode()
            return self.statements[name]
        if kind == "B":  # portal name, statement name, parameters
            name = body.split(b"\0", 2)[1]
            return self.statements.get(name)
        return None


class TcpProxy:
    def __init__(
        self, upstream: tuple[str, int] | str, host: str = "127.0.0.1", *, record: bool = False
    ) -> None:
        """`upstream` is (host, port) or the path of a unix socket; `record`: decode and
        keep what clients send (:attr:`messages`)."""
        self.upstream = upstream
        self.host = host
        self.record = record
        self.messages: list[Message] = []
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

    def round_trips(self, since: int = 0) -> list[RoundTrip]:
        """The waits for the server in the messages recorded from index `since` on."""
        return round_trips(self.messages[since:])

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
        decoder = FrontendDecoder(self.accepted, self.messages) if self.record else None
        pipes = [
            asyncio.ensure_future(_pipe(client_reader, upstream_writer, decoder)),
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


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    decoder: FrontendDecoder | None = None,
) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            if decoder is not None:
                decoder.feed(data)
            writer.write(data)
            await writer.drain()
