"""The completion-port contract, on each of our backends directly."""

from __future__ import annotations

import errno
import gc
import select
import socket
import sys
import threading
import time
from typing import Any

import pytest

from iocp_policy._port import POLLOUT, open_port

ECANCELED = -errno.ECANCELED


@pytest.fixture
def port(port_name: str) -> Any:
    p, _ = open_port(port_name)
    yield p
    p.close()


def pump(port: Any, until: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError("port did not deliver in time")
        port.run(0.05)


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def test_recv_send_roundtrip(port: Any) -> None:
    a, b = pair()
    got: list[int] = []
    rop = port.op(a, got.append)
    port.recv(rop, 100)
    assert rop.active
    b.send(b"hello")
    pump(port, lambda: got)
    assert got == [5] and rop.data == b"hello" and not rop.active
    sent: list[int] = []
    sop = port.op(b, sent.append)
    port.sendv(sop, [b"ab", memoryview(b"cd"), bytearray(b"ef")])
    pump(port, lambda: sent)
    assert sent == [6]
    assert a.recv(10) == b"abcdef"
    a.close()
    b.close()


def test_submitting_active_op_is_refused(port: Any) -> None:
    a, b = pair()
    op = port.op(a, lambda res: None)
    port.recv(op, 10)
    with pytest.raises(RuntimeError, match="already in flight"):
        port.recv(op, 10)
    port.cancel(op)
    pump(port, lambda: not op.active)
    a.close()
    b.close()


def test_post_is_delivered_later_not_inline(port: Any) -> None:
    a, b = pair()
    got: list[int] = []
    op = port.op(a, got.append)
    port.post(op, 1234)
    assert got == []  # never called back from inside a submission
    pump(port, lambda: got)
    assert got == [1234]
    a.close()
    b.close()


def test_cancel_delivers_ecanceled_once(port: Any) -> None:
    a, b = pair()
    got: list[int] = []
    op = port.op(a, got.append)
    port.recv(op, 10)
    port.run(0)
    assert port.cancel(op) is True
    assert port.cancel(op) is False  # already cancelling
    pump(port, lambda: got)
    port.run(0.02)
    assert got == [ECANCELED]
    assert port.cancel(op) is False  # nothing in flight
    a.close()
    b.close()


def test_multishot_accept_then_cancel(port: Any) -> None:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    ls.setblocking(False)
    results: list[tuple[int, bool]] = []
    op = port.op(ls, lambda res: results.append((res, op.active)))
    port.accept(op, True)
    clients = [socket.create_connection(ls.getsockname()) for _ in range(3)]
    pump(port, lambda: len(results) >= 3)
    assert all(res >= 0 and active for res, active in results)
    for res, _ in results:
        socket.socket(fileno=res).close()
    port.cancel(op)
    pump(port, lambda: not op.active)
    assert results[-1] == (ECANCELED, False)
    for c in clients:
        c.close()
    ls.close()


def test_connect_and_refused(port: Any) -> None:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen()
    addr = ls.getsockname()
    c = socket.socket()
    c.setblocking(False)
    got: list[int] = []
    op = port.op(c, got.append)
    port.connect(op, addr)
    pump(port, lambda: got)
    assert got == [0]
    c.close()
    ls.close()
    c2 = socket.socket()
    c2.setblocking(False)
    got.clear()
    op2 = port.op(c2, got.append)
    port.connect(op2, addr)  # nobody listens any more
    pump(port, lambda: got)
    assert got == [-errno.ECONNREFUSED]
    c2.close()


def test_wakeup_from_thread(port: Any) -> None:
    port.run(0)
    t = threading.Timer(0.05, port.wakeup)
    t0 = time.monotonic()
    t.start()
    port.run(10.0)
    assert time.monotonic() - t0 < 9.0  # woke up long before the timeout
    t.join()


def test_timeout_is_not_early(port: Any) -> None:
    port.run(0)
    t0 = time.monotonic()
    port.run(0.05)
    assert time.monotonic() - t0 >= 0.049


def test_callback_exception_goes_to_error_handler(port: Any) -> None:
    a, b = pair()
    reported: list[tuple[Any, BaseException]] = []
    port.error_handler = lambda op, exc: reported.append((op, exc))
    good: list[int] = []

    def bad(res: int) -> None:
        raise ValueError("callback bug")

    op1 = port.op(a, bad)
    op2 = port.op(b, good.append)
    port.post(op1, 1)
    port.post(op2, 2)
    pump(port, lambda: good)
    assert good == [2]
    assert len(reported) == 1 and reported[0][0] is op1 and isinstance(reported[0][1], ValueError)
    a.close()
    b.close()


def test_base_exception_propagates_without_losing_completions(port: Any) -> None:
    a, b = pair()
    later: list[int] = []

    def interrupt(res: int) -> None:
        raise KeyboardInterrupt

    op1 = port.op(a, interrupt)
    op2 = port.op(b, later.append)
    port.post(op1, 1)
    port.post(op2, 2)
    with pytest.raises(KeyboardInterrupt):
        pump(port, lambda: False)
    pump(port, lambda: later)
    assert later == [2]
    a.close()
    b.close()


def test_many_submissions_in_one_iteration_are_not_dropped(port: Any) -> None:
    """More SQEs than the SQ holds, and more CQEs at once than the CQ holds."""
    a, b = pair()
    n = 6000  # io_uring: SQ 1024, CQ 4096
    done: list[int] = []
    ops = [port.op(b, done.append) for _ in range(n)]
    for op in ops:
        port.poll(op, POLLOUT)  # b is writable: every poll completes at once
    pump(port, lambda: len(done) == n, timeout=20)
    port.run(0.01)
    assert len(done) == n and all(r & POLLOUT for r in done)
    if port.name == "io_uring":
        assert port.info()["overflow_flushes"] > 0  # the CQ really overflowed and was flushed
    a.close()
    b.close()


def test_close_with_operations_in_flight(port_name: str) -> None:
    p, _ = open_port(port_name)
    a, b = pair()
    called: list[int] = []
    ops = [p.op(a, called.append) for _ in range(50)]
    bufs = [bytearray(64) for _ in ops]
    for op, buf in zip(ops, bufs):
        p.recv_into(op, buf)
    p.run(0)
    assert p.close(2.0) == 0  # everything cancelled and reaped, nothing abandoned
    assert called == []  # no callbacks after close
    assert all(not op.active for op in ops)
    a.close()
    b.close()


def test_buffer_outlives_dropped_references(port: Any) -> None:
    """The port pins the buffer until the final completion: dropping every
    Python reference and collecting must not free memory the kernel writes."""
    a, b = pair()
    got: list[int] = []
    views: list[Any] = []

    def done(res: int) -> None:
        got.append(res)

    op = port.op(a, done)
    port.recv_into(op, bytearray(1 << 16))
    port.run(0)
    gc.collect()
    b.send(b"x" * 60000)
    pump(port, lambda: got)
    assert got == [60000]
    del views
    a.close()
    b.close()


def test_cancel_storm_with_buffers_in_flight(port: Any) -> None:
    a, b = pair()
    finals: list[int] = []
    ops = []
    for _ in range(500):
        op = port.op(a, finals.append)
        port.recv_into(op, bytearray(128))  # only the port references the buffer
        ops.append(op)
    port.run(0)
    b.send(b"y" * 3000)  # some ops may complete with data while others are cancelled
    for op in ops:
        port.cancel(op)
    gc.collect()
    pump(port, lambda: len(finals) == 500, timeout=10)
    assert sum(r for r in finals if r > 0) <= 3000
    assert all(r > 0 or r == ECANCELED for r in finals)
    a.close()
    b.close()


@pytest.mark.skipif(sys.platform != "linux", reason="io_uring is Linux-only")
def test_uring_buffer_is_pinned_while_in_flight() -> None:
    pytest.importorskip("iocp_policy._uring")
    p, _ = open_port("io_uring")
    a, b = pair()
    buf = bytearray(100)
    op = p.op(a, lambda res: None)
    p.recv_into(op, buf)
    with pytest.raises(BufferError):
        buf.extend(b"grow")  # resizing would move memory the kernel may write
    p.cancel(op)
    pump(p, lambda: not op.active)
    buf.extend(b"grow")  # released after the final completion
    p.close()
    a.close()
    b.close()


@pytest.mark.skipif(sys.platform != "linux", reason="io_uring is Linux-only")
def test_uring_setup_flags_fall_back_one_by_one() -> None:
    _uring = pytest.importorskip("iocp_policy._uring")
    full = _uring.Ring(64).ring_info()["setup_flags"]
    no_defer = _uring.Ring(64, 4, _uring.IORING_SETUP_DEFER_TASKRUN).ring_info()["setup_flags"]
    no_coop = _uring.Ring(64, 4, _uring.IORING_SETUP_COOP_TASKRUN).ring_info()["setup_flags"]
    if "DEFER_TASKRUN" in full:
        assert "DEFER_TASKRUN" not in no_defer and "SINGLE_ISSUER" in no_defer
    # dropping COOP_TASKRUN drops everything newer first
    assert "COOP_TASKRUN" not in no_coop and "DEFER_TASKRUN" not in no_coop
    assert "CQSIZE" in no_coop


@pytest.mark.skipif(sys.platform != "linux", reason="io_uring is Linux-only")
@pytest.mark.parametrize("reject", ["DEFER_TASKRUN", "COOP_TASKRUN", "CQSIZE"])
def test_uring_degraded_rings_work(reject: str, monkeypatch: Any) -> None:
    """Each fallback level is a working ring, exercised end to end."""
    _uring = pytest.importorskip("iocp_policy._uring")
    from iocp_policy import _port_uring

    monkeypatch.setattr(_port_uring, "REJECT_FLAGS", getattr(_uring, f"IORING_SETUP_{reject}"))
    p, _ = open_port("io_uring")
    a, b = pair()
    got: list[int] = []
    op = p.op(a, got.append)
    for i in range(50):
        p.recv(op, 100)
        b.send(b"m%d" % i)
        pump(p, lambda n=i + 1: len(got) == n)  # type: ignore[misc]
    t = threading.Timer(0.02, p.wakeup)
    t.start()
    p.run(5)
    t.join()
    assert len(got) == 50
    p.close()
    a.close()
    b.close()


def test_emulated_wakeup_racing_the_drain_is_not_lost() -> None:
    """The interleaving that lost wakeups, made deterministic: another thread's
    wakeup() lands while run() drains the wake socket.  Afterwards the next
    wakeup() must still be written (the coalescing flag must not stay set
    with nothing left to read)."""
    from iocp_policy._port_emulated import EmulatedPort

    port = EmulatedPort()
    real = port._wake_r
    raced = []

    class RacingSocket:
        def recv(self, n: int) -> bytes:
            if not raced:
                raced.append(True)
                port.wakeup()  # "another thread", right inside the drain
            return real.recv(n)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    try:
        port.wakeup()
        port._wake_r = RacingSocket()  # type: ignore[assignment]
        port.run(1.0)  # wakes, drains (with the racing wakeup inside)
        port._wake_r = real
        assert raced
        # The invariant that keeps wakeups alive: "a wakeup is pending" must
        # mean a byte is waiting, or the next wakeup() writes nothing.
        byte_waiting = bool(select.select([real], [], [], 0)[0])
        assert not port._wake_pending or byte_waiting, "wakeup flag stuck with nothing to read"
    finally:
        port._wake_r = real
        port.close()
