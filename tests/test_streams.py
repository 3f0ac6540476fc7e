"""Stream transports and servers, differential (our backends and the stdlib)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import Any

import pytest
from conftest import WINE_RST_IS_EOF, skip_under_wine


class Recorder(asyncio.Protocol):
    """Records every callback in order, for ordering assertions."""

    def __init__(self, *, keep_open_on_eof: bool = False) -> None:
        self.events: list[str] = []
        self.data = bytearray()
        self.transport: Any = None
        self.keep_open_on_eof = keep_open_on_eof
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.got_eof = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.events.append("made")
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self) -> bool:
        self.events.append("eof")
        if not self.got_eof.done():
            self.got_eof.set_result(None)
        return self.keep_open_on_eof

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


async def tcp_pair(server_proto: Any = None, client_proto: Any = None) -> tuple[Any, Any, Any, Any, Any]:
    loop = asyncio.get_running_loop()
    made: asyncio.Future[Any] = loop.create_future()
    sp = server_proto or Recorder

    def factory() -> Any:
        p = sp()
        if not made.done():
            made.set_result(p)
        return p

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ct, cp = await loop.create_connection(client_proto or Recorder, "127.0.0.1", port)
    spr = await made
    while spr.transport is None:
        await asyncio.sleep(0)
    return server, ct, cp, spr.transport, spr


@pytest.mark.parametrize("size", [1, 1000, 65536, 1 << 20, 16 << 20])
def test_streams_echo_integrity(run: Any, size: int) -> None:
    async def main() -> bool:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(1 << 16):
                w.write(data)
                await w.drain()
            w.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        r, w = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2])
        payload = os.urandom(size)

        async def send() -> None:
            w.write(payload)
            await w.drain()
            w.write_eof()

        _, got = await asyncio.gather(send(), r.read())
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()
        return got == payload

    assert run(main())


def test_callback_order_and_single_connection_lost(run: Any) -> None:
    async def main() -> tuple[list[str], list[str]]:
        server, ct, cp, st, sp = await tcp_pair(server_proto=lambda: Recorder(keep_open_on_eof=True))
        ct.write(b"hello")
        ct.write_eof()
        await sp.got_eof
        st.write(b"world")
        st.close()
        await cp.lost
        await sp.lost
        ct.close()
        await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        return sp.events, cp.events

    s_events, c_events = run(main())
    assert s_events == ["made", "data", "eof", "lost"]
    assert c_events[0] == "made" and c_events[-1] == "lost" and c_events.count("lost") == 1
    assert "data" in c_events


def test_transport_api_basics(run: Any) -> None:
    async def main() -> None:
        server, ct, cp, st, sp = await tcp_pair()
        assert ct.get_extra_info("peername") == st.get_extra_info("sockname")
        assert ct.get_extra_info("sockname") == st.get_extra_info("peername")
        sock = ct.get_extra_info("socket")
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
        assert ct.get_extra_info("nonexistent", "dflt") == "dflt"
        assert ct.get_protocol() is cp
        assert ct.can_write_eof() is True
        assert ct.is_reading() is True
        assert ct.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        ct.set_write_buffer_limits(high=1000)
        assert ct.get_write_buffer_limits() == (250, 1000)
        ct.set_write_buffer_limits(low=10)
        assert ct.get_write_buffer_limits() == (10, 40)
        with pytest.raises(ValueError):
            ct.set_write_buffer_limits(high=1, low=2)
        with pytest.raises(TypeError, match="bytes-like"):
            ct.write("text")
        ct.write(b"")  # no-op
        ct.writelines([b"a", bytearray(b"b"), memoryview(b"c")])
        ct.write_eof()
        with pytest.raises(RuntimeError, match="write_eof"):
            ct.write(b"x")
        await sp.got_eof
        assert bytes(sp.data) == b"abc"
        assert not ct.is_closing()
        ct.close()
        assert ct.is_closing()
        ct.close()  # idempotent
        await cp.lost
        await sp.lost
        server.close()
        await server.wait_closed()

    run(main())


def test_write_flow_control_pause_and_resume_once(run: Any) -> None:
    async def main() -> tuple[list[str], int, int]:
        server, ct, cp, st, sp = await tcp_pair()
        st.pause_reading()  # the peer does not read: the writer's buffer fills
        payload = b"x" * (8 << 20)
        ct.write(payload)
        size_after_write = ct.get_write_buffer_size()
        assert size_after_write > 64 * 1024
        assert cp.events.count("pause") == 1
        st.resume_reading()
        while len(sp.data) < len(payload):
            await asyncio.sleep(0.005)
        assert ct.get_write_buffer_size() == 0
        ct.close()
        await cp.lost
        st.close()
        server.close()
        await server.wait_closed()
        return cp.events, size_after_write, len(sp.data)

    events, size, received = run(main())
    assert events.count("pause") == 1 and events.count("resume") == 1
    assert events.index("pause") < events.index("resume")
    assert received == 8 << 20


def test_pause_reading_with_data_in_flight(run: Any) -> None:
    async def main() -> bytes:
        server, ct, cp, st, sp = await tcp_pair()
        chunks = [os.urandom(1000) for _ in range(200)]
        ct.write(chunks[0])
        while not sp.data:
            await asyncio.sleep(0.001)
        st.pause_reading()
        assert not st.is_reading()
        seen = len(sp.data)
        for c in chunks[1:]:
            ct.write(c)
        for _ in range(20):
            await asyncio.sleep(0.002)
            assert len(sp.data) == seen, "data_received while paused"
        st.resume_reading()
        assert st.is_reading()
        total = sum(map(len, chunks))
        while len(sp.data) < total:
            await asyncio.sleep(0.002)
        ct.close()
        await sp.lost
        server.close()
        await server.wait_closed()
        return (bytes(sp.data) == b"".join(chunks) and b"ok") or b"mismatch"

    assert run(main()) == b"ok"


def test_half_close_client_side(run: Any) -> None:
    async def main() -> bytes:
        server, ct, cp, st, sp = await tcp_pair(server_proto=lambda: Recorder(keep_open_on_eof=True))
        ct.write(b"request")
        ct.write_eof()
        await sp.got_eof
        assert not st.is_closing()  # eof_received returned True: still writable
        st.write(b"response after eof")
        st.close()
        await cp.lost
        ct.close()
        server.close()
        await server.wait_closed()
        return bytes(cp.data)

    assert run(main()) == b"response after eof"


def test_half_close_server_side(run: Any) -> None:
    async def main() -> bytes:
        server, ct, cp, st, sp = await tcp_pair(client_proto=lambda: Recorder(keep_open_on_eof=True))
        st.write(b"greeting")
        st.write_eof()
        await cp.got_eof
        ct.write(b"reply")
        ct.close()
        await sp.lost
        server.close()
        await server.wait_closed()
        return bytes(cp.data) + b"|" + bytes(sp.data)

    assert run(main()) == b"greeting|reply"


def test_eof_received_false_closes(run: Any) -> None:
    async def main() -> list[str]:
        server, ct, cp, st, sp = await tcp_pair()
        ct.write_eof()
        exc = await sp.lost
        assert exc is None
        await cp.lost
        server.close()
        await server.wait_closed()
        return sp.events

    assert run(main()) == ["made", "eof", "lost"]


def test_abort_with_unsent_data(run: Any) -> None:
    async def main() -> tuple[Any, int, list[str]]:
        server, ct, cp, st, sp = await tcp_pair()
        st.pause_reading()
        ct.write(b"y" * (4 << 20))
        assert ct.get_write_buffer_size() > 0
        ct.abort()
        assert ct.is_closing()
        exc = await cp.lost
        ct.write(b"after abort")  # ignored, no exception
        st.resume_reading()
        await sp.lost
        server.close()
        await server.wait_closed()
        return exc, ct.get_write_buffer_size(), cp.events

    exc, size, events = run(main())
    assert exc is None and size == 0
    assert events.count("lost") == 1


def test_peer_reset_mid_write_reports_no_handler_error(run: Any, loop_name: str) -> None:
    skip_under_wine(loop_name, ("emulated", "stdlib"), WINE_RST_IS_EOF)
    async def main() -> tuple[Any, list[Any]]:
        loop = asyncio.get_running_loop()
        handled: list[Any] = []
        loop.set_exception_handler(lambda lp, ctx: handled.append(ctx))
        server, ct, cp, st, sp = await tcp_pair()
        st.pause_reading()
        raw = st.get_extra_info("socket")
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        for _ in range(50):
            ct.write(b"z" * 65536)
        st.abort()  # closes with SO_LINGER 0: RST to the writer
        exc = await asyncio.wait_for(cp.lost, 10)
        await sp.lost
        server.close()
        await server.wait_closed()
        return exc, handled

    exc, handled = run(main())
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
    assert handled == []


def test_data_received_exception_goes_to_handler(run: Any, loop_name: str) -> None:
    if loop_name == "stdlib" and sys.platform == "win32":
        pytest.skip("the ProactorEventLoop lets a data_received() exception escape _loop_reading "
                    "('Exception in callback') and keeps the transport open: this test would hang")
    class Bad(Recorder):
        def data_received(self, data: bytes) -> None:
            raise ValueError("protocol bug")

    async def main() -> tuple[list[Any], Any]:
        loop = asyncio.get_running_loop()
        handled: list[Any] = []
        loop.set_exception_handler(lambda lp, ctx: handled.append(ctx))
        server, ct, cp, st, sp = await tcp_pair(server_proto=Bad)
        ct.write(b"trigger")
        exc = await sp.lost
        await cp.lost
        server.close()
        await server.wait_closed()
        return handled, exc

    handled, exc = run(main())
    assert isinstance(exc, ValueError)
    assert len(handled) == 1 and "data_received() call failed" in handled[0]["message"]


def test_buffered_protocol(run: Any) -> None:
    class Buffered(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(1000)
            self.received = bytearray()
            self.done = asyncio.get_running_loop().create_future()

        def get_buffer(self, sizehint: int) -> Any:
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            self.received += self.buf[:nbytes]

        def eof_received(self) -> bool:
            self.done.set_result(bytes(self.received))
            return False

        def connection_lost(self, exc: Any) -> None:
            pass

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        made: asyncio.Future[Any] = loop.create_future()

        def factory() -> Any:
            p = Buffered()
            made.set_result(p)
            return p

        server = await loop.create_server(factory, "127.0.0.1", 0)
        r, w = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        payload = os.urandom(300_000)
        w.write(payload)
        w.write_eof()
        got = await (await made).done
        w.close()
        server.close()
        await server.wait_closed()
        return got == payload

    assert run(main())


def test_many_concurrent_connections(run: Any, loop_name: str) -> None:
    if loop_name == "emulated" and sys.platform == "win32":
        pytest.skip("the emulated port uses select() on Windows, which takes at most 512 sockets")
    n = 1000

    async def main() -> int:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            data = await r.readexactly(8)
            w.write(data[::-1])
            await w.drain()
            w.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=n)
        addr = srv.sockets[0].getsockname()[:2]

        async def client(i: int) -> bool:
            r, w = await asyncio.open_connection(*addr)
            msg = b"%08d" % i
            w.write(msg)
            got = await r.readexactly(8)
            w.close()
            await w.wait_closed()
            return got == msg[::-1]

        results = await asyncio.gather(*(client(i) for i in range(n)))
        srv.close()
        await srv.wait_closed()
        return sum(results)

    assert run(main()) == n


def test_server_api_and_wait_closed_with_live_clients(run: Any, loop_name: str) -> None:
    if loop_name == "stdlib" and sys.version_info < (3, 12, 1):
        pytest.skip("wait_closed() returns early with live clients before CPython 3.12.1")

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        log: list[str] = []
        server = await loop.create_server(Recorder, "127.0.0.1", 0, start_serving=False)
        assert not server.is_serving()
        assert server.get_loop() is loop
        assert len(server.sockets) == 1
        await server.start_serving()
        assert server.is_serving()
        ct, cp = await loop.create_connection(Recorder, *server.sockets[0].getsockname()[:2])
        await asyncio.sleep(0.01)
        server.close()
        assert not server.is_serving() and server.sockets == ()
        waiter = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0.05)
        log.append("waiting" if not waiter.done() else "returned early")
        ct.close()  # the last client goes: wait_closed returns
        await asyncio.wait_for(waiter, 5)
        log.append("closed")
        return log

    assert run(main()) == ["waiting", "closed"]


def test_server_async_with_and_serve_forever(run: Any) -> None:
    async def main() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        async with await loop.create_server(Recorder, "127.0.0.1", 0, start_serving=False) as server:
            task = asyncio.ensure_future(server.serve_forever())
            await asyncio.sleep(0.01)
            serving = server.is_serving()
            with pytest.raises(RuntimeError, match="already being awaited"):
                await server.serve_forever()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return serving, server.is_serving()

    assert run(main()) == (True, False)


@pytest.mark.skipif(sys.version_info < (3, 13), reason="close_clients/abort_clients are 3.13+ in the stdlib")
def test_server_close_and_abort_clients(run: Any) -> None:
    async def main() -> tuple[Any, Any]:
        server, ct, cp, st, sp = await tcp_pair()
        server.close()
        server.close_clients()
        await asyncio.wait_for(cp.lost, 5)
        server2, ct2, cp2, st2, sp2 = await tcp_pair()
        server2.close()
        server2.abort_clients()
        await asyncio.wait_for(sp2.lost, 5)
        await asyncio.wait_for(server.wait_closed(), 5)
        await asyncio.wait_for(server2.wait_closed(), 5)
        ct2.close()
        return await cp.lost, await sp2.lost

    run(main())


def test_create_server_multiple_hosts_and_options(run: Any) -> None:
    async def main() -> set[str]:
        loop = asyncio.get_running_loop()
        reuse_port = hasattr(socket, "SO_REUSEPORT")  # Windows has none (ValueError, as the stdlib)
        server = await loop.create_server(Recorder, ["127.0.0.1", "localhost"], 0, reuse_port=reuse_port,
                                          backlog=5)
        hosts = {s.getsockname()[0] for s in server.sockets}
        server.close()
        await server.wait_closed()
        with pytest.raises(ValueError, match="can not be specified at the same time"):
            await loop.create_server(Recorder, "127.0.0.1", 0, sock=socket.socket())
        with pytest.raises(TypeError, match="ssl argument must be an SSLContext"):
            await loop.create_server(Recorder, "127.0.0.1", 0, ssl=True)
        with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful"):
            await loop.create_server(Recorder, "127.0.0.1", 0, ssl_handshake_timeout=1)
        with pytest.raises(ValueError, match="Neither host/port nor sock"):
            await loop.create_server(Recorder)
        return hosts

    assert "127.0.0.1" in run(main())


def test_create_server_address_in_use(run: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        s1 = await loop.create_server(Recorder, "127.0.0.1", 0)
        port = s1.sockets[0].getsockname()[1]
        with pytest.raises(OSError) as info:
            await loop.create_server(Recorder, "127.0.0.1", port, reuse_address=False)
        assert "error while attempting to bind on address" in str(info.value)
        s1.close()
        await s1.wait_closed()

    run(main())


def test_create_connection_errors(run: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        port = ls.getsockname()[1]
        ls.close()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(Recorder, "127.0.0.1", port)
        with pytest.raises(ValueError, match="server_hostname is only meaningful with ssl"):
            await loop.create_connection(Recorder, "127.0.0.1", port, server_hostname="x")
        with pytest.raises(ValueError, match="host and port was not specified"):
            await loop.create_connection(Recorder)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with pytest.raises(ValueError, match="A Stream Socket was expected"):
            await loop.create_connection(Recorder, sock=udp)
        udp.close()

    run(main())


def test_create_connection_all_errors(run: Any, loop_name: str) -> None:
    if loop_name == "stdlib" and sys.version_info < (3, 12):
        pytest.skip("all_errors= is new in the stdlib in 3.12 (ours has it on 3.11 too)")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        port = ls.getsockname()[1]
        ls.close()
        with pytest.raises(ExceptionGroup) as info:
            await loop.create_connection(Recorder, "127.0.0.1", port, all_errors=True)
        assert all(isinstance(e, ConnectionRefusedError) for e in info.value.exceptions)

    run(main())


def test_create_connection_local_addr_and_sock(run: Any) -> None:
    async def main() -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Recorder, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ct, cp = await loop.create_connection(Recorder, "127.0.0.1", port, local_addr=("127.0.0.1", 0))
        local = ct.get_extra_info("sockname")
        ct.close()
        s = socket.socket()
        s.connect(("127.0.0.1", port))
        ct2, cp2 = await loop.create_connection(Recorder, sock=s)
        peer = ct2.get_extra_info("peername")
        ct2.close()
        await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        return local, peer

    local, peer = run(main())
    assert local[0] == "127.0.0.1" and peer[1] > 0


def test_happy_eyeballs_with_unreachable_address(run: Any, monkeypatch: Any) -> None:
    async def main() -> tuple[Any, float]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Recorder, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        black_hole = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("192.0.2.1", port))
        working = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))

        async def fake_getaddrinfo(*args: Any, **kwargs: Any) -> list[Any]:
            return [black_hole, working]

        monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)
        t0 = loop.time()
        ct, cp = await asyncio.wait_for(
            loop.create_connection(Recorder, "example.invalid", port, happy_eyeballs_delay=0.05), 10)
        elapsed = loop.time() - t0
        peer = ct.get_extra_info("peername")
        ct.close()
        await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        return peer, elapsed

    peer, _ = run(main())
    assert peer[0] == "127.0.0.1"


def test_connect_accepted_socket(run: Any) -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen()
        c = socket.create_connection(ls.getsockname())
        conn, _ = ls.accept()
        st, sp = await loop.connect_accepted_socket(Recorder, conn)
        c.sendall(b"from raw client")
        c.shutdown(socket.SHUT_WR)
        await sp.got_eof
        c.close()
        ls.close()
        st.close()
        return bytes(sp.data)

    assert run(main()) == b"from raw client"


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="AF_UNIX needed")
def test_unix_server_and_connection(run: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "sock")

    async def main() -> tuple[bytes, bool]:
        loop = asyncio.get_running_loop()

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(await r.read(100))
            await w.drain()
            w.close()

        server = await asyncio.start_unix_server(handle, path)
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"over unix")
        data = await r.read(100)
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)
        with pytest.raises(ValueError, match="path and sock can not be specified"):
            await loop.create_unix_server(Recorder, path, sock=socket.socket(socket.AF_UNIX))
        return data, os.path.exists(path)

    data, exists_after_close = run(main())
    assert data == b"over unix"
    # Python 3.13 removes the socket file on close (cleanup_socket=True).
    assert exists_after_close == (sys.version_info < (3, 13))


def test_loop_sendfile_over_transport(run: Any, tmp_path: Any) -> None:
    content = os.urandom(500_000)
    p = tmp_path / "payload"
    p.write_bytes(content)

    async def main() -> tuple[int, bytes]:
        server, ct, cp, st, sp = await tcp_pair()
        loop = asyncio.get_running_loop()
        ct.write(b"head:")
        with open(p, "rb") as f:
            sent = await loop.sendfile(ct, f, 100, 400_000)
        ct.write(b":tail")
        ct.write_eof()
        await sp.got_eof
        ct.close()
        server.close()
        await server.wait_closed()
        return sent, bytes(sp.data)

    sent, data = run(main())
    assert sent == 400_000
    assert data == b"head:" + content[100:400_100] + b":tail"


def test_stream_reader_limit_and_readline(run: Any) -> None:
    async def main() -> tuple[bytes, str]:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(b"line one\n" + b"x" * 200 + b"\n")
            await w.drain()
            w.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        r, w = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2], limit=100)
        first = await r.readline()
        try:
            await r.readline()
            err = "none"
        except ValueError as exc:
            err = type(exc).__name__
        w.close()
        srv.close()
        await srv.wait_closed()
        return first, err

    assert run(main()) == (b"line one\n", "ValueError")
