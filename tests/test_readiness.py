"""add_reader / add_writer / remove_*, differential (our backends and the
stdlib loop), plus real libraries that need them (pyzmq, pycares)."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

import pytest
from port_helpers import fd_count, fill_pipe

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX descriptors (pipes, regular files)")


def socket_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def pipe_pair() -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


@pytest.mark.parametrize("kind", ["socket", "pipe"])
def test_level_triggered_one_byte_per_call(run: Any, kind: str) -> None:
    """Ten bytes, one consumed per call: exactly ten calls, then silence."""

    async def main() -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        if kind == "socket":
            a, b = socket_pair()
            rfd: Any = a
            b.send(b"0123456789")
            read_one: Callable[[], bytes] = lambda: a.recv(1)  # noqa: E731
        else:
            r, w = pipe_pair()
            rfd = r
            os.write(w, b"0123456789")
            read_one = lambda: os.read(r, 1)  # noqa: E731
        got = bytearray()
        calls = 0

        def reader() -> None:
            nonlocal calls
            calls += 1
            got.extend(read_one())

        loop.add_reader(rfd, reader)
        for _ in range(30):  # well past the tenth call: no eleventh may come
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert loop.remove_reader(rfd)
        if kind == "socket":
            a.close()
            b.close()
        else:
            os.close(r)
            os.close(w)
        return calls, bytes(got)

    assert run(main()) == (10, b"0123456789")


def test_reader_called_again_when_more_data_arrives(run: Any) -> None:
    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        a, b = socket_pair()
        got: list[bytes] = []
        ev = asyncio.Event()

        def reader() -> None:
            got.append(a.recv(100))
            ev.set()

        loop.add_reader(a.fileno(), reader)
        for msg in (b"one", b"two", b"three"):
            ev.clear()
            b.send(msg)
            await asyncio.wait_for(ev.wait(), 10)
        loop.remove_reader(a.fileno())
        a.close()
        b.close()
        return got

    assert run(main()) == [b"one", b"two", b"three"]


def test_writer_level_triggered_and_remove_inside_callback(run: Any) -> None:
    async def main() -> tuple[int, int, bool]:
        loop = asyncio.get_running_loop()
        a, b = socket_pair()
        calls = 0
        done = loop.create_future()

        def writer() -> None:
            nonlocal calls
            calls += 1
            if calls == 5:
                done.set_result(loop.remove_writer(a))

        loop.add_writer(a, writer)  # always writable: called every iteration
        removed = await done
        for _ in range(10):
            await asyncio.sleep(0)
        after = calls
        a.close()
        b.close()
        return calls, after, removed

    assert run(main()) == (5, 5, True)


def test_writer_waits_for_room(run: Any) -> None:
    async def main() -> bool:
        loop = asyncio.get_running_loop()
        r, w = pipe_pair()
        fill_pipe(w)
        fired = loop.create_future()
        loop.add_writer(w, lambda: fired.done() or fired.set_result(True))
        await asyncio.sleep(0.05)
        assert not fired.done(), "a full pipe is not writable"
        while True:
            try:
                if not os.read(r, 1 << 20):
                    break
            except BlockingIOError:
                break
        result = await asyncio.wait_for(fired, 10)
        loop.remove_writer(w)
        os.close(r)
        os.close(w)
        return result

    assert run(main()) is True


def test_reader_and_writer_on_one_fd(run: Any) -> None:
    async def main() -> tuple[bytes, bool, bool, bool]:
        loop = asyncio.get_running_loop()
        a, b = socket_pair()
        got = loop.create_future()
        wrote = loop.create_future()

        def writer() -> None:
            a.send(b"ping")
            loop.remove_writer(a)
            wrote.set_result(True)

        loop.add_reader(a, lambda: got.done() or got.set_result(a.recv(10)))
        loop.add_writer(a, writer)
        await wrote
        assert b.recv(10) == b"ping"
        b.send(b"pong")
        data = await asyncio.wait_for(got, 10)
        r1 = loop.remove_reader(a)
        r2 = loop.remove_writer(a)
        a.close()
        b.close()
        return data, wrote.result(), r1, r2

    assert run(main()) == (b"pong", True, True, False)


def test_replace_callback_and_removal_results(run: Any) -> None:
    async def main() -> tuple[list[str], bool, bool, bool, bool]:
        loop = asyncio.get_running_loop()
        a, b = socket_pair()
        calls: list[str] = []
        ev = asyncio.Event()

        def cb(name: str) -> None:
            calls.append(name)
            a.recv(100)
            ev.set()

        never = loop.remove_reader(a)
        loop.add_reader(a, cb, "first")
        loop.add_reader(a, cb, "second")  # one reader per fd: replaces
        b.send(b"x")
        await asyncio.wait_for(ev.wait(), 10)
        await asyncio.sleep(0.02)
        first = loop.remove_reader(a)
        second = loop.remove_reader(a)
        writer_never = loop.remove_writer(a)
        a.close()
        b.close()
        return calls, never, first, second, writer_never

    assert run(main()) == (["second"], False, True, False, False)


def test_no_callback_after_removal_even_if_already_queued(run: Any) -> None:
    """Two readers ready in the same iteration; the first removes the second:
    the second must not run although its readiness was already collected."""

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        a1, b1 = socket_pair()
        a2, b2 = socket_pair()
        calls: list[str] = []

        def first() -> None:
            calls.append("first")
            a1.recv(10)
            loop.remove_reader(a1)
            loop.remove_reader(a2)

        def second() -> None:
            calls.append("second")
            a2.recv(10)
            loop.remove_reader(a1)
            loop.remove_reader(a2)

        b1.send(b"x")
        b2.send(b"x")
        await asyncio.sleep(0.02)  # both readable before either is registered
        loop.add_reader(a1, first)
        loop.add_reader(a2, second)
        for _ in range(10):
            await asyncio.sleep(0)
        for s in (a1, b1, a2, b2):
            s.close()
        return calls

    calls = run(main())
    assert len(calls) == 1  # whichever ran first removed the other


def test_callback_exception_goes_to_handler_and_keeps_registration(run: Any) -> None:
    async def main() -> tuple[int, str, bool, bool]:
        loop = asyncio.get_running_loop()
        a, b = socket_pair()
        ctxs: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda lp, ctx: ctxs.append(ctx))
        calls = 0

        def bad() -> None:
            nonlocal calls
            calls += 1
            a.recv(1)
            raise RuntimeError("reader failed")

        b.send(b"ab")
        loop.add_reader(a, bad)
        for _ in range(10):
            await asyncio.sleep(0)
        still = loop.remove_reader(a)
        a.close()
        b.close()
        ctx = ctxs[0]
        return calls, ctx["message"].split(" ")[0], isinstance(ctx.get("handle"), asyncio.Handle), still

    assert run(main()) == (2, "Exception", True, True)


def test_eof_and_hangup_count_as_readable(run: Any) -> None:
    async def main() -> tuple[list[bytes], bool]:
        loop = asyncio.get_running_loop()
        a, b = socket_pair()
        got: list[bytes] = []
        done = loop.create_future()

        def reader() -> None:
            data = a.recv(10)
            got.append(data)
            if not data:
                done.set_result(loop.remove_reader(a))

        loop.add_reader(a, reader)
        b.send(b"last")
        b.close()
        removed = await asyncio.wait_for(done, 10)
        a.close()
        return got, removed

    got, removed = run(main())
    assert b"".join(got) == b"last" and got[-1] == b"" and removed


def test_socket_closed_then_removed_is_released(run: Any) -> None:
    """Closing a registered socket first and removing it after (a common
    order in libraries) works, and the peer then sees the close.  (On
    io_uring the armed poll holds the file until the removal cancels it.)"""

    async def main() -> tuple[bool, bytes]:
        loop = asyncio.get_running_loop()
        a, b = socket_pair()
        loop.add_reader(a.fileno(), print)
        fd = a.fileno()
        a.close()
        removed = loop.remove_reader(fd)
        b.setblocking(True)
        b.settimeout(10)
        await asyncio.sleep(0.01)  # the cancel goes out with the next kernel entry
        got = await loop.run_in_executor(None, b.recv, 10)
        b.close()
        return removed, got

    assert run(main()) == (True, b"")


def test_fd_owned_by_a_transport_is_refused(run: Any) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        a, b = socket_pair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        out = []
        for call in (lambda: loop.add_reader(a, print), lambda: loop.add_writer(a.fileno(), print),
                     lambda: loop.remove_reader(a), lambda: loop.remove_writer(a.fileno())):
            with pytest.raises(RuntimeError) as exc:
                call()
            out.append(str(exc.value).split(" is used by transport ")[0])
        transport.close()
        await asyncio.sleep(0.01)
        b.close()
        return out

    fd_text = "File descriptor"
    for msg in run(main()):
        assert msg.startswith(fd_text)


def test_invalid_file_objects(run: Any, tmp_path: Any) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        out = []
        path = tmp_path / "regular"
        path.write_bytes(b"x")
        regular = open(path, "rb")
        r, w = pipe_pair()
        os.close(r)
        os.close(w)  # r is now a closed descriptor number (nothing opens one below)
        for call in (lambda: loop.add_reader(object(), print), lambda: loop.add_writer("3", print),
                     lambda: loop.remove_reader(object()), lambda: loop.add_reader(-1, print),
                     lambda: loop.remove_writer(-1), lambda: loop.add_reader(r, print),
                     lambda: loop.add_reader(regular, print)):
            try:
                call()
            except (ValueError, OSError) as exc:
                text = str(exc) if isinstance(exc, ValueError) else errno.errorcode[exc.errno or 0]
                out.append(f"{type(exc).__name__}: {text.split(' at 0x')[0]}")
        regular.close()
        return out

    assert run(main()) == [
        "ValueError: Invalid file object: <object object",
        "ValueError: Invalid file object: '3'",
        "ValueError: Invalid file object: <object object",
        "ValueError: Invalid file descriptor: -1",
        "ValueError: Invalid file descriptor: -1",
        "OSError: EBADF",
        "PermissionError: EPERM",  # epoll cannot poll a regular file
    ]


def test_closed_loop(loop_factory: Any) -> None:
    lp = loop_factory()
    a, b = socket_pair()
    lp.add_reader(a, print)
    lp.close()
    assert lp.remove_reader(a) is False
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        lp.add_reader(a, print)
    a.close()
    b.close()


@pytest.mark.parametrize("yield_between", [False, True])
def test_churn_10000_add_remove_without_leaks(run: Any, loop_name: str, yield_between: bool) -> None:
    async def main() -> tuple[int, int, int, int]:
        loop = asyncio.get_running_loop()
        a, b = socket_pair()
        r, w = pipe_pair()
        b.send(b"ready")  # a is readable the whole time: polls complete as fast as they are armed
        gc.collect()
        fds0 = fd_count()
        inflight0 = loop._port.inflight if loop_name != "stdlib" else 0  # type: ignore[attr-defined]
        calls = 0

        def cb() -> None:
            nonlocal calls
            calls += 1

        for i in range(10_000):
            loop.add_reader(a, cb)
            loop.add_writer(w, cb)
            if yield_between and i % 2:
                await asyncio.sleep(0)
            assert loop.remove_reader(a)
            assert loop.remove_writer(w)
        for _ in range(5):
            await asyncio.sleep(0)
        calls_after_churn = calls
        for _ in range(5):
            await asyncio.sleep(0)
        gc.collect()
        fds1 = fd_count()
        leftovers = 0
        if loop_name != "stdlib":  # no watch, no poll left behind
            leftovers = (len(loop._readers) + len(loop._writers)  # type: ignore[attr-defined]
                         + loop._port.inflight - inflight0)  # type: ignore[attr-defined]
        for s in (a, b):
            s.close()
        os.close(r)
        os.close(w)
        return fds1 - fds0, leftovers, calls - calls_after_churn, 0

    fd_growth, leftovers, late_calls, _ = run(main())
    assert fd_growth == 0
    assert late_calls == 0  # nothing runs after removal
    assert leftovers == 0


# -- real libraries ------------------------------------------------------------------------


def test_pyzmq_asyncio(run: Any) -> None:
    zmq = pytest.importorskip("zmq", reason="pyzmq is not installed (pip install pyzmq)")
    zmq_asyncio = pytest.importorskip("zmq.asyncio", reason="pyzmq without asyncio support")

    async def main() -> tuple[list[bytes], int]:
        ctx = zmq_asyncio.Context()
        try:
            pull = ctx.socket(zmq.PULL)
            port = pull.bind_to_random_port("tcp://127.0.0.1")
            push = ctx.socket(zmq.PUSH)
            push.connect(f"tcp://127.0.0.1:{port}")
            pair_a = ctx.socket(zmq.PAIR)
            pport = pair_a.bind_to_random_port("tcp://127.0.0.1")
            pair_b = ctx.socket(zmq.PAIR)
            pair_b.connect(f"tcp://127.0.0.1:{pport}")

            async def producer() -> None:
                for i in range(500):
                    await push.send(b"msg %d" % i)

            async def consumer() -> list[bytes]:
                return [await pull.recv() for _ in range(500)]

            _, got = await asyncio.wait_for(asyncio.gather(producer(), consumer()), 30)
            rounds = 0
            for i in range(100):  # request/reply: each recv waits on the zmq fd
                await pair_a.send(b"%d" % i)
                assert await asyncio.wait_for(pair_b.recv(), 10) == b"%d" % i
                await pair_b.send(b"ack")
                assert await asyncio.wait_for(pair_a.recv(), 10) == b"ack"
                rounds += 1
            for s in (pull, push, pair_a, pair_b):
                s.close(linger=0)
            return got, rounds
        finally:
            ctx.term()

    got, rounds = run(main())
    assert got == [b"msg %d" % i for i in range(500)] and rounds == 100


def dns_answer(query: bytes, ip: str) -> bytes:
    """A minimal DNS server's reply: the question echoed, one A record."""
    qid, flags, qdcount = struct.unpack("!HHH", query[:6])
    end = 12
    while query[end]:
        end += query[end] + 1
    question = query[12:end + 5]
    header = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0)
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)
    return header + question + answer


def test_pycares_with_sock_state_cb(run: Any) -> None:
    """pycares driven as aiodns drives it when it cannot use c-ares' own event
    thread: sock_state_cb -> add_reader/add_writer -> process_fd."""
    pycares = pytest.importorskip("pycares", reason="pycares is not installed (pip install pycares)")

    class DNSServer(asyncio.DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.queries = 0

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.queries += 1
            self.transport.sendto(dns_answer(data, f"10.0.0.{self.queries}"), addr)

    async def main() -> tuple[list[str], set[str]]:
        loop = asyncio.get_running_loop()
        transport, server = await loop.create_datagram_endpoint(DNSServer, local_addr=("127.0.0.1", 0))
        host, port = transport.get_extra_info("sockname")
        states: set[str] = set()
        fds: set[int] = set()
        channels: list[Any] = []  # the channel, once made (its callback needs it)

        def sock_state_cb(fd: int, readable: bool, writable: bool) -> None:
            states.add(f"{'r' if readable else '-'}{'w' if writable else '-'}")
            if readable:
                loop.add_reader(fd, channels[0].process_fd, fd, pycares.ARES_SOCKET_BAD)
                fds.add(fd)
            else:
                loop.remove_reader(fd)
            if writable:
                loop.add_writer(fd, channels[0].process_fd, pycares.ARES_SOCKET_BAD, fd)
            else:
                loop.remove_writer(fd)

        channel = pycares.Channel(sock_state_cb=sock_state_cb, servers=[f"{host}:{port}"], timeout=5.0,
                                  tries=1)
        channels.append(channel)

        async def resolve(name: str) -> str:
            fut = loop.create_future()

            def done(result: Any, error: Any) -> None:
                if error:
                    fut.set_exception(OSError(error, str(error)))
                else:
                    fut.set_result(result.answer[0].data.addr)

            channels[0].query(name, pycares.QUERY_TYPE_A, callback=done)
            return await asyncio.wait_for(fut, 10)

        answers = [await resolve(f"host{i}.example") for i in range(5)]
        answers += await asyncio.gather(*(resolve(f"many{i}.example") for i in range(5)))
        channel.cancel()
        for fd in fds:  # c-ares may keep its socket for reuse: stop watching it
            loop.remove_reader(fd)
            loop.remove_writer(fd)
        channels.clear()
        del channel
        gc.collect()
        transport.close()
        return answers, states

    answers, states = run(main())
    assert answers[:5] == [f"10.0.0.{i}" for i in range(1, 6)]
    assert sorted(answers[5:]) == sorted(f"10.0.0.{i}" for i in range(6, 11))
    assert "r-" in states or "rw" in states
