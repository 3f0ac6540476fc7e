"""loop.sock_* coroutines, differential, including errors and cancellation."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import sys
import tempfile
from typing import Any

import pytest
from conftest import WINE_RST_IS_EOF, skip_under_wine

HAS_UNIX = hasattr(socket, "AF_UNIX")


def tcp_listener() -> socket.socket:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(100)
    ls.setblocking(False)
    return ls


async def connected_pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    loop = asyncio.get_running_loop()
    ls = tcp_listener()
    cl = socket.socket()
    cl.setblocking(False)
    acc = asyncio.ensure_future(loop.sock_accept(ls))
    await loop.sock_connect(cl, ls.getsockname())
    srv, _ = await acc
    return ls, cl, srv


def test_echo_server_unchanged(run: Any) -> None:
    """The Done-when scenario: a sock_accept/sock_recv/sock_sendall echo server."""

    async def handle(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        with conn:
            while data := await loop.sock_recv(conn, 65536):
                await loop.sock_sendall(conn, data)

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        ls = tcp_listener()

        handlers: set[asyncio.Task[None]] = set()

        async def server() -> None:
            while True:
                conn, _ = await loop.sock_accept(ls)
                task = loop.create_task(handle(loop, conn))
                handlers.add(task)
                task.add_done_callback(handlers.discard)

        srv_task = loop.create_task(server())
        replies = []
        for i in range(20):
            c = socket.socket()
            c.setblocking(False)
            await loop.sock_connect(c, ls.getsockname())
            msg = b"message %d " % i * (i + 1)
            await loop.sock_sendall(c, msg)
            got = b""
            while len(got) < len(msg):
                got += await loop.sock_recv(c, 65536)
            replies.append(got)
            c.close()
        srv_task.cancel()
        ls.close()
        return replies

    replies = run(main())
    assert replies == [b"message %d " % i * (i + 1) for i in range(20)]


@pytest.mark.parametrize("size", [1, 1000, 65536, 4 * 1024 * 1024])
def test_sendall_recv_integrity(run: Any, size: int) -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        ls, cl, srv = await connected_pair()
        payload = os.urandom(size)

        async def reader() -> bytes:
            buf = bytearray()
            while len(buf) < size:
                chunk = await loop.sock_recv(srv, 1 << 16)
                assert chunk
                buf += chunk
            return bytes(buf)

        _, got = await asyncio.gather(loop.sock_sendall(cl, payload), reader())
        assert got == payload
        for s in (ls, cl, srv):
            s.close()
        return got

    assert len(run(main())) == size


def test_recv_into_and_eof(run: Any) -> None:
    async def main() -> tuple[bytes, int]:
        loop = asyncio.get_running_loop()
        ls, cl, srv = await connected_pair()
        buf = bytearray(10)
        task = asyncio.ensure_future(loop.sock_recv_into(srv, buf))
        await asyncio.sleep(0.01)
        await loop.sock_sendall(cl, b"abc")
        n = await task
        cl.shutdown(socket.SHUT_WR)
        eof = await loop.sock_recv_into(srv, buf)
        for s in (ls, cl, srv):
            s.close()
        return bytes(buf[:n]), eof

    assert run(main()) == (b"abc", 0)


def test_recv_eof_returns_empty(run: Any) -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        ls, cl, srv = await connected_pair()
        t = asyncio.ensure_future(loop.sock_recv(srv, 100))
        await asyncio.sleep(0.01)
        cl.close()
        data = await t
        ls.close()
        srv.close()
        return data

    assert run(main()) == b""


def test_blocking_socket_rejected(run: Any, loop_name: str, request: Any) -> None:
    if loop_name == "stdlib" and sys.platform == "win32":
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="the ProactorEventLoop does not check for blocking sockets"))
    async def main() -> None:
        loop = asyncio.get_running_loop()
        s = socket.socket()
        try:
            with pytest.raises(ValueError, match="non-blocking"):
                await loop.sock_recv(s, 10)
            with pytest.raises(ValueError, match="non-blocking"):
                await loop.sock_sendall(s, b"x")
            with pytest.raises(ValueError, match="non-blocking"):
                await loop.sock_accept(s)
        finally:
            s.close()

    run(main(), debug=True)  # the stdlib checks in debug mode; we always do


def test_connect_refused(run: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ls = tcp_listener()
        addr = ls.getsockname()
        ls.close()  # nothing listens there now
        c = socket.socket()
        c.setblocking(False)
        with pytest.raises(ConnectionRefusedError):
            await loop.sock_connect(c, addr)
        c.close()

    run(main())


def test_connect_resolves_names(run: Any, loop_name: str, request: Any) -> None:
    if loop_name == "stdlib" and sys.platform == "win32":
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="the ProactorEventLoop's sock_connect does not resolve host names"))
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        ls = tcp_listener()
        c = socket.socket()
        c.setblocking(False)
        acc = asyncio.ensure_future(loop.sock_accept(ls))
        await loop.sock_connect(c, ("localhost", ls.getsockname()[1]))
        srv, addr = await acc
        assert addr == c.getsockname()
        await loop.sock_sendall(c, b"ping")
        data = await loop.sock_recv(srv, 10)
        for s in (ls, c, srv):
            s.close()
        return data

    assert run(main()) == b"ping"


def test_recv_on_reset_connection_raises(run: Any, loop_name: str) -> None:
    skip_under_wine(loop_name, ("emulated",), WINE_RST_IS_EOF)
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ls, cl, srv = await connected_pair()
        t = asyncio.ensure_future(loop.sock_recv(srv, 100))
        await asyncio.sleep(0.01)
        cl.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        cl.close()  # RST
        with pytest.raises(ConnectionResetError):
            await t
        ls.close()
        srv.close()

    run(main())


def test_sendall_to_closed_peer_raises(run: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ls, cl, srv = await connected_pair()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        srv.close()
        await asyncio.sleep(0.01)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(100):
                await loop.sock_sendall(cl, b"x" * 65536)
        ls.close()
        cl.close()

    run(main())


def test_cancelled_recv_loses_no_data(run: Any, loop_name: str, request: Any) -> None:
    """Receives are cancelled while waiting in the port, at varying distances
    from the moment the peer's bytes arrive; every byte must come out once,
    in order."""
    if loop_name == "stdlib":
        request.applymarker(pytest.mark.xfail(
            strict=True,
            reason="the stdlib drops bytes whose sock_recv result was set just before the task was cancelled",
        ))

    async def main() -> tuple[bytes, bytes]:
        loop = asyncio.get_running_loop()
        ls, cl, srv = await connected_pair()
        received = bytearray()
        sent = bytearray()

        async def drain() -> None:
            nonlocal received
            while len(received) < len(sent):
                received += await loop.sock_recv(srv, 4096)

        for i in range(300):
            t = asyncio.ensure_future(loop.sock_recv(srv, 977))
            await asyncio.sleep(0)  # the receive is now waiting in the port
            chunk = bytes([i % 256]) * (1 + i % 50)
            mode = i % 7
            if mode < 4:  # data first, cancel 0-3 iterations later
                cl.send(chunk)
                for _ in range(mode):
                    await asyncio.sleep(0)
                t.cancel()
            else:  # cancel first, data 0-2 iterations later
                t.cancel()
                for _ in range(mode - 4):
                    await asyncio.sleep(0)
                cl.send(chunk)
            sent += chunk
            try:
                received += await t
            except asyncio.CancelledError:
                pass
            # Drain, so the next receive really has to wait in the port.  A
            # loop that lost bytes would wait here forever: fail instead.
            try:
                await asyncio.wait_for(drain(), 5)
            except TimeoutError:
                raise AssertionError(f"bytes lost: got {len(received)} of {len(sent)}") from None
        for s in (ls, cl, srv):
            s.close()
        return bytes(received), bytes(sent)

    got, sent = run(main())
    assert got == sent


def test_cancelled_recv_before_data_then_recv(run: Any) -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        ls, cl, srv = await connected_pair()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_recv(srv, 100), 0.02)
        await loop.sock_sendall(cl, b"after")
        data = await loop.sock_recv(srv, 100)
        for s in (ls, cl, srv):
            s.close()
        return data

    assert run(main()) == b"after"


def test_cancelled_accept_leaks_nothing(run: Any) -> None:
    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        ls = tcp_listener()
        before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
        for _ in range(20):
            t = asyncio.ensure_future(loop.sock_accept(ls))
            await asyncio.sleep(0)
            c = socket.socket()
            c.setblocking(False)
            try:
                await loop.sock_connect(c, ls.getsockname())
            except OSError:
                pass
            t.cancel()
            try:
                conn, _ = await t
                conn.close()
            except asyncio.CancelledError:
                pass
            c.close()
            # whatever the race, the listener still works afterwards
            c2 = socket.socket()
            c2.setblocking(False)
            acc = asyncio.ensure_future(loop.sock_accept(ls))
            await loop.sock_connect(c2, ls.getsockname())
            conn2, _ = await acc
            conn2.close()
            c2.close()
        await asyncio.sleep(0.05)
        after = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
        ls.close()
        return before, after

    before, after = run(main())
    assert after <= before + 1  # the +1 tolerates a pending accept being reaped at close


def test_cancelled_sendall_reports_partial_ours(port_name: str, caplog: Any) -> None:
    import iocp_policy

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ls, cl, srv = await connected_pair()
        cl.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        t = asyncio.ensure_future(loop.sock_sendall(cl, b"z" * (8 * 1024 * 1024)))
        await asyncio.sleep(0.05)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await asyncio.sleep(0.05)
        for s in (ls, cl, srv):
            s.close()

    with caplog.at_level(logging.WARNING, logger="iocp_policy"):
        with asyncio.Runner(loop_factory=lambda: iocp_policy.new_event_loop(backend=port_name)) as r:
            r.run(main())
    assert any("partial message" in r.getMessage() for r in caplog.records)


def test_udp_sendto_recvfrom(run: Any) -> None:
    async def main() -> tuple[bytes, Any, int, bytes, Any]:
        loop = asyncio.get_running_loop()
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (a, b):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        t = asyncio.ensure_future(loop.sock_recvfrom(b, 100))
        await asyncio.sleep(0.01)
        n = await loop.sock_sendto(a, b"dgram", b.getsockname())
        data, addr = await t
        buf = bytearray(3)
        t2 = asyncio.ensure_future(loop.sock_recvfrom_into(b, buf))
        await asyncio.sleep(0.01)
        await loop.sock_sendto(a, b"truncated", b.getsockname())
        nb, addr2 = await t2
        a_name = a.getsockname()
        a.close()
        b.close()
        assert addr == a_name and addr2 == a_name
        return data, addr, n, bytes(buf[:nb]), addr2

    data, _, n, part, _ = run(main())
    assert (data, n, part) == (b"dgram", 5, b"tru")


@pytest.mark.skipif(not HAS_UNIX, reason="AF_UNIX needed")
def test_unix_stream_sock_ops(run: Any) -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "s")
            ls = socket.socket(socket.AF_UNIX)
            ls.bind(path)
            ls.listen()
            ls.setblocking(False)
            c = socket.socket(socket.AF_UNIX)
            c.setblocking(False)
            acc = asyncio.ensure_future(loop.sock_accept(ls))
            await loop.sock_connect(c, path)
            srv, _ = await acc
            await loop.sock_sendall(srv, b"unix!")
            data = await loop.sock_recv(c, 10)
            for s in (ls, c, srv):
                s.close()
            return data

    assert run(main()) == b"unix!"


def test_sock_sendfile(run: Any, tmp_path: Any) -> None:
    content = os.urandom(300_000)
    p = tmp_path / "f.bin"
    p.write_bytes(content)

    async def main() -> tuple[int, bytes, int]:
        loop = asyncio.get_running_loop()
        ls, cl, srv = await connected_pair()

        async def reader(n: int) -> bytes:
            buf = bytearray()
            while len(buf) < n:
                chunk = await loop.sock_recv(srv, 65536)
                if not chunk:
                    break
                buf += chunk
            return bytes(buf)

        with open(p, "rb") as f:
            sent, got = await asyncio.gather(loop.sock_sendfile(cl, f, 1000, 200_000), reader(200_000))
            pos = f.tell()
        for s in (ls, cl, srv):
            s.close()
        return sent, got, pos

    sent, got, pos = run(main())
    assert sent == 200_000
    assert got == content[1000:201_000]
    assert pos == 201_000


def test_sock_sendfile_fallback_for_non_file(run: Any) -> None:
    import io as _io

    async def main() -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        ls, cl, srv = await connected_pair()
        data = b"in-memory " * 1000
        f = _io.BytesIO(data)
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await loop.sock_sendfile(cl, f, fallback=False)
        sent_task = asyncio.ensure_future(loop.sock_sendfile(cl, f))
        buf = bytearray()
        while len(buf) < len(data):
            buf += await loop.sock_recv(srv, 65536)
        sent = await sent_task
        for s in (ls, cl, srv):
            s.close()
        return sent, bytes(buf)

    sent, got = run(main())
    assert sent == len(got) == 10_000


def test_sock_sendfile_bad_params(run: Any, tmp_path: Any) -> None:
    p = tmp_path / "t.txt"
    p.write_text("x")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ls, cl, srv = await connected_pair()
        with open(p) as text:
            with pytest.raises(ValueError, match="binary mode"):
                await loop.sock_sendfile(cl, text)
        with open(p, "rb") as f:
            with pytest.raises(ValueError):
                await loop.sock_sendfile(cl, f, count=0)
            with pytest.raises(ValueError):
                await loop.sock_sendfile(cl, f, offset=-1)
            with pytest.raises(TypeError):
                await loop.sock_sendfile(cl, f, count="1")  # type: ignore[arg-type]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.setblocking(False)
        with open(p, "rb") as f:
            with pytest.raises(ValueError, match="SOCK_STREAM"):
                await loop.sock_sendfile(u, f)
        for s in (ls, cl, srv, u):
            s.close()

    run(main())


@pytest.mark.skipif(sys.platform == "win32", reason="errno differs on Windows")
def test_recv_on_closed_fd_is_an_oserror(run: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        s = socket.socket()
        s.setblocking(False)
        s.close()
        with pytest.raises(OSError) as info:
            await loop.sock_recv(s, 10)
        assert info.value.errno in (errno.EBADF, None)

    run(main())


def test_sock_ops_refuse_a_transport_socket(run: Any, loop_name: str, request: Any) -> None:
    if loop_name == "stdlib" and sys.platform == "win32":
        request.applymarker(pytest.mark.xfail(
            strict=True, raises=OSError, reason="the ProactorEventLoop does not check: associating the "
            "transport's handle with its completion port again fails (WinError 87)"))
    async def main() -> str:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        tr, _ = await loop.create_connection(asyncio.Protocol, *server.sockets[0].getsockname()[:2])
        raw = tr.get_extra_info("socket")
        # A second socket object on the transport's own fd (detached afterwards).
        owned = socket.socket(raw.family, raw.type, raw.proto, fileno=raw.fileno())
        owned.setblocking(False)
        try:
            with pytest.raises(RuntimeError, match="is used by transport") as info:
                await loop.sock_recv(owned, 10)  # nothing to read: the waiting path checks
            return str(info.value)
        finally:
            owned.detach()
            tr.close()
            server.close()
            await server.wait_closed()

    assert "is used by transport" in run(main())
