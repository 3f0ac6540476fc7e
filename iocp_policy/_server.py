"""Servers: the accept loop on the completion port, and ``asyncio.Server``'s API.

One *listener* per listening socket keeps an accept outstanding: a multishot
accept where the backend has one (io_uring 5.19+: one SQE, one CQE per
connection while ``IORING_CQE_F_MORE`` says it stays armed), else a one-shot
accept re-armed after each connection.

The accept loop must outlive bad connections.  The stdlib proactor's dies on
one failed AcceptEx (gh-93821); here:

* errors that concern one connection only (``ECONNABORTED``, and the network
  errors Linux passes on from a pending connection: ``EPROTO``, ``ENETDOWN``,
  ``EHOSTUNREACH``...) are skipped and accepting goes on;
* running out of descriptors or memory (``EMFILE``, ``ENFILE``, ``ENOBUFS``,
  ``ENOMEM``) is reported once through the exception handler with the
  stdlib's message, and accepting pauses for ``ACCEPT_RETRY_DELAY`` (1 s)
  instead of spinning on an error that will repeat;
* anything else is reported and retried after the same delay.

A listening socket is closed only after its accept has completed or been
cancelled and reaped.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from asyncio import trsock
from collections.abc import Callable
from typing import Any

from ._port import in_current_context

logger = logging.getLogger("asyncio")

ACCEPT_RETRY_DELAY = 1.0
_ECANCELED = errno.ECANCELED
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Errors about one pending connection only: accept(2) says to treat them like EAGAIN.
_SKIP = frozenset(
    getattr(errno, name) for name in (
        "ECONNABORTED", "EAGAIN", "EWOULDBLOCK", "EINTR", "EPROTO", "ENETDOWN", "ENOPROTOOPT",
        "EHOSTDOWN", "ENONET", "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH", "EPERM", "ECONNRESET",
    ) if hasattr(errno, name)
)


def close_listening_socket(sock: socket.socket | int, cleanup: tuple[Any, int] | None) -> None:
    """Close a listening socket (or its detached fd); unlink its unix path if
    it is still the one we bound (same inode), as Python 3.13's
    ``cleanup_socket`` does."""
    if isinstance(sock, int):
        socket.close(sock)  # close(2) on POSIX, closesocket on Windows
    else:
        sock.close()
    if cleanup is None:
        return
    path, inode = cleanup
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)


class Listener:
    """Keeps an accept outstanding on one listening socket."""

    def __init__(self, loop: Any, server: Server, sock: socket.socket,
                 on_connection: Callable[[socket.socket, Any], None],
                 cleanup: tuple[Any, int] | None = None) -> None:
        self._loop = loop
        self._port = loop._port
        self._server = server
        self._sock: socket.socket | None = sock
        self._on_connection = on_connection
        self._cleanup = cleanup  # (path, inode) of a unix socket to unlink at close
        # Accepts run in the context of the task that started serving, as
        # the stdlib's reader callback does (connection_made & co. see it).
        self._op = self._port.op(sock, in_current_context(self._on_accept))
        self._raw_fd: int | None = None  # the fd of a socket detached by stop()
        self._multishot = True
        self._accepted = False
        self._stopped = False
        self._retry: asyncio.TimerHandle | None = None
        self._restart_when_idle = False

    def start(self) -> None:
        if self._stopped or self._op.active:
            return
        self._port.accept(self._op, self._multishot)

    def stop(self) -> None:
        """Stop accepting; the socket closes once the accept is reaped."""
        if self._stopped:
            return
        self._stopped = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._op.active:
            self._port.cancel(self._op)
            # The caller sees the socket closed now, as with the stdlib; the
            # fd itself stays open until the accept is reaped (closing it
            # under an operation in flight would let its number be reused).
            if self._sock is not None:
                self._raw_fd = self._sock.detach()
                self._sock = None
                self._loop._deferred_fds.add(self)
        else:
            self._close_socket()

    def _close_after_port(self) -> None:
        """The loop closed before the cancelled accept's completion was dispatched."""
        if not self._op.active:
            self._close_socket()

    def _close_socket(self) -> None:
        sock: socket.socket | int | None = self._sock
        if sock is None:
            sock, self._raw_fd = self._raw_fd, None
            self._loop._deferred_fds.discard(self)
        self._sock = None
        if sock is not None:
            close_listening_socket(sock, self._cleanup)

    def _on_accept(self, res: int) -> None:
        armed = self._op.active
        if res >= 0:
            if self._stopped:
                socket.close(res)  # accepted in the race with close(): nobody will serve it
            else:
                self._accepted = True
                conn = socket.socket(self._sock.family, self._sock.type,  # type: ignore[union-attr]
                                     self._sock.proto, fileno=res)  # type: ignore[union-attr]
                self._on_connection(conn, self._op.address)
        elif self._stopped or res == -_ECANCELED:
            pass
        else:
            self._on_error(-res, armed)
        if armed:
            return
        # The operation is over (one-shot, or the multishot ended).
        if self._stopped:
            self._close_socket()
        elif self._restart_when_idle:
            self._restart_when_idle = False
            self.start()
        elif self._retry is None:
            self.start()

    def _on_error(self, err: int, armed: bool) -> None:
        if err == errno.EINVAL and self._multishot and not self._accepted:
            self._multishot = False  # a kernel without multishot accept: one-shot from now on
            return
        if err in _SKIP:
            if self._loop.get_debug():
                logger.debug("%r: accept skipped a failed connection: %s", self._server, os.strerror(err))
            return
        exc = OSError(err, os.strerror(err))
        message = ("socket.accept() out of system resource" if err in _OUT_OF_RESOURCES
                   else "Error accepting a connection")
        self._loop.call_exception_handler({
            "message": message,
            "exception": exc,
            "socket": trsock.TransportSocket(self._sock) if self._sock is not None else None,
        })
        # Back off instead of spinning on an error that will repeat.
        if armed:
            self._port.cancel(self._op)
        self._retry = self._loop.call_later(ACCEPT_RETRY_DELAY, self._retry_accept)

    def _retry_accept(self) -> None:
        self._retry = None
        if self._stopped:
            return
        if self._op.active:
            self._restart_when_idle = True  # the cancelled accept is still being reaped
        else:
            self.start()


class Server(asyncio.AbstractServer):
    """``asyncio.Server``'s API.  ``wait_closed()`` has the 3.12.1+ meaning on
    every Python: it returns once the server is closed *and* every connection
    it accepted is gone; ``close_clients()``/``abort_clients()`` exist on all
    versions."""

    def __init__(self, loop: Any, sockets: list[socket.socket], protocol_factory: Callable[[], Any],
                 ssl_context: Any, backlog: int, ssl_handshake_timeout: float | None,
                 ssl_shutdown_timeout: float | None,
                 cleanup: dict[socket.socket, tuple[Any, int]] | None = None) -> None:
        self._loop = loop
        self._sockets: list[socket.socket] | None = sockets
        self._protocol_factory = protocol_factory
        self._ssl_context = ssl_context
        self._backlog = backlog
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._cleanup = cleanup or {}
        self._clients: set[Any] = set()
        self._waiters: list[asyncio.Future[None]] | None = []
        self._serving = False
        self._serving_forever_fut: asyncio.Future[None] | None = None
        self._listeners: list[Listener] = []

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__} sockets={self.sockets!r}>"

    def _attach(self, transport: Any = None) -> None:
        assert self._sockets is not None
        self._clients.add(transport)

    def _detach(self, transport: Any = None) -> None:
        self._clients.discard(transport)
        if not self._clients and self._sockets is None:
            self._wakeup()

    def _wakeup(self) -> None:
        waiters = self._waiters
        self._waiters = None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def _start_serving(self) -> None:
        if self._serving or self._sockets is None:
            return
        self._serving = True
        for sock in self._sockets:
            sock.listen(self._backlog)
            listener = Listener(self._loop, self, sock, self._accepted, self._cleanup.get(sock))
            self._listeners.append(listener)
            listener.start()

    def _accepted(self, conn: socket.socket, peer: Any) -> None:
        self._loop._accept_connection(self, conn, peer)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop  # type: ignore[no-any-return]

    def is_serving(self) -> bool:
        return self._serving

    @property
    def sockets(self) -> tuple[trsock.TransportSocket, ...]:
        if self._sockets is None:
            return ()
        return tuple(trsock.TransportSocket(s) for s in self._sockets)

    def close(self) -> None:
        sockets = self._sockets
        if sockets is None:
            return
        self._sockets = None
        for listener in self._listeners:
            listener.stop()
        self._listeners.clear()
        if not self._serving:  # never listened: the sockets are ours to close now
            for sock in sockets:
                close_listening_socket(sock, self._cleanup.get(sock))
        self._serving = False
        if self._serving_forever_fut is not None and not self._serving_forever_fut.done():
            self._serving_forever_fut.cancel()
            self._serving_forever_fut = None
        if not self._clients:
            self._wakeup()

    def close_clients(self) -> None:
        for transport in list(self._clients):
            transport.close()

    def abort_clients(self) -> None:
        for transport in list(self._clients):
            transport.abort()

    async def start_serving(self) -> None:
        self._start_serving()
        await asyncio.sleep(0)

    async def serve_forever(self) -> None:
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    async def wait_closed(self) -> None:
        if self._waiters is None:
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()
