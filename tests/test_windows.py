"""Windows-only tests of the iocp backend: the completion port itself, AFD
polling, cancellation with buffers in flight, close() with work outstanding,
scale and integrity.  Behaviour tests also run on the stdlib's
ProactorEventLoop where it has the feature (differential)."""

from __future__ import annotations

import asyncio
import errno
import gc
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

if sys.platform != "win32":
    pytest.skip("Windows only (run under Wine with .ci/steps/wine.sh)", allow_module_level=True)

import _overlapped
import _winapi
from asyncio import windows_utils

from test_port import pair, pump

import iocp_policy
from iocp_policy import _port_iocp
from iocp_policy import _winapi as w
from iocp_policy._port import POLLERR, POLLIN, POLLOUT, open_port

ECANCELED = -errno.ECANCELED
UNDER_WINE = os.environ.get("WINEPY_UNDER_WINE") == "1"


@pytest.fixture
def port() -> Any:
    p, _ = open_port("iocp")
    yield p
    p.close()


@pytest.fixture(params=["iocp", "stdlib"])
def proactor_factory(request: pytest.FixtureRequest) -> Callable[[], asyncio.AbstractEventLoop]:
    """Our iocp loop and the stdlib ProactorEventLoop (differential)."""
    if request.param == "stdlib":
        return asyncio.ProactorEventLoop
    return lambda: iocp_policy.new_event_loop(backend="iocp")


def run_on(factory: Callable[[], asyncio.AbstractEventLoop], coro: Any) -> Any:
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def pattern(start: int, n: int) -> bytes:
    """Bytes whose value encodes their stream position: corruption shows."""
    return bytes((i * 7 + (i >> 8)) % 251 for i in range(start, start + n))


def other_port() -> int:
    return int(_overlapped.CreateIoCompletionPort(_overlapped.INVALID_HANDLE_VALUE, 0, 0, 0))


def write_pipe(handle: int, data: bytes) -> None:
    ov, _ = _winapi.WriteFile(handle, data, overlapped=True)
    assert ov.GetOverlappedResult(True)[0] == len(data)


# -- the port and the loop --------------------------------------------------------


def test_default_backend_is_iocp(monkeypatch: Any) -> None:
    monkeypatch.delenv("IOCP_POLICY_BACKEND", raising=False)
    loop = iocp_policy.new_event_loop()
    try:
        assert loop.backend == "iocp"  # type: ignore[attr-defined]
        assert loop.backend_fallback_reason is None  # type: ignore[attr-defined]
        info = loop.backend_info()  # type: ignore[attr-defined]
        assert info["backend"] == "iocp" and info["inflight"] == 0
        assert info["wakeup"] == "PostQueuedCompletionStatus"
    finally:
        loop.close()


def test_many_completions_per_wait(port: Any) -> None:
    """GetQueuedCompletionStatusEx drains many packets per call."""
    socks = [pair() for _ in range(20)]
    got: list[int] = []
    ops = []
    for a, _ in socks:
        op = port.op(a, got.append)
        port.recv(op, 10)
        ops.append(op)
    for _, b in socks:
        b.send(b"x")
    time.sleep(0.05)  # every packet is queued before we look
    port.run(1.0)
    assert got == [1] * 20
    assert all(op.data == b"x" for op in ops)
    for a, b in socks:
        a.close()
        b.close()


# -- cancellation storms ------------------------------------------------------------


def test_cancel_storm_with_buffers_in_flight_keeps_every_byte(port: Any) -> None:
    """Receives on many sockets are cancelled while data pours in.  Each op
    completes exactly once, with
    its data or ECANCELED, and the data of the completed ones, in issue
    order, plus what is still in the socket, is the stream sent: nothing
    lost, nothing overwritten."""
    nsock, nops, chunk = 16, 24, 700
    socks = [pair() for _ in range(nsock)]
    finals: dict[int, list[int]] = {}
    bufs: dict[int, bytearray] = {}
    order: list[list[Any]] = []
    for a, _ in socks:
        ops = []
        for _ in range(nops):
            buf = bytearray(chunk)
            op = port.op(a, None)
            finals[id(op)] = []
            op.callback = finals[id(op)].append
            port.recv_into(op, buf)
            bufs[id(op)] = buf
            ops.append(op)
        order.append(ops)
    port.run(0)
    sent = [pattern(0, nops * chunk // 2 + 123) for _ in socks]
    half = len(sent[0]) // 2
    for (_, b), data in zip(socks, sent):
        b.sendall(data[:half])
    for ops in order:  # every other op, while the first half lands
        for op in ops[::2]:
            port.cancel(op)
    for (_, b), data in zip(socks, sent):
        b.sendall(data[half:])
    for ops in order:  # then the rest, while the second half lands
        for op in ops:
            port.cancel(op)
    gc.collect()
    pump(port, lambda: all(finals[id(op)] for ops in order for op in ops), timeout=20)
    port.run(0.05)
    assert all(len(v) == 1 for v in finals.values()), "an op completed more than once"
    for (a, _), ops, data in zip(socks, order, sent):
        got = bytearray()
        for op in ops:
            res = finals[id(op)][0]
            assert res == ECANCELED or res > 0, res
            if res > 0:
                got += bufs[id(op)][:res]
        a.setblocking(True)
        a.settimeout(5)
        while len(got) < len(data):
            got += a.recv(65536)
        assert got == data
    for a, b in socks:
        a.close()
        b.close()


def test_cancelled_sends_keep_buffers_pinned_until_final(port: Any) -> None:
    """Sends that cannot complete (the peer does not read) are cancelled; the
    buffers stay exported (BufferError on resize) until the final packet."""
    a, b = pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    finals: list[int] = []
    bufs = [bytearray(b"s" * (1 << 20)) for _ in range(8)]
    ops = []
    for buf in bufs:
        op = port.op(a, finals.append)
        port.send(op, buf)
        ops.append(op)
    port.run(0.05)
    in_flight = [buf for buf, op in zip(bufs, ops) if op.active]
    assert in_flight, "the peer does not read: some sends must still be in flight"
    with pytest.raises(BufferError):
        in_flight[-1].extend(b"!")  # exported to the kernel
    for op in ops:
        port.cancel(op)
    pump(port, lambda: len(finals) == len(ops), timeout=20)
    assert all(r == ECANCELED or r > 0 for r in finals)
    for buf in bufs:
        buf.extend(b"!")  # released after the final completion
    a.close()
    b.close()


def test_cancel_after_completion_is_harmless(port: Any) -> None:
    """cancel() racing a completion already in the queue (CancelIoEx:
    ERROR_NOT_FOUND) delivers the real result once; the late-cancel probe
    that follows it is ignored."""
    a, b = pair()
    got: list[int] = []
    op = port.op(a, got.append)
    port.recv(op, 10)
    b.send(b"raced")
    time.sleep(0.05)  # the packet is queued, not yet dequeued
    assert port.cancel(op) is True
    pump(port, lambda: got)
    port.run(0.05)
    assert got == [5] and op.data == b"raced"
    port.recv(op, 10)  # the op is reusable; the stale probe must not touch it
    port.run(0.05)
    assert op.active and got == [5]
    b.send(b"next")
    pump(port, lambda: len(got) == 2)
    assert got == [5, 4] and op.data == b"next"
    a.close()
    b.close()


def test_late_cancel_finishes_an_operation_whose_packet_went_elsewhere(port: Any) -> None:
    """The handle reports to another completion port (as a handle value
    reused after close would), so the read's packet never reaches ours.
    cancel() gets ERROR_NOT_FOUND; the late-cancel probe finds the read
    finished and delivers its result from the OVERLAPPED."""
    r, wr = windows_utils.pipe(overlapped=(True, True))
    other = other_port()
    try:
        _overlapped.CreateIoCompletionPort(r, other, 0, 0)
        port._assoc_handles.add(r)  # the port believes the handle is its own
        got: list[int] = []
        op = port.op(r, got.append)
        port.read(op, 100)
        write_pipe(wr, b"hello")
        port.run(0.1)
        assert got == []  # the packet went to the other port
        assert port.cancel(op) is True
        pump(port, lambda: got)
        assert got == [5] and op.data == b"hello"
        assert port.info()["finished_without_packet"] == 1
    finally:
        for h in (r, wr, other):
            _winapi.CloseHandle(h)


# -- close() ---------------------------------------------------------------------------


def test_close_with_operations_outstanding() -> None:
    """Receives, a multishot accept, a connect, polls and a pipe read in
    flight: close() cancels and reaps them all, calls nothing back, and
    releases every buffer."""
    p, _ = open_port("iocp")
    called: list[int] = []
    a, b = pair()
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen()
    ls.setblocking(False)
    r, wr = windows_utils.pipe(overlapped=(True, True))
    bufs = [bytearray(4096) for _ in range(10)]
    ops = []
    for buf in bufs:
        op = p.op(a, called.append)
        p.recv_into(op, buf)
        ops.append(op)
    acc = p.op(ls, called.append)
    p.accept(acc, True)
    poll_in = p.op(b, called.append)
    p.poll(poll_in, POLLIN, True)
    rd = p.op(r, called.append)
    p.read_into(rd, bytearray(100))
    ops += [acc, poll_in, rd]
    p.run(0)
    assert p.inflight == len(ops)
    t0 = time.monotonic()
    assert p.close(5.0) == 0
    assert time.monotonic() - t0 < 4
    assert called == []
    assert all(not op.active for op in ops)
    for buf in bufs:
        buf.extend(b"ok")  # no longer exported
    for s in (a, b, ls):
        s.close()
    for h in (r, wr):
        _winapi.CloseHandle(h)


def test_close_never_waits_forever_for_a_lost_operation() -> None:
    """An operation whose packet goes to another port can never be reaped:
    close() gives up after its timeout, reports it, and keeps its memory
    (the graveyard) instead of freeing what the kernel may still write."""
    p, _ = open_port("iocp")
    r, wr = windows_utils.pipe(overlapped=(True, True))
    other = other_port()
    try:
        _overlapped.CreateIoCompletionPort(r, other, 0, 0)
        p._assoc_handles.add(r)
        op = p.op(r, lambda res: None)
        p.read(op, 100)
        before = len(_port_iocp.graveyard)
        t0 = time.monotonic()
        assert p.close(0.3) == 1
        assert 0.25 < time.monotonic() - t0 < 3
        assert len(_port_iocp.graveyard) == before + 1 and _port_iocp.graveyard[-1] is op
    finally:
        for h in (r, wr, other):
            _winapi.CloseHandle(h)


def test_loop_close_with_sock_ops_outstanding(proactor_factory: Any) -> None:
    """Closing a loop whose tasks were cancelled while sock_* operations
    were in the port returns promptly."""

    async def main() -> list[socket.socket]:
        loop = asyncio.get_running_loop()
        socks: list[socket.socket] = []
        tasks = []
        for _ in range(20):
            a, b = pair()
            socks += [a, b]
            tasks.append(loop.create_task(loop.sock_recv(a, 100)))
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in tasks)  # all waiting in the port when the loop closes
        return socks

    t0 = time.monotonic()
    socks = run_on(proactor_factory, main())  # Runner cancels the pending tasks, then closes
    assert time.monotonic() - t0 < 10
    for s in socks:
        s.close()


# -- AFD poll ---------------------------------------------------------------------------


def test_afd_poll_on_100_sockets(port: Any) -> None:
    """Multishot readiness on 100 sockets through IOCTL_AFD_POLL: exactly
    the sockets that receive data report POLLIN, a drained socket stops
    reporting, and writers on the same sockets share one poll each."""
    socks = [pair() for _ in range(100)]
    events: dict[int, list[int]] = {i: [] for i in range(100)}
    readers = []
    for i, (a, _) in enumerate(socks):
        op = port.op(a, lambda res, i=i: events[i].append(res))
        port.poll(op, POLLIN, True)
        readers.append(op)
    port.run(0.05)
    assert not any(events.values()), "nothing was sent yet"
    chosen = set(range(0, 100, 7))
    for i in chosen:
        socks[i][1].send(b"ping %d" % i)
    pump(port, lambda: all(events[i] for i in chosen))
    port.run(0.05)
    assert {i for i, ev in events.items() if ev} == chosen
    assert all(ev[0] & POLLIN for i, ev in events.items() if ev)
    for i in chosen:  # drain: a level-triggered poll must then go quiet
        assert socks[i][0].recv(100) == b"ping %d" % i
    port.run(0.05)
    for ev in events.values():
        ev.clear()
    port.run(0.1)
    port.run(0.1)
    assert not any(events.values())
    # a writer on the same sockets: one AFD poll per socket, not two
    writes: list[int] = []
    writers = []
    for a, _ in socks[:10]:
        op = port.op(a, writes.append)
        port.poll(op, POLLOUT)
        writers.append(op)
    pump(port, lambda: len(writes) == 10)
    assert all(r & POLLOUT for r in writes)
    assert port.info()["afd_polls_in_flight"] <= 100
    finals: list[int] = []
    for op in readers:
        op.callback = finals.append
        assert port.cancel(op) is True
    pump(port, lambda: len(finals) == 100)
    assert finals == [ECANCELED] * 100
    port.run(0.1)
    assert port.info()["afd_sockets"] == 0 and port.inflight == 0
    for a, b in socks:
        a.close()
        b.close()


def test_afd_poll_spreads_over_afd_handles(port: Any, monkeypatch: Any) -> None:
    """More sockets than one AFD handle takes get a second handle."""
    from iocp_policy import _afd

    monkeypatch.setattr(_afd, "MAX_AFD_GROUP_SIZE", 8)
    socks = [pair() for _ in range(20)]
    ops = []
    for a, _ in socks:
        op = port.op(a, lambda res: None)
        port.poll(op, POLLIN)
        ops.append(op)
    port.run(0)
    assert port.info()["afd_handles"] == 3
    for op in ops:
        port.cancel(op)
    pump(port, lambda: port.inflight == 0)
    for a, b in socks:
        a.close()
        b.close()


def test_afd_poll_reports_peer_reset_and_accept(port: Any) -> None:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen()
    ls.setblocking(False)
    got: list[int] = []
    op = port.op(ls, got.append)
    port.poll(op, POLLIN)
    c = socket.create_connection(ls.getsockname())
    pump(port, lambda: got)
    assert got[0] & POLLIN  # AFD_POLL_ACCEPT
    conn, _ = ls.accept()
    conn.setblocking(False)
    got.clear()
    op2 = port.op(conn, got.append)
    port.poll(op2, POLLOUT | POLLIN)
    pump(port, lambda: got)
    assert got[0] & POLLOUT and not got[0] & POLLIN
    got.clear()
    port.poll(op2, POLLIN)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()  # RST
    pump(port, lambda: got)
    assert got[0] & POLLIN and got[0] & POLLERR
    conn.close()
    ls.close()


def test_poll_refuses_non_sockets(port: Any) -> None:
    r, wr = windows_utils.pipe(overlapped=(True, True))
    try:
        op = port.op(r, lambda res: None)
        with pytest.raises(OSError) as info:
            port.poll(op, POLLIN)
        assert info.value.errno == errno.ENOTSOCK and "sockets only" in str(info.value)
        assert not op.active and port.inflight == 0
    finally:
        for h in (r, wr):
            _winapi.CloseHandle(h)


def test_socket_of_another_port_is_refused(port: Any) -> None:
    a, b = pair()
    other = other_port()
    try:
        _overlapped.CreateIoCompletionPort(a.fileno(), other, 0, 0)
        op = port.op(a, lambda res: None)
        with pytest.raises(OSError, match="another I/O completion port"):
            port.recv(op, 10)
        assert not op.active
    finally:
        _winapi.CloseHandle(other)
        a.close()
        b.close()


# -- pipes, datagrams, accept ----------------------------------------------------------------


def test_overlapped_pipe_read_write_and_eof(port: Any) -> None:
    r, wr = windows_utils.pipe(overlapped=(True, True))
    try:
        got: list[int] = []
        rop = port.op(r, got.append)
        wop = port.op(wr, got.append)
        port.read(rop, 1000)
        port.write(wop, b"through the pipe")
        pump(port, lambda: len(got) == 2)
        assert sorted(got) == [16, 16] and rop.data == b"through the pipe"
        buf = bytearray(4)
        port.read_into(rop, buf)
        port.write(wop, b"abcdefgh")
        pump(port, lambda: len(got) == 4)
        assert bytes(buf) == b"abcd"
        _winapi.CloseHandle(wr)
        wr = 0
        port.read(rop, 1000)
        pump(port, lambda: len(got) == 5)
        assert rop.data == b"efgh"
        port.read(rop, 1000)
        pump(port, lambda: len(got) == 6)
        assert got[-1] == 0 and rop.data == b""  # the writer is gone: end of stream
    finally:
        for h in (r, wr):
            if h:
                _winapi.CloseHandle(h)


@pytest.mark.parametrize("data_first", [True, False], ids=["queued", "pending"])
def test_udp_truncation_reports_msg_trunc(port: Any, data_first: bool) -> None:
    """A datagram larger than the buffer: the prefix, MSG_TRUNC and the
    sender's address, whether it was waiting (the call fails with
    WSAEMSGSIZE) or arrives later (the packet says STATUS_BUFFER_OVERFLOW)."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
    got: list[int] = []
    op = port.op(b, got.append)
    if data_first:
        a.sendto(b"truncated", b.getsockname())
        time.sleep(0.05)
    port.recvfrom(op, 3)
    if not data_first:
        port.run(0.02)
        a.sendto(b"truncated", b.getsockname())
    pump(port, lambda: got)
    assert got == [3] and op.data == b"tru"
    assert op.msg_flags & w.MSG_TRUNC and op.address == a.getsockname()
    a.close()
    b.close()


def test_accept_survives_clients_that_reset(port: Any) -> None:
    """Clients that connect and reset before being accepted (Windows:
    AcceptEx fails with ERROR_NETNAME_DELETED, "WinError 64") do not end a
    multishot accept; the next good client is accepted."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(50)
    ls.setblocking(False)
    for _ in range(5):
        c = socket.create_connection(ls.getsockname())
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()
    results: list[tuple[int, bool]] = []
    op = port.op(ls, lambda res: results.append((res, op.active)))
    port.accept(op, True)
    port.run(0.1)
    good = socket.create_connection(ls.getsockname())
    good.sendall(b"hi")
    accepted: list[socket.socket] = []

    def good_arrived() -> bool:
        for res, _ in results[len(accepted):]:
            accepted.append(socket.socket(fileno=res))
        return any(s.recv(2, socket.MSG_PEEK) == b"hi" for s in accepted if _readable(s))

    pump(port, good_arrived)
    assert all(res >= 0 and active for res, active in results)  # no error ever surfaced
    assert op.active
    port.cancel(op)
    pump(port, lambda: not op.active)
    for s in [*accepted, good, ls]:
        s.close()


def _readable(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return bool(s.recv(1, socket.MSG_PEEK))
    except OSError:
        return False


def test_one_shot_accept_reports_peer_address(port: Any) -> None:
    ls = socket.socket(socket.AF_INET6)
    ls.bind(("::1", 0))
    ls.listen()
    ls.setblocking(False)
    got: list[int] = []
    op = port.op(ls, got.append)
    port.accept(op)
    c = socket.socket(socket.AF_INET6)
    c.connect(ls.getsockname()[:2])
    pump(port, lambda: got)
    conn = socket.socket(socket.AF_INET6, socket.SOCK_STREAM, fileno=got[0])
    assert op.address[:2] == c.getsockname()[:2]
    assert conn.getpeername()[:2] == c.getsockname()[:2]  # SO_UPDATE_ACCEPT_CONTEXT was applied
    for s in (conn, c, ls):
        s.close()


# -- scale and integrity through the loop ----------------------------------------------------


def test_1000_concurrent_connections(proactor_factory: Any) -> None:
    """1,000 connections open at once through sock_accept/sock_connect, each
    echoing its own message."""
    n = 1000

    async def main() -> int:
        loop = asyncio.get_running_loop()
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(128)
        ls.setblocking(False)
        addr = ls.getsockname()
        servers: list[socket.socket] = []
        clients: list[socket.socket] = []

        async def accept_all() -> None:
            while len(servers) < n:
                conn, _ = await loop.sock_accept(ls)
                servers.append(conn)

        async def connect() -> None:
            s = socket.socket()
            s.setblocking(False)
            clients.append(s)
            await loop.sock_connect(s, addr)

        acceptor = asyncio.ensure_future(accept_all())
        for _ in range(0, n, 100):  # stay within the listen backlog
            await asyncio.gather(*(connect() for _ in range(100)))
        await asyncio.wait_for(acceptor, 60)

        async def echo(conn: socket.socket) -> None:
            data = await loop.sock_recv(conn, 100)
            await loop.sock_sendall(conn, data)

        async def ping(s: socket.socket, i: int) -> bool:
            msg = b"client %d" % i
            await loop.sock_sendall(s, msg)
            return await loop.sock_recv(s, 100) == msg

        results = await asyncio.gather(*(echo(c) for c in servers),
                                       *(ping(s, i) for i, s in enumerate(clients)))
        for s in servers + clients + [ls]:
            s.close()
        return sum(1 for r in results if r is True)

    assert run_on(proactor_factory, main()) == n


def test_large_transfer_integrity(proactor_factory: Any) -> None:
    """64 MiB each way at once through sock_sendall / sock_recv_into."""
    size = 64 << 20

    async def main() -> tuple[str, str, str, str]:
        loop = asyncio.get_running_loop()
        a, b = pair()
        up, down = os.urandom(size), os.urandom(size)

        async def receive(s: socket.socket) -> str:
            buf = bytearray(size)
            view = memoryview(buf)
            got = 0
            while got < size:
                n = await loop.sock_recv_into(s, view[got:got + (1 << 20)])
                assert n
                got += n
            return hashlib.sha256(buf).hexdigest()

        _, _, h_up, h_down = await asyncio.gather(
            loop.sock_sendall(a, up), loop.sock_sendall(b, down), receive(b), receive(a))
        a.close()
        b.close()
        return h_up, hashlib.sha256(up).hexdigest(), h_down, hashlib.sha256(down).hexdigest()

    h_up, want_up, h_down, want_down = run_on(proactor_factory, main())
    assert h_up == want_up and h_down == want_down


def test_gather_send_integrity(port: Any) -> None:
    """sendv gathers 1,024 buffers into one WSASend; the bytes arrive in order."""
    a, b = pair()
    pieces = [pattern(i * 997, 997) for i in range(1024)]
    sent: list[int] = []
    op = port.op(a, sent.append)
    port.sendv(op, [*pieces, b"beyond the limit"])  # only the first 1,024 go
    got = bytearray()
    total = 1024 * 997

    def drained() -> bool:
        try:
            while True:
                chunk = b.recv(1 << 16)
                if not chunk:
                    return True
                got.extend(chunk)
        except BlockingIOError:
            pass
        return bool(sent) and len(got) >= total

    pump(port, drained, timeout=20)
    assert sent == [total] and bytes(got) == b"".join(pieces)
    a.close()
    b.close()


def test_transmitfile_sendfile_integrity(proactor_factory: Any, tmp_path: Any) -> None:
    """loop.sock_sendfile through TransmitFile, at an offset, 16 MiB."""
    content = os.urandom((16 << 20) + 4321)
    path = tmp_path / "blob.bin"
    path.write_bytes(content)
    offset = 4321

    async def main() -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        a, b = pair()

        async def receive() -> str:
            h = hashlib.sha256()
            left = len(content) - offset
            while left:
                chunk = await loop.sock_recv(b, 1 << 20)
                assert chunk
                h.update(chunk)
                left -= len(chunk)
            return h.hexdigest()

        with open(path, "rb") as f:
            sent, digest = await asyncio.gather(loop.sock_sendfile(a, f, offset), receive())
        a.close()
        b.close()
        return sent, digest

    sent, digest = run_on(proactor_factory, main())
    assert sent == len(content) - offset
    assert digest == hashlib.sha256(content[offset:]).hexdigest()


# -- resources and signals -------------------------------------------------------------------


def test_no_handle_growth_after_many_operations_and_loops() -> None:
    """The Windows counterpart of tests/test_leaks.py: process handles
    (GetProcessHandleCount), not /proc/self/fd."""

    async def ping_pong(rounds: int) -> None:
        loop = asyncio.get_running_loop()
        a, b = pair()

        async def side(me: socket.socket, first: bool) -> None:
            if first:
                await loop.sock_sendall(me, b"p")
            for _ in range(rounds):
                assert await loop.sock_recv(me, 16) == b"p"
                await loop.sock_sendall(me, b"p")

        await asyncio.gather(side(a, True), side(b, False))
        a.close()
        b.close()

    def once(rounds: int) -> None:
        loop = iocp_policy.new_event_loop(backend="iocp")
        try:
            loop.run_until_complete(ping_pong(rounds))
            assert loop.backend_info()["inflight"] == 0  # type: ignore[attr-defined]
        finally:
            loop.close()

    once(500)
    gc.collect()
    h0 = w.process_handle_count()
    once(10_000)  # 20,000 receives through the port
    for _ in range(50):
        once(0)
    gc.collect()
    assert w.process_handle_count() <= h0 + 2  # a little slack for Wine's own helper handles


def test_ctrl_c_wakes_a_loop_blocked_in_the_port() -> None:
    """SIGINT while the loop sleeps in GetQueuedCompletionStatusEx:
    signal.set_wakeup_fd's socket completes a receive on the port, the
    interpreter runs asyncio.Runner's handler, the main task is cancelled
    and run() raises KeyboardInterrupt -- promptly."""
    code = (
        "import asyncio, signal, sys, threading, time, iocp_policy\n"
        "async def main():\n"
        "    threading.Timer(0.3, signal.raise_signal, (signal.SIGINT,)).start()\n"
        "    try:\n"
        "        await asyncio.sleep(60)\n"
        "    except asyncio.CancelledError:\n"
        "        print('cancelled', flush=True)\n"
        "        raise\n"
        "t0 = time.monotonic()\n"
        "try:\n"
        "    iocp_policy.run(main())\n"
        "except KeyboardInterrupt:\n"
        "    print('KeyboardInterrupt %.1f' % (time.monotonic() - t0), flush=True)\n"
        "    sys.exit(42)\n"
    )
    env = {**os.environ, "IOCP_POLICY_BACKEND": "iocp"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 42, proc.stdout + proc.stderr
    words = proc.stdout.split()
    assert words[:2] == ["cancelled", "KeyboardInterrupt"]
    assert float(words[2]) < 10  # not the 60 s sleep


def test_wakeup_is_coalesced_and_thread_safe(port: Any) -> None:
    port.run(0)
    threads = [threading.Thread(target=lambda: [port.wakeup() for _ in range(200)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    port.run(1.0)  # at least one wakeup packet is waiting
    t0 = time.monotonic()
    port.run(0.2)
    port.run(0.2)
    assert time.monotonic() - t0 >= 0.35  # coalesced: no stale wakeups left behind


def test_wakeup_fd_wakes_the_port(port: Any) -> None:
    """Bytes written to wakeup_fd() (what the interpreter's C signal handler
    does) end a wait, and are discarded; the fd stays the same."""
    fd = port.wakeup_fd()
    assert port.wakeup_fd() == fd
    port.run(0)
    for _ in range(3):
        writer = socket.socket(fileno=socket.dup(fd))
        t = threading.Timer(0.05, writer.send, (b"\x02",))
        t0 = time.monotonic()
        t.start()
        port.run(10.0)
        assert time.monotonic() - t0 < 5
        t.join()
        writer.close()
    assert port.inflight == 0  # the port's own receive is not the caller's


def _child(seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])


def test_wait_process_completes_at_exit(port: Any) -> None:
    proc = _child(0.3)
    got: list[int] = []
    op = port.op(proc.pid, got.append)
    port.wait_process(op, proc.pid)
    port.run(0.05)
    assert got == [] and op.active
    pump(port, lambda: got, timeout=30)
    assert got == [0] and not op.active
    assert proc.poll() == 0  # exited, and the port did not reap it: Popen does


def test_wait_process_cancel(port: Any) -> None:
    proc = _child(30)
    try:
        got: list[int] = []
        op = port.op(proc.pid, got.append)
        port.wait_process(op, proc.pid)
        port.run(0.05)
        assert port.cancel(op) is True
        pump(port, lambda: got)
        port.run(0.05)
        assert got == [ECANCELED]
    finally:
        proc.kill()
        proc.wait()


def test_wait_process_of_an_exited_process(port: Any) -> None:
    proc = _child(0)
    proc.wait()
    got: list[int] = []
    op = port.op(proc.pid, got.append)
    port.wait_process(op, proc.pid)  # the Popen still holds its handle: the wait fires at once
    pump(port, lambda: got)
    assert got == [0]


def test_close_with_a_process_wait_outstanding() -> None:
    p, _ = open_port("iocp")
    proc = _child(30)
    try:
        called: list[int] = []
        op = p.op(proc.pid, called.append)
        p.wait_process(op, proc.pid)
        p.run(0)
        t0 = time.monotonic()
        assert p.close(5.0) == 0
        assert time.monotonic() - t0 < 2
        assert called == [] and not op.active
    finally:
        proc.kill()
        proc.wait()


def test_add_reader_on_100_sockets(proactor_factory: Any) -> None:
    """loop.add_reader/add_writer on 100 sockets, without a selector thread
    (AFD poll on the port).  Readers fire exactly for the sockets that got
    data, level-triggered (once per byte when the callback reads one byte),
    and stop after remove_reader.  The stdlib's ProactorEventLoop has no
    add_reader at all (NotImplementedError)."""

    async def main() -> tuple[dict[int, int], int, bool]:
        loop = asyncio.get_running_loop()
        socks = [pair() for _ in range(100)]
        calls: dict[int, int] = {}
        done = asyncio.Event()
        chosen = set(range(3, 100, 9))

        def readable(i: int, s: socket.socket) -> None:
            assert len(s.recv(1)) == 1  # one byte per call: the rest must call again
            calls[i] = calls.get(i, 0) + 1
            if sum(calls.values()) == 3 * len(chosen):
                done.set()

        try:
            for i, (a, _) in enumerate(socks):
                loop.add_reader(a, readable, i, a)
        except NotImplementedError:
            for a, b in socks:
                a.close()
                b.close()
            return {}, 0, False
        for i in chosen:
            socks[i][1].send(b"abc")
        await asyncio.wait_for(done.wait(), 10)
        await asyncio.sleep(0.1)  # drained: no further calls
        writable = asyncio.Event()
        loop.add_writer(socks[0][0], writable.set)
        await asyncio.wait_for(writable.wait(), 10)
        assert loop.remove_writer(socks[0][0])
        removed = sum(loop.remove_reader(a) for a, _ in socks)
        socks[3][1].send(b"late")
        await asyncio.sleep(0.1)  # removed: no call
        for a, b in socks:
            a.close()
            b.close()
        return calls, removed, True

    calls, removed, supported = run_on(proactor_factory, main())
    if not supported:
        assert proactor_factory is asyncio.ProactorEventLoop
        return
    assert calls == {i: 3 for i in range(3, 100, 9)}
    assert removed == 100


def test_add_reader_refuses_pipes() -> None:
    loop = iocp_policy.new_event_loop(backend="iocp")
    r, wr = windows_utils.pipe(overlapped=(True, True))
    try:
        with pytest.raises(OSError) as info:
            loop.add_reader(r, lambda: None)
        assert info.value.errno in (errno.ENOTSOCK, errno.EBADF)
    finally:
        loop.close()
        for h in (r, wr):
            _winapi.CloseHandle(h)


def test_connect_pipes_on_overlapped_pipe_handles(proactor_factory: Any) -> None:
    """connect_read_pipe/connect_write_pipe on a Windows pipe pair, with flow
    through both transports, EOF when the writer closes, and data intact."""

    async def main() -> tuple[bytes, bool]:
        loop = asyncio.get_running_loop()
        # Duplex, as asyncio's own subprocess pipes: the ProactorEventLoop's
        # write-pipe transport reads its end to notice the reader closing,
        # which a write-only handle refuses (WinError 5).
        rh, wh = windows_utils.pipe(overlapped=(True, True), duplex=True)
        reader_pipe, writer_pipe = windows_utils.PipeHandle(rh), windows_utils.PipeHandle(wh)
        received = bytearray()
        eof: asyncio.Future[bool] = loop.create_future()

        class Reader(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                received.extend(data)

            def eof_received(self) -> None:
                if not eof.done():
                    eof.set_result(True)

            def connection_lost(self, exc: BaseException | None) -> None:
                if not eof.done():
                    eof.set_result(exc is None)

        rtr, _ = await loop.connect_read_pipe(Reader, reader_pipe)
        wtr, _ = await loop.connect_write_pipe(asyncio.Protocol, writer_pipe)
        payload = os.urandom(3 << 20)
        for i in range(0, len(payload), 100_000):
            wtr.write(payload[i:i + 100_000])
        while wtr.get_write_buffer_size():
            await asyncio.sleep(0.01)
        wtr.close()
        clean = await asyncio.wait_for(eof, 30)
        rtr.close()
        await asyncio.sleep(0.01)
        return hashlib.sha256(received).digest() == hashlib.sha256(payload).digest(), clean

    intact, clean = run_on(proactor_factory, main())
    assert intact and clean
