"""The stream transport: a connected socket driven by completions.

Reading keeps exactly one receive outstanding and re-arms it after each
completion: ``recv`` into a fresh ``bytes`` for ``Protocol.data_received``, or
``recv_into`` the buffer ``BufferedProtocol.get_buffer()`` returned, straight
from the kernel.  ``pause_reading()`` stops re-arming; a receive already in
the kernel cannot be un-issued, so its result (data, EOF or error) is held and
delivered after ``resume_reading()``.

Writing keeps every byte not yet confirmed by a completion in one queue of
chunks, with at most one send in flight (two unlinked sends on one stream
socket could reorder bytes).  The send in flight covers a prefix of the
queue, gathered into one ``sendmsg`` of up to IOV_MAX chunks, so small writes
coalesce by themselves.  When the queue is empty, ``write()`` first tries a
direct non-blocking ``send()`` (``direct_send``); whatever the kernel does not
take is queued.  ``get_write_buffer_size()`` counts queued *and* in-flight
bytes, so flow control sees memory the kernel has not released yet.

Closing is ordered: ``close()`` stops reading, lets queued data drain, then
calls ``connection_lost`` (exactly once, after every data callback);
``abort()`` drops the queue.  Either way the socket is closed only once the
receive and the send have completed or been cancelled *and reaped*: closing
an fd with an operation in flight would let the fd number be reused under it.

Pipes (issue 4) reuse all of this through four hooks: ``_submit_read``,
``_submit_write``, ``_direct_write`` and ``_shutdown_write``.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import socket
from asyncio import constants as _aio_constants
from collections import deque
from typing import Any

from ._port import error_from_result
from ._transport import PortTransport, set_result_unless_cancelled

logger = logging.getLogger("asyncio")

_ECANCELED = -errno.ECANCELED
_IOV_MAX = 1024
_LOG_THRESHOLD_FOR_CONNLOST_WRITES = 5
_SendfileMode = _aio_constants._SendfileMode  # read by loop.sendfile (and sslproto)


def _set_nodelay(sock: socket.socket) -> None:
    if (hasattr(socket, "TCP_NODELAY") and sock.family in (socket.AF_INET, socket.AF_INET6)
            and sock.type == socket.SOCK_STREAM and sock.proto == socket.IPPROTO_TCP):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class StreamTransport(PortTransport, asyncio.Transport):
    """asyncio.Transport over a connected stream socket (TCP, Unix)."""

    # Bytes per receive.  The stdlib selector loop reads 256 KiB; here each
    # receive allocates its bytes object up front, and above glibc's 128 KiB
    # mmap threshold that costs mmap + mremap (shrink) + munmap per read and a
    # page fault per page written (strace -c; /proc/<pid>/stat minflt): 64 KiB
    # comes from the heap, warm.  See docs/design.md for the measurements.
    max_size = 64 * 1024
    direct_send = True  # try send() inline when nothing is queued (see module doc)
    _error_noun = "socket"  # in error messages; pipe transports say "pipe", as the stdlib's
    _start_tls_compatible = True
    _sendfile_compatible = _SendfileMode.TRY_NATIVE

    def __init__(self, loop: Any, sock: Any, protocol: asyncio.BaseProtocol,
                 waiter: asyncio.Future[Any] | None = None, extra: dict[str, Any] | None = None,
                 server: Any = None) -> None:
        asyncio.Transport.__init__(self, extra)
        PortTransport.__init__(self, loop, sock, sock.fileno(), server)
        self._init_extra(sock)
        self._buffered = False
        self.set_protocol(protocol)
        self._eof = False  # write_eof() called
        self._read_eof = False  # the peer's EOF was delivered; never read again
        self._paused = False
        self._held: tuple[int, Any] | None = None  # a completion that arrived while paused
        self._empty_waiter: asyncio.Future[None] | None = None
        # Bytes not confirmed sent yet; a send in flight always covers a prefix.
        self._wbuf: deque[Any] = deque()
        self._wbuf_size = 0
        self._read_buf: Any = None  # the buffer of an in-flight recv_into, else None
        self._prepare()
        loop._transports[self._sock_fd] = self
        if server is not None:
            server._attach(self)
        loop.call_soon(self._protocol.connection_made, self)
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(set_result_unless_cancelled, waiter, None)

    # -- hooks (overridden by pipe transports) --------------------------------

    def _init_extra(self, sock: Any) -> None:
        self._init_socket_extra(sock, self._extra)

    def _prepare(self) -> None:
        _set_nodelay(self._sock)

    def _submit_read(self) -> None:
        if self._buffered:
            try:
                buf = self._protocol.get_buffer(-1)
                if not len(buf):
                    raise RuntimeError("get_buffer() returned an empty buffer")
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
                return
            self._read_buf = buf
            self._port.recv_into(self._rop, buf)
        else:
            self._read_buf = None
            self._port.recv(self._rop, self.max_size)

    def _submit_write(self) -> None:
        wbuf = self._wbuf
        if len(wbuf) == 1:
            self._port.send(self._wop, wbuf[0])
        else:
            self._port.sendv(self._wop, list(itertools.islice(wbuf, _IOV_MAX)))

    def _direct_write(self, data: Any) -> int:
        return self._sock.send(data)  # type: ignore[no-any-return]

    def _shutdown_write(self) -> None:
        self._sock.shutdown(socket.SHUT_WR)

    def _writes_pending(self) -> bool:
        return bool(self._wbuf)

    def _drop_writes(self) -> None:
        self._wbuf.clear()
        self._wbuf_size = 0

    def _stop_reading(self) -> None:
        super()._stop_reading()
        self._held = None

    # -- protocol --------------------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._protocol = protocol
        self._protocol_connected = True

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._sock is not None:
            info.append(f"read={'paused' if self._paused else 'active'}")
            info.append(f"write=<bufsize={self._wbuf_size}>")
        return "<{}>".format(" ".join(info))

    # -- reading ---------------------------------------------------------------

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._held is not None:
            # Deliver from the loop, not from inside the caller (often a protocol callback).
            self._loop.call_soon(self._deliver_held)
        else:
            self._loop.call_soon(self._start_reading)
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    def _start_reading(self) -> None:
        if self._closing or self._paused or self._read_eof or self._rop.active:
            return
        self._submit_read()

    def _deliver_held(self) -> None:
        if self._paused or self._closing or self._held is None:
            return
        res, data = self._held
        self._held = None
        self._deliver(res, data)

    def _on_read(self, res: int) -> None:
        """Completion of the receive: the hot path."""
        if self._closing:
            # Closed while the receive was in flight: nothing more is delivered.
            self._op_done_after_close()
            return
        # What the receive was submitted as decides where the bytes are: a
        # protocol switch (start_tls) may have happened while it was in flight.
        buf = self._read_buf
        if buf is not None:
            self._read_buf = None
            data = None if self._buffered else bytes(memoryview(buf)[:res]) if res > 0 else b""
        else:
            data = self._rop.data
        if self._paused:
            self._held = (res, data)
            return
        self._deliver(res, data)

    def _deliver(self, res: int, data: Any) -> None:
        if res > 0:
            if self._buffered:
                if data is not None:
                    # Bytes received for a plain Protocol before a switch to a
                    # BufferedProtocol (start_tls): copy them into its buffers.
                    self._feed_buffered(data)
                else:
                    try:
                        self._protocol.buffer_updated(res)
                    except (SystemExit, KeyboardInterrupt):
                        raise
                    except BaseException as exc:
                        self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
                        return
            else:
                try:
                    self._protocol.data_received(data)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                    return
            if not self._paused and not self._closing and not self._rop.active:
                self._submit_read()
        elif res == 0:
            self._on_eof()
        elif res != _ECANCELED:
            self._fatal_error(error_from_result(res), f"Fatal read error on {self._error_noun} transport")

    def _feed_buffered(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                buf = memoryview(self._protocol.get_buffer(len(view)))
                n = min(len(buf), len(view))
                if not n:
                    raise RuntimeError("get_buffer() returned an empty buffer")
                buf[:n] = view[:n]
                self._protocol.buffer_updated(n)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
                return
            view = view[n:]

    def _on_eof(self) -> None:
        if self._loop.get_debug():
            logger.debug("%r received EOF", self)
        self._read_eof = True
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    # -- writing ---------------------------------------------------------------

    def write(self, data: Any) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        if self._conn_lost:
            if self._conn_lost >= _LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        if type(data) is memoryview and (data.itemsize != 1 or data.ndim != 1):
            data = bytes(data)  # lengths below are byte counts
        if not self._wbuf:
            if self.direct_send:
                try:
                    n = self._direct_write(data)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._fatal_error(exc, f"Fatal write error on {self._error_noun} transport")
                    return
                if n == len(data):
                    return
                if n:
                    data = memoryview(data)[n:]
            self._queue(data)
            self._submit_write()
        else:
            self._queue(data)
        self._maybe_pause_protocol()

    def _queue(self, data: Any) -> None:
        # The kernel reads queued data later: a mutable buffer the caller may
        # reuse is copied; bytes, and views of bytes, are immutable and queued as is.
        if type(data) is not bytes and not (type(data) is memoryview and type(data.obj) is bytes):
            data = bytes(data)
        self._wbuf.append(data)
        self._wbuf_size += len(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _on_write(self, res: int) -> None:
        if self._conn_lost:
            # Aborted or failed while the send was in flight.
            self._op_done_after_close()
            return
        if res < 0:
            if res == _ECANCELED:
                return
            exc = error_from_result(res)
            self._wbuf.clear()
            self._wbuf_size = 0
            self._fatal_error(exc, f"Fatal write error on {self._error_noun} transport")
            if self._empty_waiter is not None:
                self._empty_waiter.set_exception(exc)
            return
        self._consume(res)
        if self._wbuf:
            self._submit_write()
        self._maybe_resume_protocol()
        if self._wbuf:
            return
        if self._empty_waiter is not None:
            self._empty_waiter.set_result(None)
        if self._closing:
            self._call_connection_lost(None)
        elif self._eof:
            self._shutdown_write_now()

    def _consume(self, n: int) -> None:
        """Drop the first ``n`` bytes of the queue (they reached the kernel)."""
        wbuf = self._wbuf
        self._wbuf_size -= n
        while n:
            size = len(wbuf[0])
            if n >= size:
                wbuf.popleft()
                n -= size
            else:
                wbuf[0] = memoryview(wbuf[0])[n:]  # partial send: keep the tail, in order
                break

    def get_write_buffer_size(self) -> int:
        return self._wbuf_size

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = True
        if not self._wbuf:
            self._shutdown_write_now()

    def _shutdown_write_now(self) -> None:
        try:
            self._shutdown_write()
        except OSError as exc:
            self._fatal_error(exc, "Fatal error on shutdown of the write side")

    # -- sendfile support ------------------------------------------------------------

    def _make_empty_waiter(self) -> asyncio.Future[None]:
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._empty_waiter = self._loop.create_future()
        if not self._wbuf:
            self._empty_waiter.set_result(None)
        return self._empty_waiter

    def _reset_empty_waiter(self) -> None:
        self._empty_waiter = None
