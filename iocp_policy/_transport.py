"""What every transport on the completion port shares: a read op and a write
op bound to one file descriptor, and the ordered way of closing.

The order, which is asyncio's contract plus the completion port's rule:

1. ``close()``: no more reads are delivered (the receive in flight is
   cancelled); queued writes still drain; then ``connection_lost(None)``.
   ``abort()``/a fatal error: queued writes are dropped too, and
   ``connection_lost(exc)`` is scheduled at once.
2. ``connection_lost`` runs exactly once, from the loop, after every data
   callback that was already due.
3. The fd is closed only when neither op is left in the kernel: a completion
   for a cancelled op still arrives, and the kernel may touch the op's buffer
   or fd until then.  Whichever comes last, ``connection_lost`` or the final
   completion, closes the fd.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import warnings
from asyncio import trsock
from collections.abc import Callable
from typing import Any

from ._flow import FlowControl
from ._port import in_current_context

logger = logging.getLogger("asyncio")


def set_result_unless_cancelled(fut: asyncio.Future[Any], result: Any) -> None:
    if not fut.cancelled():
        fut.set_result(result)


class PortTransport(FlowControl):
    """Lifecycle shared by stream, datagram and pipe transports."""

    _loop: Any
    _protocol: Any
    _extra: dict[str, Any]  # set by asyncio.BaseTransport.__init__

    def __init__(self, loop: Any, fileobj: Any, fd: int, server: Any = None) -> None:
        self._loop = loop
        self._port = loop._port
        self._sock: Any = fileobj
        self._sock_fd = fd
        self._server = server
        self._protocol = None
        self._protocol_connected = False
        self._closing = False  # close() or abort(): no more reading
        self._conn_lost = 0  # connection_lost scheduled; writes are refused
        self._fd_closed = False
        self._raw_fd: int | None = None  # the fd of a socket detached at connection_lost
        # Completions run in (a copy of) the context of the task that made the
        # transport, as the stdlib's reader/writer callbacks do: protocol
        # callbacks, and what they schedule, see that task's context vars.
        self._rop = self._port.op(fileobj, in_current_context(self._on_read))
        self._wop = self._port.op(fileobj, in_current_context(self._on_write))

    # -- what each kind of transport provides ----------------------------------

    def _on_read(self, res: int) -> None:
        raise NotImplementedError  # pragma: no cover

    def _on_write(self, res: int) -> None:
        raise NotImplementedError  # pragma: no cover

    def _writes_pending(self) -> bool:
        raise NotImplementedError  # pragma: no cover

    def _drop_writes(self) -> None:
        raise NotImplementedError  # pragma: no cover

    def _close_fd(self) -> None:
        if self._raw_fd is not None:
            socket.close(self._raw_fd)  # close(2) on POSIX, closesocket on Windows
            self._raw_fd = None
        else:
            self._sock.close()

    # -- shared -----------------------------------------------------------------

    def _init_socket_extra(self, sock: Any, extra: dict[str, Any]) -> None:
        extra["socket"] = trsock.TransportSocket(sock)
        try:
            extra["sockname"] = sock.getsockname()
        except OSError:
            extra["sockname"] = None
        if "peername" not in extra:
            try:
                extra["peername"] = sock.getpeername()
            except OSError:
                extra["peername"] = None

    def get_protocol(self) -> Any:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def _stop_reading(self) -> None:
        """Hook: cancel the receive in flight and forget held results."""
        if self._rop.active:
            self._port.cancel(self._rop)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self._writes_pending():
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None)

    def abort(self) -> None:
        self._force_close(None)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        # OSErrors (resets, broken pipes...) are the peer's doing, not a bug:
        # like the stdlib, only log them in debug mode.
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler({
                "message": message,
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            })
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        self._drop_writes()
        if self._wop.active:
            self._port.cancel(self._wop)
        if not self._closing:
            self._closing = True
            self._stop_reading()
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        if self._protocol is None:
            return  # already done (a drained close racing an abort)
        self._conn_lost = max(self._conn_lost, 1)
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            self._protocol = None
            server = self._server
            if server is not None:
                server._detach(self)
                self._server = None
            self._release_fd()

    def _op_done_after_close(self) -> None:
        """A final completion that arrived after connection_lost was scheduled."""
        if self._protocol is None:
            self._release_fd()

    def _release_fd(self) -> None:
        """Close the fd once no operation on it is left in the kernel."""
        if self._fd_closed:
            return
        if self._rop.active or self._wop.active:
            # The protocol is told the connection is lost and a caller
            # holding the socket sees it closed, as with the stdlib; the fd
            # itself stays open until the cancelled operations are reaped.
            if self._raw_fd is None and isinstance(self._sock, socket.socket):
                self._raw_fd = self._sock.detach()
            self._loop._deferred_fds.add(self)
            return
        self._fd_closed = True
        self._loop._deferred_fds.discard(self)
        self._close_fd()
        self._sock = None

    def _close_after_port(self) -> None:
        """The loop closed before our ops' final completions were dispatched."""
        if not self._fd_closed and not self._rop.active and not self._wop.active:
            self._fd_closed = True
            self._close_fd()
            self._sock = None

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None and not self._fd_closed:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            # Only reachable with no operation in flight (the port would hold us).
            self._fd_closed = True
            self._close_fd()
