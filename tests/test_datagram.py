"""Datagram endpoints, differential."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import Any

import pytest
from conftest import skip_under_wine


class Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.errors: list[Exception] = []
        self.transport: Any = None
        self.lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.paused = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)

    def connection_lost(self, exc: Any) -> None:
        self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.paused += 1


class Echo(Collector):
    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data.upper(), addr)


def test_udp_echo_many(run: Any) -> None:
    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        st, sp = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        ct, cp = await loop.create_datagram_endpoint(Collector, remote_addr=st.get_extra_info("sockname"))
        got = []
        for i in range(100):
            ct.sendto(b"msg%d" % i)
            data, addr = await asyncio.wait_for(cp.queue.get(), 5)
            assert addr == st.get_extra_info("sockname")
            got.append(data)
        ct.close()
        st.close()
        await cp.lost
        await sp.lost
        return got

    assert run(main()) == [b"MSG%d" % i for i in range(100)]


def test_unconnected_sendto_and_addresses(run: Any) -> None:
    async def main() -> tuple[bytes, bool]:
        loop = asyncio.get_running_loop()
        st, sp = await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0))
        ct, cp = await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0))
        ct.sendto(b"to addr", st.get_extra_info("sockname"))
        data, addr = await asyncio.wait_for(sp.queue.get(), 5)
        match = addr == ct.get_extra_info("sockname")
        with pytest.raises(TypeError, match="bytes-like"):
            ct.sendto("text", addr)  # type: ignore[arg-type]
        ct.close()
        st.close()
        return data, match

    assert run(main()) == (b"to addr", True)


def test_connected_endpoint_rejects_other_address(run: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        st, sp = await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0))
        ct, cp = await loop.create_datagram_endpoint(Collector, remote_addr=st.get_extra_info("sockname"))
        with pytest.raises(ValueError, match="Invalid address"):
            ct.sendto(b"x", ("127.0.0.1", 9))
        ct.close()
        st.close()

    run(main())


def test_error_received_on_refused(run: Any, loop_name: str) -> None:
    skip_under_wine(loop_name, ("emulated",),
                    "Wine: ICMP port unreachable is not reported to a non-blocking UDP recvfrom")
    async def main() -> list[Exception]:
        loop = asyncio.get_running_loop()
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        addr = probe.getsockname()
        probe.close()  # nobody listens: the kernel answers with ICMP port unreachable
        ct, cp = await loop.create_datagram_endpoint(Collector, remote_addr=addr)
        for _ in range(3):
            ct.sendto(b"anyone?")
            await asyncio.sleep(0.02)
        ct.close()
        return cp.errors

    errors = run(main())
    assert errors and all(isinstance(e, ConnectionRefusedError) for e in errors)


def test_large_datagrams_and_truncation_free_receive(run: Any) -> None:
    async def main() -> tuple[int, bool]:
        loop = asyncio.get_running_loop()
        st, sp = await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0))
        ct, cp = await loop.create_datagram_endpoint(Collector, remote_addr=st.get_extra_info("sockname"))
        payload = os.urandom(60_000)
        ct.sendto(payload)
        data, _ = await asyncio.wait_for(sp.queue.get(), 5)
        ct.close()
        st.close()
        return len(data), data == payload

    assert run(main()) == (60_000, True)


def test_write_buffer_accounting(run: Any) -> None:
    async def main() -> tuple[int, tuple[int, int]]:
        loop = asyncio.get_running_loop()
        ct, cp = await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0))
        limits = ct.get_write_buffer_limits()
        size = ct.get_write_buffer_size()
        ct.close()
        return size, limits

    assert run(main()) == (0, (16 * 1024, 64 * 1024))


def test_create_datagram_endpoint_argument_errors(run: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(ValueError, match="unexpected address family"):
            await loop.create_datagram_endpoint(Collector)
        with pytest.raises(TypeError, match="2-tuple is expected"):
            await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0, 0))
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with pytest.raises(ValueError, match=r"A (datagram|UDP) [sS]ocket was expected"):
            await loop.create_datagram_endpoint(Collector, sock=s)
        s.close()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with pytest.raises(ValueError, match="socket modifier keyword arguments"):
            await loop.create_datagram_endpoint(Collector, sock=u, local_addr=("127.0.0.1", 0))
        tr, pr = await loop.create_datagram_endpoint(Collector, sock=u)
        assert tr.get_extra_info("socket").fileno() == u.fileno()
        tr.close()

    run(main())


def test_allow_broadcast_and_reuse_port(run: Any) -> None:
    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        if not hasattr(socket, "SO_REUSEPORT"):  # Windows: refused, as by the stdlib
            with pytest.raises(ValueError, match="reuse_port not supported by socket module"):
                await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0), reuse_port=True)
            tr, pr = await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0),
                                                         allow_broadcast=True)
            flag = tr.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
            tr.close()
            return flag, 1
        tr, pr = await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0),
                                                     allow_broadcast=True, reuse_port=True)
        sock = tr.get_extra_info("socket")
        flags = (sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST),
                 sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
        tr.close()
        return flags

    b, r = run(main())
    assert b and r


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="AF_UNIX needed")
def test_unix_datagram(run: Any, tmp_path: Any) -> None:
    a_path, b_path = str(tmp_path / "a"), str(tmp_path / "b")

    async def main() -> tuple[bytes, Any]:
        loop = asyncio.get_running_loop()
        at, ap = await loop.create_datagram_endpoint(Collector, local_addr=a_path, family=socket.AF_UNIX)
        bt, bp = await loop.create_datagram_endpoint(Collector, local_addr=b_path, remote_addr=a_path,
                                                     family=socket.AF_UNIX)
        bt.sendto(b"unix dgram")
        data, addr = await asyncio.wait_for(ap.queue.get(), 5)
        at.close()
        bt.close()
        return data, addr

    assert run(main()) == (b"unix dgram", b_path)


@pytest.mark.skipif(sys.version_info < (3, 13),
                    reason="empty datagrams are sent from 3.13 (earlier versions drop them)")
def test_empty_datagram_is_sent(run: Any, loop_name: str, request: Any) -> None:
    if loop_name == "stdlib" and sys.platform == "win32":
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="the ProactorEventLoop drops received empty datagrams (`if data:`)"))
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        st, sp = await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0))
        ct, cp = await loop.create_datagram_endpoint(Collector, remote_addr=st.get_extra_info("sockname"))
        ct.sendto(b"")
        data, _ = await asyncio.wait_for(sp.queue.get(), 5)
        ct.close()
        st.close()
        return data

    assert run(main()) == b""


def test_abort_and_close_callbacks(run: Any) -> None:
    async def main() -> tuple[Any, bool]:
        loop = asyncio.get_running_loop()
        tr, pr = await loop.create_datagram_endpoint(Collector, local_addr=("127.0.0.1", 0))
        tr.abort()
        exc = await pr.lost
        return exc, tr.is_closing()

    assert run(main()) == (None, True)
