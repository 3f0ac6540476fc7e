"""``loop.sock_*`` coroutines on the completion port.

Each call first tries the non-blocking syscall directly (the common case on a
busy socket costs no port round trip); if it would block, it submits the
operation to the port and awaits its completion.

Cancellation never loses data.  A cancelled ``sock_recv*`` asks the port to
cancel; if the operation completes anyway (it won the race, or its result was
already in when the task was cancelled), the bytes are kept in a per-socket
stash that the next ``sock_recv*`` on that socket returns first.  A cancelled
``sock_accept`` closes a connection accepted in the race.  A cancelled
``sock_sendall`` that had sent part of its data logs how much, because the
peer now sees half a message and the caller only sees ``CancelledError``.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import io
import logging
import os
import socket
import sys
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from ._dns import DNSMixin
from ._port import POLLOUT, error_from_result

try:
    import ssl
except ImportError:  # pragma: no cover - Python built without ssl
    ssl = None  # type: ignore[assignment]

log = logging.getLogger("iocp_policy")

_SENDFILE_FALLBACK_READBUFFER_SIZE = 1024 * 256
# Windows fails recvfrom() on a datagram longer than the buffer (WSAEMSGSIZE)
# and drops it; the port's receive reports the prefix and MSG_TRUNC instead.
_DGRAM_FAST_PATH = sys.platform != "win32"
_HAS_IPV6 = hasattr(socket, "AF_INET6")


def check_nonblocking_socket(sock: Any) -> None:
    if ssl is not None and isinstance(sock, ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")
    # The stdlib only checks this in debug mode; a blocking socket would
    # block the whole loop on our direct-syscall fast path, so we always do.
    if sock.gettimeout() != 0:
        raise ValueError("the socket must be non-blocking")


def _connect_done(fut: asyncio.Future[None], address: Any, res: int) -> None:
    if fut.done():
        return
    if res < 0:
        fut.set_exception(OSError(-res, f"Connect call failed {address}"))
    else:
        fut.set_result(None)


class SockMixin(DNSMixin):
    # Per-socket data that arrived for a cancelled receive (created lazily).
    _stream_stash: weakref.WeakKeyDictionary[Any, bytearray] | None = None
    _dgram_stash: weakref.WeakKeyDictionary[Any, deque[tuple[bytes, Any]]] | None = None
    # Sockets with a cancelled receive still in the kernel: the next receive
    # waits for its final completion, so bytes stay in order and none are
    # stashed behind a reader that is already waiting.
    _recv_draining: weakref.WeakKeyDictionary[Any, asyncio.Future[None]] | None = None

    def _ensure_fd_no_transport(self, sock: Any) -> None:
        """Hook: the transport layer refuses sockets it owns."""

    # -- the stash -------------------------------------------------------------

    def _stash_stream(self, sock: Any, data: bytes) -> None:
        if not data:
            return
        if self._stream_stash is None:
            self._stream_stash = weakref.WeakKeyDictionary()
        buf = self._stream_stash.get(sock)
        if buf is None:
            self._stream_stash[sock] = bytearray(data)
        else:
            buf += data

    def _take_stream(self, sock: Any, n: int) -> bytes | None:
        stash = self._stream_stash
        if not stash:
            return None
        buf = stash.get(sock)
        if not buf:
            return None
        data = bytes(buf[:n])
        del buf[:n]
        if not buf:
            del stash[sock]
        return data

    def _stash_datagram(self, sock: Any, data: bytes, addr: Any) -> None:
        if self._dgram_stash is None:
            self._dgram_stash = weakref.WeakKeyDictionary()
        self._dgram_stash.setdefault(sock, deque()).append((data, addr))

    def _take_datagram(self, sock: Any) -> tuple[bytes, Any] | None:
        stash = self._dgram_stash
        if not stash:
            return None
        q = stash.get(sock)
        if not q:
            return None
        item = q.popleft()
        if not q:
            del stash[sock]
        return item

    async def _after_cancelled_recv(self, sock: Any) -> None:
        draining = self._recv_draining
        if draining:
            fut = draining.get(sock)
            if fut is not None:
                await asyncio.shield(fut)

    def _recv_cancelled(self, sock: Any, op: Any) -> None:
        """A receive on ``sock`` was cancelled while its op is in the kernel."""
        if self._recv_draining is None:
            self._recv_draining = weakref.WeakKeyDictionary()
        if sock not in self._recv_draining:
            self._recv_draining[sock] = self.create_future()
        self._port.cancel(op)

    def _recv_drained(self, sock: Any) -> None:
        """The cancelled receive's final completion arrived (data stashed)."""
        draining = self._recv_draining
        fut = draining.pop(sock, None) if draining else None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _sock_op(self, sock: Any, done: Callable[[int], None]) -> Any:
        """An op for a sock_* call that has to wait: like the stdlib, refuse a
        socket that a transport owns (both would consume its data)."""
        self._ensure_fd_no_transport(sock)
        return self._port.op(sock, done)

    # -- waiting on an op --------------------------------------------------------

    async def _await_op(self, fut: asyncio.Future[Any], op: Any,
                        orphan: Callable[[Any], None] | None = None, recv_sock: Any = None) -> Any:
        """Await ``fut`` (completed by ``op``'s callback).  On cancellation,
        cancel ``op``; a result that was already delivered goes to ``orphan``.
        ``recv_sock``: the op is a receive on that socket (see _recv_draining)."""
        try:
            return await fut
        except asyncio.CancelledError:
            if op.active:
                if recv_sock is not None:
                    self._recv_cancelled(recv_sock, op)
                else:
                    self._port.cancel(op)
            elif orphan is not None and fut.done() and not fut.cancelled() and fut.exception() is None:
                orphan(fut.result())
            raise
        finally:
            del fut, op  # this frame is in a failure's traceback: no cycle through fut

    async def _wait_ready(self, sock: Any, events: int) -> None:
        fut = self.create_future()

        def done(res: int) -> None:
            if fut.done():
                return
            if res < 0:
                fut.set_exception(error_from_result(res))
            else:
                fut.set_result(None)

        op = self._sock_op(sock, done)
        self._port.poll(op, events)
        await self._await_op(fut, op)

    # -- receiving -------------------------------------------------------------

    async def sock_recv(self, sock: socket.socket, n: int) -> bytes:
        check_nonblocking_socket(sock)
        await self._after_cancelled_recv(sock)
        stashed = self._take_stream(sock, n)
        if stashed is not None:
            return stashed
        try:
            return sock.recv(n)
        except (BlockingIOError, InterruptedError):
            pass
        fut: asyncio.Future[bytes] = self.create_future()

        def done(res: int) -> None:
            if fut.done():  # cancelled meanwhile: keep the bytes for the next reader
                if res > 0:
                    self._stash_stream(sock, op.data or b"")
                self._recv_drained(sock)
                return
            if res < 0:
                fut.set_exception(error_from_result(res))
            else:
                fut.set_result(op.data or b"")

        op = self._sock_op(sock, done)
        self._port.recv(op, n)
        return await self._await_op(  # type: ignore[no-any-return]
            fut, op, lambda data: self._stash_stream(sock, data), sock
        )

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        check_nonblocking_socket(sock)
        await self._after_cancelled_recv(sock)
        view = memoryview(buf).cast("B")
        stashed = self._take_stream(sock, len(view))
        if stashed is not None:
            view[: len(stashed)] = stashed
            return len(stashed)
        try:
            return sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            pass
        fut: asyncio.Future[int] = self.create_future()

        def done(res: int) -> None:
            if fut.done():
                if res > 0:  # the kernel wrote into a buffer the caller gave up on
                    self._stash_stream(sock, bytes(view[:res]))
                self._recv_drained(sock)
                return
            if res < 0:
                fut.set_exception(error_from_result(res))
            else:
                fut.set_result(res)

        op = self._sock_op(sock, done)
        self._port.recv_into(op, view)
        return await self._await_op(  # type: ignore[no-any-return]
            fut, op, lambda n: self._stash_stream(sock, bytes(view[:n])), sock
        )

    async def sock_recvfrom(self, sock: socket.socket, bufsize: int) -> tuple[bytes, Any]:
        check_nonblocking_socket(sock)
        await self._after_cancelled_recv(sock)
        stashed = self._take_datagram(sock)
        if stashed is not None:
            return stashed[0][:bufsize], stashed[1]
        if _DGRAM_FAST_PATH or sock.type != socket.SOCK_DGRAM:
            try:
                return sock.recvfrom(bufsize)
            except (BlockingIOError, InterruptedError):
                pass
        fut: asyncio.Future[tuple[bytes, Any]] = self.create_future()

        def done(res: int) -> None:
            if fut.done():
                if res >= 0:
                    self._stash_datagram(sock, op.data or b"", op.address)
                self._recv_drained(sock)
                return
            if res < 0:
                fut.set_exception(error_from_result(res))
            else:
                fut.set_result((op.data or b"", op.address))

        op = self._sock_op(sock, done)
        self._port.recvfrom(op, bufsize)
        return await self._await_op(  # type: ignore[no-any-return]
            fut, op, lambda r: self._stash_datagram(sock, r[0], r[1]), sock
        )

    async def sock_recvfrom_into(self, sock: socket.socket, buf: Any, nbytes: int = 0) -> tuple[int, Any]:
        check_nonblocking_socket(sock)
        await self._after_cancelled_recv(sock)
        view = memoryview(buf).cast("B")
        if not nbytes:
            nbytes = len(view)
        stashed = self._take_datagram(sock)
        if stashed is not None:
            data = stashed[0][:nbytes]
            view[: len(data)] = data
            return len(data), stashed[1]
        if _DGRAM_FAST_PATH or sock.type != socket.SOCK_DGRAM:
            try:
                return sock.recvfrom_into(view, nbytes)
            except (BlockingIOError, InterruptedError):
                pass
        fut: asyncio.Future[tuple[int, Any]] = self.create_future()

        def done(res: int) -> None:
            if fut.done():
                if res >= 0:
                    self._stash_datagram(sock, bytes(view[:res]), op.address)
                self._recv_drained(sock)
                return
            if res < 0:
                fut.set_exception(error_from_result(res))
            else:
                fut.set_result((res, op.address))

        op = self._sock_op(sock, done)
        self._port.recvfrom_into(op, view, nbytes)
        return await self._await_op(  # type: ignore[no-any-return]
            fut, op, lambda r: self._stash_datagram(sock, bytes(view[: r[0]]), r[1]), sock
        )

    # -- sending ----------------------------------------------------------------

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
        check_nonblocking_socket(sock)
        try:
            n = sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        view = memoryview(data).cast("B")
        total = len(view)
        if n == total:
            return
        fut: asyncio.Future[None] = self.create_future()
        sent = [n]

        def done(res: int) -> None:
            if res > 0:
                sent[0] += res
            if fut.done():  # cancelled: say what the peer actually got
                if 0 < sent[0] < total:
                    log.warning(
                        "sock_sendall() on %r was cancelled after %d of %d bytes were sent; "
                        "the peer has a partial message", sock, sent[0], total,
                    )
                return
            if res < 0:
                fut.set_exception(error_from_result(res))
            elif sent[0] < total:
                self._port.send(op, view[sent[0]:])
            else:
                fut.set_result(None)

        op = self._sock_op(sock, done)
        self._port.send(op, view[n:])
        try:
            await self._await_op(fut, op)
        except asyncio.CancelledError:
            if not op.active and 0 < sent[0] < total:
                log.warning(
                    "sock_sendall() on %r was cancelled after %d of %d bytes were sent; "
                    "the peer has a partial message", sock, sent[0], total,
                )
            raise

    async def sock_sendto(self, sock: socket.socket, data: Any, address: Any) -> int:
        check_nonblocking_socket(sock)
        while True:
            try:
                return sock.sendto(data, address)
            except (BlockingIOError, InterruptedError):
                await self._wait_ready(sock, POLLOUT)

    # -- connections -------------------------------------------------------------

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        check_nonblocking_socket(sock)
        if sock.family == socket.AF_INET or (_HAS_IPV6 and sock.family == socket.AF_INET6):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto
            )
            address = resolved[0][4]
        fut: asyncio.Future[None] = self.create_future()
        op = self._sock_op(sock, functools.partial(_connect_done, fut, address))
        self._port.connect(op, address)
        try:
            await self._await_op(fut, op)
        finally:
            # A failure's traceback holds this frame; without this the frame
            # would hold fut, which holds the failure: a reference cycle that
            # keeps both alive until the GC runs (CPython's gh-124859).
            del fut, op

    async def sock_accept(self, sock: socket.socket) -> tuple[socket.socket, Any]:
        check_nonblocking_socket(sock)
        try:
            conn, address = sock.accept()
            conn.setblocking(False)
            return conn, address
        except (BlockingIOError, InterruptedError):
            pass
        fut: asyncio.Future[tuple[socket.socket, Any]] = self.create_future()

        def done(res: int) -> None:
            if fut.done():  # cancelled: nobody will ever see this connection
                if res >= 0:
                    socket.close(res)  # a SOCKET handle on Windows, not a CRT fd
                return
            if res < 0:
                fut.set_exception(error_from_result(res))
                return
            conn = socket.socket(sock.family, sock.type, sock.proto, fileno=res)
            conn.setblocking(False)
            fut.set_result((conn, op.address))

        op = self._sock_op(sock, done)
        self._port.accept(op)
        return await self._await_op(fut, op, lambda r: r[0].close())  # type: ignore[no-any-return]

    # -- sendfile ------------------------------------------------------------------

    async def sock_sendfile(self, sock: socket.socket, file: Any, offset: int = 0,
                            count: int | None = None, *, fallback: bool | None = True) -> int:
        check_nonblocking_socket(sock)
        self._check_sendfile_params(sock, file, offset, count)
        try:
            return await self._sock_sendfile_native(sock, file, offset, count)
        except asyncio.SendfileNotAvailableError:
            if not fallback:
                raise
        return await self._sock_sendfile_fallback(sock, file, offset, count)

    @staticmethod
    def _check_sendfile_params(sock: Any, file: Any, offset: int, count: int | None) -> None:
        if "b" not in getattr(file, "mode", "b"):
            raise ValueError("file should be opened in binary mode")
        if not sock.type == socket.SOCK_STREAM:
            raise ValueError("only SOCK_STREAM type sockets are supported")
        if count is not None:
            if not isinstance(count, int):
                raise TypeError(f"count must be a positive integer (got {count!r})")
            if count <= 0:
                raise ValueError(f"count must be a positive integer (got {count!r})")
        if not isinstance(offset, int):
            raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
        if offset < 0:
            raise ValueError(f"offset must be a non-negative integer (got {offset!r})")

    async def _sock_sendfile_native(self, sock: Any, file: Any, offset: int, count: int | None,
                                    *, transport_owned: bool = False) -> int:
        """Zero-copy through the port (sendfile(2) on POLLOUT, TransmitFile on IOCP).
        ``transport_owned``: loop.sendfile() lends a transport's own socket
        (its reading paused, its queue drained), which sock_* must not refuse."""
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation) as err:
            raise asyncio.SendfileNotAvailableError("not a regular file") from err
        try:
            fsize = os.fstat(fileno).st_size
        except OSError as err:
            raise asyncio.SendfileNotAvailableError("not a regular file") from err
        blocksize = count if count else fsize
        if not blocksize:
            return 0
        end = offset + blocksize
        total = 0
        fut: asyncio.Future[int] | None = None

        def done(res: int) -> None:
            assert fut is not None
            if not fut.done():
                fut.set_result(res)

        op = self._port.op(sock, done) if transport_owned else self._sock_op(sock, done)
        try:
            while offset + total < end:
                fut = self.create_future()
                self._port.sendfile(op, fileno, offset + total, min(end - offset - total, 0x7FFFF000))
                res = await self._await_op(fut, op)
                if res < 0:
                    exc = error_from_result(res)
                    if total == 0:
                        # Not a sendfile-able file (or socket): the caller may fall back.
                        raise asyncio.SendfileNotAvailableError("os.sendfile call failed") from exc
                    if exc.errno == errno.ENOTCONN and type(exc) is not ConnectionError:
                        raise ConnectionError("socket is not connected", errno.ENOTCONN) from exc
                    raise exc
                if res == 0:
                    break  # EOF before count
                total += res
            return total
        finally:
            if total > 0:
                os.lseek(fileno, offset + total, os.SEEK_SET)

    async def _sock_sendfile_fallback(self, sock: Any, file: Any, offset: int, count: int | None) -> int:
        if offset:
            file.seek(offset)
        blocksize = (
            min(count, _SENDFILE_FALLBACK_READBUFFER_SIZE) if count else _SENDFILE_FALLBACK_READBUFFER_SIZE
        )
        buf = bytearray(blocksize)
        total = 0
        try:
            while True:
                if count:
                    blocksize = min(count - total, blocksize)
                    if blocksize <= 0:
                        break
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    break
                await self.sock_sendall(sock, view[:read])
                total += read
            return total
        finally:
            if total > 0 and hasattr(file, "seek"):
                file.seek(offset + total)
