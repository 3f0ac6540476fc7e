"""The servers under test.  Each runs in a child process on the loop being measured.

``SERVERS[style](listener, stop, ready)`` serves on an already bound and
listening socket, calls ``ready()`` once it accepts connections, and returns
once ``stop`` is set and it has stopped.  Styles:

- ``sock``      echo with ``loop.sock_accept`` / ``sock_recv`` / ``sock_sendall``
- ``streams``   echo with ``asyncio.start_server`` (StreamReader/StreamWriter)
- ``protocol``  echo with ``loop.create_server`` and an ``asyncio.Protocol``
- ``httptools`` HTTP/1.1 keep-alive on a Protocol parsing with httptools
- ``uvicorn``   an ASGI app under ``uvicorn.Server`` (http=httptools)
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any, cast

from ._workloads import HTTP_BODY

READ_SIZE = 64 * 1024  # per sock_recv / StreamReader.read: the usual idiom (Protocol: the loop decides)
BODY = b"x" * HTTP_BODY
Ready = Callable[[], None]
HTTP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


def _nodelay(sock: socket.socket) -> None:
    # The transports of every loop set TCP_NODELAY; do the same for sock_* connections.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _serve_sock(listener: socket.socket, stop: asyncio.Event, ready: Ready) -> None:
    loop = asyncio.get_running_loop()
    handlers: set[asyncio.Task[None]] = set()

    async def echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := await loop.sock_recv(conn, READ_SIZE):
                    await loop.sock_sendall(conn, data)
            except ConnectionError:
                pass

    async def accept() -> None:
        while True:
            conn, _ = await loop.sock_accept(listener)
            conn.setblocking(False)
            _nodelay(conn)
            task = loop.create_task(echo(conn))
            handlers.add(task)
            task.add_done_callback(handlers.discard)

    acceptor = loop.create_task(accept())
    ready()
    await stop.wait()
    acceptor.cancel()
    for task in list(handlers):
        task.cancel()
    await asyncio.gather(acceptor, *handlers, return_exceptions=True)


async def _serve_streams(listener: socket.socket, stop: asyncio.Event, ready: Ready) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(READ_SIZE):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, sock=listener, limit=READ_SIZE)
    await _run_server(server, stop, ready)


class _EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's and rloop's transports are not asyncio.Transport subclasses
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def _serve_protocol(listener: socket.socket, stop: asyncio.Event, ready: Ready) -> None:
    server = await asyncio.get_running_loop().create_server(_EchoProtocol, sock=listener)
    await _run_server(server, stop, ready)


class _HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive: one fixed response per parsed request."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's and rloop's transports are not asyncio.Transport subclasses
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:  # called by the parser
        self.transport.write(HTTP_RESPONSE)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def _serve_httptools(listener: socket.socket, stop: asyncio.Event, ready: Ready) -> None:
    server = await asyncio.get_running_loop().create_server(_HttpProtocol, sock=listener)
    await _run_server(server, stop, ready)


async def _asgi_app(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                    send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    if scope["type"] != "http":
        return
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())],
    })
    await send({"type": "http.response.body", "body": BODY})


async def _serve_uvicorn(listener: socket.socket, stop: asyncio.Event, ready: Ready) -> None:
    import uvicorn

    config = uvicorn.Config(_asgi_app, http="httptools", lifespan="off", access_log=False,
                            log_level="warning", loop="none")
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[listener]))
    while not server.started:
        if task.done():
            await task  # startup failed: raise its exception
            raise RuntimeError("uvicorn stopped during startup")
        await asyncio.sleep(0.01)
    ready()
    await stop.wait()
    server.should_exit = True
    await task


async def _run_server(server: asyncio.AbstractServer, stop: asyncio.Event, ready: Ready) -> None:
    ready()
    await stop.wait()
    server.close()
    # From 3.12 wait_closed also waits for open connections; the client is gone by now.
    await asyncio.wait_for(server.wait_closed(), 5)


SERVERS: dict[str, Callable[[socket.socket, asyncio.Event, Ready], Awaitable[None]]] = {
    "sock": _serve_sock,
    "streams": _serve_streams,
    "protocol": _serve_protocol,
    "httptools": _serve_httptools,
    "uvicorn": _serve_uvicorn,
}


def listening_socket() -> socket.socket:
    # proto must be IPPROTO_TCP, as getaddrinfo gives it: asyncio's transports set
    # TCP_NODELAY only on sockets whose proto says TCP (base_events._set_nodelay).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock
