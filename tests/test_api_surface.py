"""Every public method of asyncio.AbstractEventLoop is implemented: each one is
called for real on each loop, and none may raise NotImplementedError.

The list of methods comes from the running Python, so a method a new Python
adds fails this test until it is exercised here."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux surface")

Exercise = Callable[[Any], Awaitable[Any]]


async def ready_future(loop: Any, schedule: Callable[[asyncio.Future[Any]], object]) -> Any:
    fut = loop.create_future()
    schedule(fut)
    return await asyncio.wait_for(fut, 10)


async def _readiness(loop: Any) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        fut = loop.create_future()
        loop.add_writer(a, lambda: fut.done() or fut.set_result("w"))
        assert await fut == "w" and loop.remove_writer(a)
        fut2 = loop.create_future()
        loop.add_reader(a, lambda: fut2.done() or fut2.set_result(a.recv(1)))
        b.send(b"r")
        assert await fut2 == b"r" and loop.remove_reader(a)
    finally:
        a.close()
        b.close()


async def _signals(loop: Any) -> None:
    fut = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, fut.set_result, "sig")
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await asyncio.wait_for(fut, 10) == "sig"
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1)


async def _pipes(loop: Any) -> None:
    r, w = os.pipe()
    got = loop.create_future()

    class P(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            got.set_result(data)

    rt, _ = await loop.connect_read_pipe(P, os.fdopen(r, "rb", buffering=0))
    wt, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, os.fdopen(w, "wb", buffering=0))
    wt.write(b"pipe")
    assert await asyncio.wait_for(got, 10) == b"pipe"
    wt.close()
    rt.close()
    await asyncio.sleep(0.01)


class ServerSide(asyncio.Protocol):
    """Lets an exercise wait until the server's end of its connection is
    gone (3.13.0's Server breaks if a connection outlives the loop)."""

    def __init__(self) -> None:
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(None)


class OneConnectionServer:
    """A protocol factory that remembers the protocol it made."""

    def __init__(self) -> None:
        self.made: list[ServerSide] = []

    def __call__(self) -> ServerSide:
        self.made.append(ServerSide())
        return self.made[-1]

    async def closed(self) -> None:
        while not self.made:
            await asyncio.sleep(0.001)
        await asyncio.wait_for(self.made[0].lost, 10)


async def _tcp(loop: Any) -> None:
    factory = OneConnectionServer()
    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    with tempfile.TemporaryFile() as f:
        f.write(b"x" * 1000)
        f.flush()
        assert await loop.sendfile(transport, f, 0, 1000) == 1000
    transport.close()
    await factory.closed()
    server.close()
    await server.wait_closed()


async def _unix(loop: Any) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "sock")
        factory = OneConnectionServer()
        server = await loop.create_unix_server(factory, path)
        transport, _ = await loop.create_unix_connection(asyncio.Protocol, path)
        transport.close()
        await factory.closed()
        server.close()
        await server.wait_closed()


async def _accepted(loop: Any) -> None:
    a, b = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
    transport.close()
    await asyncio.sleep(0.01)
    b.close()


async def _datagram(loop: Any) -> None:
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    transport.close()


async def _sock(loop: Any) -> None:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.setblocking(False)
    csock = socket.socket()
    csock.setblocking(False)
    accept = asyncio.ensure_future(loop.sock_accept(lsock))
    await loop.sock_connect(csock, lsock.getsockname())
    ssock, _ = await accept
    ssock.setblocking(False)
    await loop.sock_sendall(csock, b"abcdef")
    assert await loop.sock_recv(ssock, 3) == b"abc"
    buf = bytearray(3)
    assert await loop.sock_recv_into(ssock, buf) == 3 and buf == b"def"
    with tempfile.TemporaryFile() as f:
        f.write(b"y" * 100)
        f.flush()
        assert await loop.sock_sendfile(csock, f, 0, 100) == 100
    for s in (lsock, csock, ssock):
        s.close()
    u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for u in (u1, u2):
        u.bind(("127.0.0.1", 0))
        u.setblocking(False)
    await loop.sock_sendto(u1, b"d1", u2.getsockname())
    assert (await loop.sock_recvfrom(u2, 10))[0] == b"d1"
    await loop.sock_sendto(u1, b"d2", u2.getsockname())
    dbuf = bytearray(10)
    assert (await loop.sock_recvfrom_into(u2, dbuf))[0] == 2
    u1.close()
    u2.close()


async def _tls(loop: Any) -> None:
    trustme = pytest.importorskip("trustme", reason="trustme makes the test certificate")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    factory = OneConnectionServer()
    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    transport, proto = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    tls = await loop.start_tls(transport, proto, client_ctx, server_hostname="localhost")
    assert tls.get_extra_info("ssl_object") is not None
    tls.close()
    await factory.closed()
    server.close()
    await server.wait_closed()


async def _subprocess(loop: Any) -> None:
    transport, _ = await loop.subprocess_exec(asyncio.SubprocessProtocol, "true", stdin=None, stdout=None,
                                              stderr=None)
    assert await transport._wait() == 0
    transport.close()
    transport, _ = await loop.subprocess_shell(asyncio.SubprocessProtocol, "exit 3", stdin=None, stdout=None,
                                               stderr=None)
    assert await transport._wait() == 3
    transport.close()


async def _callbacks(loop: Any) -> None:
    assert await ready_future(loop, lambda f: loop.call_soon(f.set_result, 1)) == 1
    assert await ready_future(loop, lambda f: loop.call_soon_threadsafe(f.set_result, 2)) == 2
    assert await ready_future(loop, lambda f: loop.call_later(0.001, f.set_result, 3)) == 3
    assert await ready_future(loop, lambda f: loop.call_at(loop.time() + 0.001, f.set_result, 4)) == 4
    assert await loop.create_task(asyncio.sleep(0, 5)) == 5


async def _handlers(loop: Any) -> None:
    seen: list[Any] = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx["message"]))
    assert loop.get_exception_handler() is not None
    loop.call_exception_handler({"message": "m"})
    loop.set_exception_handler(None)
    assert seen == ["m"]
    loop.default_exception_handler({"message": "logged by the surface test (expected)"})
    loop.set_debug(loop.get_debug())
    factory = loop.get_task_factory()
    loop.set_task_factory(None)
    loop.set_task_factory(factory)


async def _executors(loop: Any) -> None:
    assert await loop.run_in_executor(None, sum, [1, 2]) == 3
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
    assert await loop.run_in_executor(None, abs, -4) == 4
    await loop.shutdown_default_executor()


async def _dns(loop: Any) -> None:
    assert await loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
    assert await loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)


async def _asyncgens(loop: Any) -> None:
    await loop.shutdown_asyncgens()


ASYNC: dict[str, Exercise] = {
    **dict.fromkeys(["add_reader", "remove_reader", "add_writer", "remove_writer"], _readiness),
    **dict.fromkeys(["add_signal_handler", "remove_signal_handler"], _signals),
    **dict.fromkeys(["connect_read_pipe", "connect_write_pipe"], _pipes),
    **dict.fromkeys(["create_server", "create_connection", "sendfile"], _tcp),
    **dict.fromkeys(["create_unix_server", "create_unix_connection"], _unix),
    "connect_accepted_socket": _accepted,
    "create_datagram_endpoint": _datagram,
    **dict.fromkeys(["sock_accept", "sock_connect", "sock_recv", "sock_recv_into", "sock_recvfrom",
                     "sock_recvfrom_into", "sock_sendall", "sock_sendfile", "sock_sendto"], _sock),
    "start_tls": _tls,
    **dict.fromkeys(["subprocess_exec", "subprocess_shell"], _subprocess),
    **dict.fromkeys(["call_soon", "call_soon_threadsafe", "call_later", "call_at", "create_task",
                     "create_future", "time"], _callbacks),
    **dict.fromkeys(["set_exception_handler", "get_exception_handler", "call_exception_handler",
                     "default_exception_handler", "get_debug", "set_debug", "get_task_factory",
                     "set_task_factory"], _handlers),
    **dict.fromkeys(["getaddrinfo", "getnameinfo"], _dns),
    "shutdown_asyncgens": _asyncgens,
    # last: it shuts the default executor down
    **dict.fromkeys(["run_in_executor", "set_default_executor", "shutdown_default_executor"], _executors),
}
# Driven from outside: they run, stop and close the loop itself.
SYNC = ["run_until_complete", "run_forever", "stop", "is_running", "is_closed", "close"]


def public_methods() -> set[str]:
    return {n for n, _ in inspect.getmembers(asyncio.AbstractEventLoop) if not n.startswith("_")}


def test_every_method_is_exercised() -> None:
    assert set(ASYNC) | set(SYNC) == public_methods()


def test_no_method_raises_not_implemented(loop_factory: Any) -> None:
    lp = loop_factory()
    failures: list[str] = []
    try:
        assert lp.is_closed() is False and lp.is_running() is False
        lp.stop()
        lp.run_forever()  # stop() before: one iteration, then return
        lp.call_soon(lp.stop)
        lp.run_forever()

        async def all_async() -> None:
            assert lp.is_running()
            for fn in dict.fromkeys(ASYNC.values()):
                try:
                    await fn(lp)
                except NotImplementedError as exc:
                    failures.append(f"{fn.__name__}: NotImplementedError {exc}")

        lp.run_until_complete(all_async())
    finally:
        lp.close()
    assert lp.is_closed()
    assert failures == []
    # and the methods are really the loop's, not the abstract ones
    for name in public_methods():
        impl = getattr(type(lp), name)
        assert impl is not getattr(asyncio.AbstractEventLoop, name), name
