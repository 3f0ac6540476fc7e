"""Pipe transports: ``connect_read_pipe`` and ``connect_write_pipe``.

How pipes behave (what this module relies on)
=============================================

Pipes, FIFOs, pseudo-terminals and other character devices are byte
streams with no peer address and no ``shutdown()``.  What matters here:

* A read returns 0 (EOF) once every writer has closed its end.  A PTY
  master is the exception: on Linux, once the slave side is closed the
  master's read fails with ``EIO`` instead, which the stdlib (and so this
  module) treats as a quiet end: ``connection_lost(OSError(EIO))`` without
  logging an error.
* A write to a pipe whose readers are all gone fails with ``EPIPE`` (the
  interpreter ignores ``SIGPIPE``), and ``poll(2)`` on the write end
  reports ``POLLERR`` from then on.  ``POLLERR`` and ``POLLHUP`` are always
  reported, whatever events were asked for, and the write end of a pipe never
  reports ``POLLIN``.  So "poll the write end for ``POLLIN``" completes
  exactly when the reader goes away: that is how the write transport notices
  it without writing (the stdlib does the same with ``add_reader`` on the
  write fd).  For a socket used as a pipe the same poll completes on
  ``POLLIN``/``POLLHUP``; character devices are not watched (a tty's write
  end is readable for input), exactly as in the stdlib.
* The descriptor is switched to ``O_NONBLOCK``, as the stdlib does: the
  caller can observe it, and the direct ``write()`` fast path needs it.
  io_uring may answer a READ/WRITE on such a file with ``-EAGAIN`` instead of
  waiting (kernels before about 6.1); the ring turns that back into a wait
  (poll, then resubmit: see ``_uring.c``), so transports never see it.

Everything else is the stream transport's machinery (``_stream.py``), reused
through its hooks: one read outstanding (``port.read``), one write in flight
with the queue behind it (``port.write``; ``write(2)`` takes one buffer, so
small queued chunks are joined before a write), flow control counting bytes
in flight, ordered close, and the fd closed only once both operations have
been reaped.  The semantics are those of the stdlib's unix pipe transports,
including the ones that differ from sockets: EOF always closes a read pipe
(``eof_received()`` is called from the loop and its result ignored), a
write pipe's ``write_eof()`` is ``close()``, and writing to a closing write
pipe drops the data (with a warning after a few times) instead of raising.
The read pipe has no write-side methods at all and the write pipe's
read-side methods are asyncio's abstract ones, exactly as in the stdlib.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import sys
from collections.abc import Callable
from typing import Any

from ._net import NetMixin
from ._port import POLLIN, require_pipes
from ._stream import StreamTransport, _SendfileMode

logger = logging.getLogger("asyncio")

# Windows pipes are overlapped handles, not descriptors: nothing to fstat or
# switch to O_NONBLOCK, no write(2) to try directly, and the port's own
# errors (ERROR_BROKEN_PIPE) report a lost reader.  The stdlib's proactor
# pipes make no such checks either.
_POSIX = os.name == "posix"
_LOG_THRESHOLD_FOR_CONNLOST_WRITES = 5
_JOIN_LIMIT = 256 * 1024  # queued chunks joined into one write(2), at most this many bytes


class _Absent:
    """A method the stdlib's pipe transport of this direction does not have:
    ``hasattr()`` is false and calling it raises ``AttributeError``, as there."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        cls = objtype if objtype is not None else type(obj)
        raise AttributeError(f"{cls.__name__!r} object has no attribute {self._name!r}")


def _pipe_message(message: str) -> str:
    # The stream transport words its errors for sockets (until it reads
    # _error_noun: then this is a no-op).
    return message.replace("socket transport", "pipe transport")


class _PipeTransport(StreamTransport):
    """What both directions share: the file checks, O_NONBLOCK, extra info."""

    _start_tls_compatible = False
    _sendfile_compatible = _SendfileMode.UNSUPPORTED
    _error_noun = "pipe"  # for the stream transport's error messages
    direct_send = _POSIX
    _watch_reader = False

    def __init__(self, loop: Any, pipe: Any, protocol: asyncio.BaseProtocol,
                 waiter: asyncio.Future[Any] | None = None, extra: dict[str, Any] | None = None) -> None:
        if _POSIX:
            self._check_file_type(os.fstat(pipe.fileno()).st_mode)
        super().__init__(loop, pipe, protocol, waiter, extra)

    def _check_file_type(self, mode: int) -> None:
        raise NotImplementedError  # pragma: no cover

    # -- stream transport hooks --------------------------------------------------

    def _init_extra(self, sock: Any) -> None:
        self._extra["pipe"] = sock

    def _prepare(self) -> None:
        if sys.platform != "win32":  # Windows pipe handles are overlapped, not O_NONBLOCK
            os.set_blocking(self._sock_fd, False)

    def __repr__(self) -> str:
        info = [type(self).__name__]
        pipe = getattr(self, "_sock", None)
        if pipe is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={getattr(self, '_sock_fd', None)}")
        if pipe is not None:
            busy = self._rop.active or self._wop.active
            info.append("polling" if busy else "idle")
        return "<{}>".format(" ".join(info))


class ReadPipeTransport(_PipeTransport):
    """``asyncio.ReadTransport`` over a pipe, FIFO, socket or character device."""

    def _check_file_type(self, mode: int) -> None:
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            raise ValueError("Pipe transport is for pipes/sockets only.")

    def _submit_read(self) -> None:
        # Always into fresh bytes: a BufferedProtocol is fed by copying them
        # into its buffers (the stream transport's start_tls path), so both
        # protocol kinds work (the stdlib only calls data_received).
        self._read_buf = None
        self._port.read(self._rop, self.max_size)  # sized like the stream transport's receives

    def _on_eof(self) -> None:
        # A read pipe is done at EOF whatever eof_received() says, and the
        # stdlib calls it from the loop, not from the read completion.
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        self._read_eof = True
        self._closing = True
        self._loop.call_soon(self._protocol.eof_received)
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, None)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on pipe transport") -> None:
        # EIO is how a PTY master learns that the slave side closed: quiet.
        # Any other error is reported (unlike a socket's or a write pipe's).
        if isinstance(exc, OSError) and exc.errno == errno.EIO:
            if self._loop.get_debug():
                logger.debug("%r: %s", self, _pipe_message(message), exc_info=True)
        else:
            self._loop.call_exception_handler({
                "message": _pipe_message(message),
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            })
        self._force_close(exc)

    # Not a write transport.
    write = _Absent()  # type: ignore[assignment]
    writelines = _Absent()  # type: ignore[assignment]
    write_eof = _Absent()  # type: ignore[assignment]
    can_write_eof = _Absent()  # type: ignore[assignment]
    abort = _Absent()  # type: ignore[assignment]
    get_write_buffer_size = _Absent()  # type: ignore[assignment]
    get_write_buffer_limits = _Absent()  # type: ignore[assignment]
    set_write_buffer_limits = _Absent()  # type: ignore[assignment]


class WritePipeTransport(_PipeTransport):
    """``asyncio.WriteTransport`` over a pipe, FIFO, socket or character device."""

    _dropped_writes = 0

    def _check_file_type(self, mode: int) -> None:
        if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            raise ValueError("Pipe transport is only for pipes, sockets and character devices")
        # Watch for the reader going away on pipes and sockets only.
        self._watch_reader = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)

    # -- noticing the reader close (the read op slot is free on a write pipe) --------

    def _start_reading(self) -> None:
        if self._watch_reader and not self._closing and not self._rop.active:
            self._port.poll(self._rop, POLLIN)

    def _on_read(self, res: int) -> None:
        if self._closing:
            self._op_done_after_close()
            return
        # POLLERR/POLLHUP: no reader is left (or the watch itself failed).
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        self._force_close(BrokenPipeError() if self._wbuf else None)

    # -- writing -----------------------------------------------------------------

    def write(self, data: Any) -> None:
        if self._closing and isinstance(data, (bytes, bytearray, memoryview)):
            # close(), write_eof(), abort() or a lost reader: dropped, as the stdlib does.
            if len(data):
                if self._dropped_writes >= _LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                    logger.warning("pipe closed by peer or os.write(pipe, data) raised exception.")
                self._dropped_writes += 1
            return
        super().write(data)

    def _direct_write(self, data: Any) -> int:
        return os.write(self._sock_fd, data)

    def _submit_write(self) -> None:
        wbuf = self._wbuf
        if len(wbuf) > 1 and len(wbuf[0]) < _JOIN_LIMIT:
            # write(2) takes one buffer: join the small chunks at the head of
            # the queue (the write in flight must cover a prefix of it).
            parts = [wbuf.popleft()]
            size = len(parts[0])
            while wbuf and size + len(wbuf[0]) <= _JOIN_LIMIT:
                size += len(wbuf[0])
                parts.append(wbuf.popleft())
            wbuf.appendleft(b"".join(parts))
        self._port.write(self._wop, wbuf[0])

    def write_eof(self) -> None:
        # A pipe has no half-close: the write end is closed once drained.
        self.close()

    def _shutdown_write(self) -> None:
        self.close()

    # The stdlib's write pipe is an asyncio.Transport whose read side is the
    # abstract one: these raise NotImplementedError there, and so here.
    is_reading = asyncio.ReadTransport.is_reading
    pause_reading = asyncio.ReadTransport.pause_reading
    resume_reading = asyncio.ReadTransport.resume_reading

    def __repr__(self) -> str:
        text = super().__repr__()
        if getattr(self, "_sock", None) is None:
            return text
        return f"{text[:-1]} bufsize={self.get_write_buffer_size()}>"


class PipeMixin(NetMixin):
    """``connect_read_pipe`` / ``connect_write_pipe``."""

    def _make_read_pipe_transport(self, pipe: Any, protocol: asyncio.BaseProtocol,
                                  waiter: asyncio.Future[Any] | None = None,
                                  extra: dict[str, Any] | None = None) -> ReadPipeTransport:
        return ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe: Any, protocol: asyncio.BaseProtocol,
                                   waiter: asyncio.Future[Any] | None = None,
                                   extra: dict[str, Any] | None = None) -> WritePipeTransport:
        return WritePipeTransport(self, pipe, protocol, waiter, extra)

    async def connect_read_pipe(self, protocol_factory: Callable[[], Any],  # type: ignore[override]
                                pipe: Any) -> tuple[Any, Any]:
        return await self._connect_pipe(self._make_read_pipe_transport, protocol_factory, pipe, "Read")

    async def connect_write_pipe(self, protocol_factory: Callable[[], Any],  # type: ignore[override]
                                 pipe: Any) -> tuple[Any, Any]:
        return await self._connect_pipe(self._make_write_pipe_transport, protocol_factory, pipe, "Write")

    async def _connect_pipe(self, make: Callable[..., Any], protocol_factory: Callable[[], Any],
                            pipe: Any, direction: str) -> tuple[Any, Any]:
        require_pipes(self._port, f"connect_{direction.lower()}_pipe")
        protocol = protocol_factory()
        waiter = self.create_future()
        transport = make(pipe, protocol, waiter)
        try:
            await waiter  # connection_made has run
        except BaseException:
            transport.close()
            raise
        if self._debug:
            logger.debug("%s pipe %r connected: (%r, %r)", direction, pipe.fileno(), transport, protocol)
        return transport, protocol
