"""Pipe transports (connect_read_pipe / connect_write_pipe), differential:
our backends and the stdlib loop; plus the io_uring -EAGAIN path on its own."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import socket
import stat
import sys
from typing import Any

import pytest

if sys.platform == "win32":  # before importing pty/termios, which Windows lacks
    pytest.skip("POSIX pipes, FIFOs and PTYs", allow_module_level=True)

import pty
import termios

from port_helpers import fill_pipe, pump

import iocp_policy
from iocp_policy._port import open_port

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes, FIFOs and PTYs")


class Recorder(asyncio.Protocol):
    """Every callback, in order; data joined."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.data = bytearray()
        self.transport: Any = None
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.eof_result: Any = None

    def connection_made(self, transport: Any) -> None:
        self.events.append("made")
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self) -> Any:
        self.events.append("eof")
        return self.eof_result

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)


def pipe_files() -> tuple[Any, Any]:
    r, w = os.pipe()
    return os.fdopen(r, "rb", buffering=0), os.fdopen(w, "wb", buffering=0)


async def read_all(fileobj: Any) -> bytes:
    """Read a pipe to EOF with connect_read_pipe."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.connect_read_pipe(Recorder, fileobj)
    await proto.lost
    return bytes(proto.data)


def test_read_pipe_data_eof_and_order(run: Any) -> None:
    async def main() -> tuple[list[str], bytes, Any, bool, bool]:
        loop = asyncio.get_running_loop()
        r, w = pipe_files()
        transport, proto = await loop.connect_read_pipe(Recorder, r)
        assert transport.get_extra_info("pipe") is r
        assert os.get_blocking(r.fileno()) is False  # switched to O_NONBLOCK, as the stdlib does
        assert transport.is_reading() and not transport.is_closing()
        for i in range(5):
            w.write(b"chunk%d;" % i)
            await asyncio.sleep(0.01)
        w.close()
        exc = await proto.lost
        return proto.events, bytes(proto.data), exc, transport.is_closing(), r.closed

    events, data, exc, closing, fd_closed = run(main())
    assert events[0] == "made" and events[-2:] == ["eof", "lost"] and events.count("lost") == 1
    assert data == b"".join(b"chunk%d;" % i for i in range(5))
    assert exc is None and closing and fd_closed


def test_read_pipe_eof_received_true_still_closes(run: Any) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        r, w = pipe_files()

        def factory() -> Recorder:
            p = Recorder()
            p.eof_result = True  # "keep open": a pipe cannot, and the stdlib ignores it
            return p

        transport, proto = await loop.connect_read_pipe(factory, r)
        w.close()
        assert await proto.lost is None
        return proto.events

    assert run(main()) == ["made", "eof", "lost"]


def test_read_pipe_close_and_pause_resume(run: Any) -> None:
    async def main() -> tuple[bytes, list[str]]:
        loop = asyncio.get_running_loop()
        r, w = pipe_files()
        transport, proto = await loop.connect_read_pipe(Recorder, r)
        w.write(b"first")
        while not proto.data:
            await asyncio.sleep(0.005)
        transport.pause_reading()
        assert not transport.is_reading()
        transport.pause_reading()  # idempotent
        w.write(b"second")
        await asyncio.sleep(0.05)
        assert bytes(proto.data) == b"first", "data delivered while paused"
        transport.resume_reading()
        assert transport.is_reading()
        while len(proto.data) < 11:
            await asyncio.sleep(0.005)
        transport.close()
        transport.close()
        assert transport.is_closing()
        assert await proto.lost is None
        w.close()
        return bytes(proto.data), proto.events

    data, events = run(main())
    assert data == b"firstsecond"
    assert events == ["made", "data", "lost"]  # close(): no eof_received


def test_read_pipe_buffered_protocol(port_name: str) -> None:
    """Ours only: the stdlib's read pipe calls data_received() whatever the
    protocol, so a BufferedProtocol fails there; ours feeds its buffers."""

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(7)
            self.got = bytearray()
            self.lost = asyncio.get_running_loop().create_future()

        def get_buffer(self, sizehint: int) -> Any:
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            self.got += self.buf[:nbytes]

        def eof_received(self) -> None:
            pass

        def connection_lost(self, exc: BaseException | None) -> None:
            self.lost.set_result(exc)

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        r, w = pipe_files()
        transport, proto = await loop.connect_read_pipe(Buffered, r)
        payload = os.urandom(60_000)  # fits in the pipe: this write must not block
        w.write(payload)
        w.close()
        await proto.lost
        return bytes(proto.got) == payload

    with asyncio.Runner(loop_factory=lambda: iocp_policy.new_event_loop(backend=port_name)) as runner:
        assert runner.run(main())


def test_transport_methods_match_direction(run: Any) -> None:
    async def main() -> tuple[dict[str, bool], dict[str, bool]]:
        loop = asyncio.get_running_loop()
        r, w = pipe_files()
        rt, _ = await loop.connect_read_pipe(asyncio.Protocol, r)
        wt, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, w)
        names = ["write", "writelines", "write_eof", "can_write_eof", "abort", "get_write_buffer_size",
                 "set_write_buffer_limits", "get_write_buffer_limits", "is_reading", "pause_reading",
                 "resume_reading", "close", "is_closing", "get_protocol", "set_protocol", "get_extra_info"]
        has_r = {n: hasattr(rt, n) for n in names}
        has_w = {n: hasattr(wt, n) for n in names}
        with pytest.raises(AttributeError):
            rt.write(b"x")
        with pytest.raises(NotImplementedError):
            wt.pause_reading()  # the stdlib's write pipe is a Transport with the abstract read side
        rt.close()
        wt.close()
        await asyncio.sleep(0.01)
        return has_r, has_w

    has_r, has_w = run(main())
    assert [n for n, v in has_r.items() if v] == [
        "is_reading", "pause_reading", "resume_reading", "close", "is_closing", "get_protocol",
        "set_protocol", "get_extra_info"]
    assert [n for n, v in has_w.items() if v] == [
        "write", "writelines", "write_eof", "can_write_eof", "abort", "get_write_buffer_size",
        "set_write_buffer_limits", "get_write_buffer_limits", "is_reading", "pause_reading",
        "resume_reading", "close", "is_closing", "get_protocol", "set_protocol", "get_extra_info"]


@pytest.mark.parametrize("size", [1, 65536, 1 << 20, 16 << 20])
def test_write_pipe_to_read_pipe_integrity(run: Any, size: int) -> None:
    async def main() -> tuple[bool, list[str]]:
        loop = asyncio.get_running_loop()
        r, w = pipe_files()
        reader = asyncio.ensure_future(read_all(r))
        wt, wp = await loop.connect_write_pipe(Recorder, w)
        payload = os.urandom(size)
        # Mixed write sizes and kinds: coalescing must keep the order.
        wt.write(payload[:1])
        wt.writelines([bytearray(payload[1:100]), memoryview(payload)[100:5000]])
        for off in range(5000, size, 70_000):
            wt.write(payload[off:off + 70_000])
        wt.write_eof()  # == close() for a pipe: drains, then connection_lost(None)
        assert await wp.lost is None
        got = await reader
        return got == payload[:size], wp.events

    ok, events = run(main())
    assert ok
    assert events[0] == "made" and events[-1] == "lost"


def test_write_pipe_flow_control_once(run: Any) -> None:
    async def main() -> tuple[list[str], int, tuple[int, int]]:
        loop = asyncio.get_running_loop()
        r, w = pipe_files()
        wt, wp = await loop.connect_write_pipe(Recorder, w)
        limits = wt.get_write_buffer_limits()
        payload = os.urandom(8 << 20)
        wt.write(payload)  # nobody reads yet: the buffer stays above the high-water mark
        buffered = wt.get_write_buffer_size()
        assert wp.events == ["made", "pause"]
        wt.close()  # drains first, then closes: the reader then sees EOF
        got = await read_all(r)
        assert got == payload
        assert await wp.lost is None
        return wp.events, buffered, limits

    events, buffered, limits = run(main())
    assert limits == (16 * 1024, 64 * 1024)
    assert buffered > 64 * 1024
    assert events.count("pause") == 1 and events.count("resume") == 1
    assert events.index("pause") < events.index("resume")


def test_write_pipe_notices_reader_closing(run: Any) -> None:
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        r, w = pipe_files()
        wt, wp = await loop.connect_write_pipe(Recorder, w)
        await asyncio.sleep(0.01)
        r.close()  # without writing anything: only the poll on the write end can tell
        exc = await asyncio.wait_for(wp.lost, 10)
        return exc, wt.is_closing(), w.closed

    exc, closing, fd_closed = run(main())
    assert exc is None and closing and fd_closed


def test_write_pipe_reader_closes_with_data_pending(run: Any) -> None:
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        r, w = pipe_files()
        wt, wp = await loop.connect_write_pipe(Recorder, w)
        wt.write(b"x" * (1 << 20))  # more than the pipe holds: most stays queued
        assert wt.get_write_buffer_size() > 0
        await asyncio.sleep(0.01)
        r.close()
        exc = await asyncio.wait_for(wp.lost, 10)
        wt.write(b"dropped")  # after the loss: silently dropped, as the stdlib does
        return exc, wt.get_write_buffer_size()

    exc, size = run(main())
    assert isinstance(exc, BrokenPipeError)
    assert size == 0


def test_write_pipe_close_drains_then_drops(run: Any) -> None:
    async def main() -> tuple[bytes, Any, bool]:
        loop = asyncio.get_running_loop()
        r, w = pipe_files()
        wt, wp = await loop.connect_write_pipe(Recorder, w)
        wt.write(b"x" * 200_000)
        wt.close()
        assert wt.is_closing()
        wt.write(b"never")  # closing: dropped without an error
        wt.close()
        got = await read_all(r)
        return got, await wp.lost, wt.can_write_eof()

    got, exc, can_eof = run(main())
    assert got == b"x" * 200_000 and exc is None and can_eof is True


def test_write_pipe_abort_drops_queue(run: Any) -> None:
    async def main() -> tuple[int, Any]:
        loop = asyncio.get_running_loop()
        r, w = pipe_files()
        wt, wp = await loop.connect_write_pipe(Recorder, w)
        wt.write(b"y" * (1 << 20))
        wt.abort()
        exc = await wp.lost
        got = await read_all(r)
        return len(got), exc

    n, exc = run(main())
    assert exc is None
    assert n < 1 << 20  # the queued part never reached the pipe


def test_pipes_refuse_regular_files(run: Any, tmp_path: Any) -> None:
    path = tmp_path / "regular"
    path.write_bytes(b"data")

    async def main() -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        with open(path, "rb") as f, pytest.raises(ValueError) as rexc:
            await loop.connect_read_pipe(asyncio.Protocol, f)
        with open(path, "ab") as f, pytest.raises(ValueError) as wexc:
            await loop.connect_write_pipe(asyncio.BaseProtocol, f)
        return str(rexc.value), str(wexc.value)

    assert run(main()) == ("Pipe transport is for pipes/sockets only.",
                           "Pipe transport is only for pipes, sockets and character devices")


def test_fifo_both_ways(run: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "fifo")
    os.mkfifo(path)

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        r = open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb", buffering=0)
        w = open(os.open(path, os.O_WRONLY | os.O_NONBLOCK), "wb", buffering=0)
        assert stat.S_ISFIFO(os.fstat(r.fileno()).st_mode)
        reader = asyncio.ensure_future(read_all(r))
        wt, wp = await loop.connect_write_pipe(Recorder, w)
        wt.write(b"through a fifo " * 10_000)
        wt.close()
        await wp.lost
        return await reader

    assert run(main()) == b"through a fifo " * 10_000


def test_pty_master_and_slave(run: Any) -> None:
    """A PTY: the slave end written as a character device, the master read;
    closing the slave makes the master fail with EIO, a quiet close."""

    async def main() -> tuple[bytes, Any, list[Any]]:
        loop = asyncio.get_running_loop()
        errors: list[Any] = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
        master, slave = pty.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.OPOST  # no \n -> \r\n translation on output
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        mfile = open(master, "rb", buffering=0)
        sfile = open(slave, "wb", buffering=0)
        rt, rp = await loop.connect_read_pipe(Recorder, mfile)
        wt, wp = await loop.connect_write_pipe(Recorder, sfile)
        assert stat.S_ISCHR(os.fstat(slave).st_mode)
        wt.write(b"hello pty\n")
        while len(rp.data) < 10:
            await asyncio.sleep(0.005)
        wt.close()  # closes the slave: the master reads EIO from now on
        await wp.lost
        exc = await asyncio.wait_for(rp.lost, 10)
        return bytes(rp.data), exc, errors

    data, exc, errors = run(main())
    assert data == b"hello pty\n"
    assert isinstance(exc, OSError) and exc.errno == errno.EIO
    assert errors == []  # EIO is not reported to the exception handler


def test_char_device_write(run: Any) -> None:
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        null = open("/dev/null", "wb", buffering=0)
        wt, wp = await loop.connect_write_pipe(Recorder, null)
        for _ in range(100):
            wt.write(b"z" * 10_000)
        wt.close()
        return await wp.lost, null.closed

    assert run(main()) == (None, True)


def test_char_device_read_unpollable(port_name: str) -> None:
    """Ours only: /dev/zero cannot be polled, so the stdlib's epoll refuses it
    (EPERM, logged from a callback, and the transport never reads).  A
    completion port just reads it."""

    async def main() -> tuple[int, Any, set[int]]:
        loop = asyncio.get_running_loop()
        zero = open("/dev/zero", "rb", buffering=0)
        got = bytearray()
        done = loop.create_future()

        class Taker(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                self.t = transport

            def data_received(self, data: bytes) -> None:
                got.extend(data)
                if len(got) >= 1 << 20:
                    self.t.close()

            def connection_lost(self, exc: BaseException | None) -> None:
                done.set_result(exc)

        await loop.connect_read_pipe(Taker, zero)
        exc = await done
        return len(got), exc, set(got)

    with asyncio.Runner(loop_factory=lambda: iocp_policy.new_event_loop(backend=port_name)) as runner:
        n, exc, values = runner.run(main())
    assert n >= 1 << 20 and exc is None and values == {0}


def test_socket_as_pipe(run: Any) -> None:
    """The stdlib accepts sockets too; the write side notices the peer closing."""

    async def main() -> tuple[bytes, Any]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        rt, rp = await loop.connect_read_pipe(Recorder, a)
        wt, wp = await loop.connect_write_pipe(Recorder, b)
        wt.write(b"over a socketpair")
        while len(rp.data) < 17:
            await asyncio.sleep(0.005)
        rt.close()  # closes a: b's watch fires
        exc = await asyncio.wait_for(wp.lost, 10)
        return bytes(rp.data), exc

    data, exc = run(main())
    assert data == b"over a socketpair" and exc is None


def test_unclosed_pipe_transport_warns(loop_factory: Any) -> None:
    lp = loop_factory()
    r, w = pipe_files()
    with pytest.warns(ResourceWarning, match="unclosed transport"):
        try:
            lp.run_until_complete(lp.connect_read_pipe(asyncio.Protocol, r))
        finally:
            lp.close()  # the transport was never closed; the loop lets go of it
        gc.collect()
    assert r.closed  # __del__ closed it
    w.close()


# -- io_uring: READ/WRITE answered with -EAGAIN (O_NONBLOCK on older kernels) --------


@pytest.fixture
def nowait_port() -> Any:
    """An io_uring port whose READ/WRITE carry RWF_NOWAIT: they complete with
    -EAGAIN when the pipe is not ready, as every O_NONBLOCK pipe does on
    kernels before ~6.1.  The ring must wait and resubmit instead."""
    try:
        port, _ = open_port("io_uring")
    except Exception as exc:
        pytest.skip(f"io_uring backend unavailable here: {exc}")
    port.inject_rw_nowait = True
    yield port
    port.close()


def test_uring_eagain_read_waits_then_completes(nowait_port: Any) -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    got: list[int] = []
    op = nowait_port.op(r, got.append)
    nowait_port.read(op, 100)
    nowait_port.run(0.05)
    assert got == [] and op.active, "-EAGAIN must not reach the caller"
    assert "waiting-for-readiness" in repr(op)  # the ring turned it into a poll
    os.write(w, b"late data")
    pump(nowait_port, lambda: got)
    assert got == [9] and op.data == b"late data"
    # read_into takes the same path, into a caller's buffer
    buf = bytearray(4)
    nowait_port.read_into(op, buf)
    nowait_port.run(0.05)
    assert "waiting-for-readiness" in repr(op)
    os.write(w, b"abcdef")
    pump(nowait_port, lambda: len(got) == 2)
    assert got[1] == 4 and buf == b"abcd"
    os.close(w)
    nowait_port.read(op, 100)
    pump(nowait_port, lambda: len(got) == 3)
    assert got[2] == 2 and op.data == b"ef"
    nowait_port.read(op, 100)
    pump(nowait_port, lambda: len(got) == 4)
    assert got[3] == 0  # EOF
    os.close(r)


def test_uring_eagain_write_waits_for_room(nowait_port: Any) -> None:
    r, w = os.pipe()
    filled = fill_pipe(w)
    got: list[int] = []
    op = nowait_port.op(w, got.append)
    data = bytearray(b"payload!")
    nowait_port.write(op, data)
    nowait_port.run(0.05)
    assert got == [] and op.active
    with pytest.raises(BufferError):
        data.extend(b"x")  # still pinned while the ring waits for room
    drained = 0
    while drained < filled:
        drained += len(os.read(r, 1 << 20))
    pump(nowait_port, lambda: got)
    assert got == [8] and os.read(r, 100) == b"payload!"
    data.extend(b"x")  # released with the final completion
    os.close(r)
    os.close(w)


def test_uring_eagain_cancel_while_waiting(nowait_port: Any) -> None:
    r, w = os.pipe()
    got: list[int] = []
    op = nowait_port.op(r, got.append)
    buf = bytearray(16)
    nowait_port.read_into(op, buf)
    nowait_port.run(0.05)
    assert op.active
    assert nowait_port.cancel(op)
    pump(nowait_port, lambda: got)
    assert got == [-errno.ECANCELED] and not op.active
    buf.extend(b"released")  # no longer pinned
    os.write(w, b"not for the cancelled read")
    nowait_port.run(0.05)
    assert got == [-errno.ECANCELED]  # exactly one final completion
    os.close(r)
    os.close(w)


def test_uring_eagain_reader_sees_pipe_close(nowait_port: Any) -> None:
    r, w = os.pipe()
    got: list[int] = []
    wop = nowait_port.op(w, got.append)
    fill_pipe(w)
    nowait_port.write(wop, b"blocked")
    nowait_port.run(0.05)
    assert wop.active
    os.close(r)  # the reader goes: POLLERR, then the write fails with EPIPE
    pump(nowait_port, lambda: got)
    assert got == [-errno.EPIPE]
    os.close(w)


def test_uring_eagain_transports_end_to_end(monkeypatch: Any) -> None:
    """Pipes on a loop whose ring sees -EAGAIN: same bytes, same callbacks."""
    from iocp_policy import _port_uring

    if _port_uring._uring is None:
        pytest.skip("native extension not built")
    monkeypatch.setattr(_port_uring, "inject_rw_nowait", True)

    async def main() -> tuple[bool, list[str]]:
        loop = asyncio.get_running_loop()
        assert loop._port.inject_rw_nowait  # type: ignore[attr-defined]
        r, w = pipe_files()
        reader = asyncio.ensure_future(read_all(r))
        wt, wp = await loop.connect_write_pipe(Recorder, w)
        payload = os.urandom(4 << 20)
        for off in range(0, len(payload), 100_000):
            wt.write(payload[off:off + 100_000])
            await asyncio.sleep(0)
        wt.close()
        await wp.lost
        return await reader == payload, wp.events

    with asyncio.Runner(loop_factory=lambda: iocp_policy.new_event_loop(backend="io_uring")) as runner:
        ok, events = runner.run(main())
    assert ok
    assert events[0] == "made" and events[-1] == "lost"
