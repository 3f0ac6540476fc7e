"""Connections and servers: create_connection (with happy eyeballs),
create_server, the unix variants, connect_accepted_socket, TLS and
start_tls (asyncio's own ``sslproto.SSLProtocol`` over our stream
transport), and loop.sendfile.

Argument checking and error messages follow the stdlib loop so that code
which relies on them (and tests that assert them) behave the same.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import functools
import itertools
import logging
import os
import socket
import stat
import sys
from asyncio import sslproto, staggered, trsock
from collections.abc import Callable, Iterable
from typing import Any

from ._server import Server
from ._sock import SockMixin
from ._stream import StreamTransport, _SendfileMode

try:
    import ssl as _ssl
except ImportError:  # pragma: no cover
    _ssl = None  # type: ignore[assignment]

logger = logging.getLogger("asyncio")

_HAS_IPV6 = hasattr(socket, "AF_INET6")
_SENDFILE_FALLBACK_BLOCK = 16384
_DEFAULT_UNIX_CLEANUP = sys.version_info >= (3, 13)  # cleanup_socket's default, as in the stdlib


def _check_ssl_socket(sock: Any) -> None:
    if _ssl is not None and isinstance(sock, _ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


def set_reuseport(sock: socket.socket) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port not supported by socket module")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        raise ValueError(
            "reuse_port not supported by socket module, SO_REUSEPORT defined but not implemented."
        ) from None


def interleave_addrinfos(addrinfos: list[Any], first_address_family_count: int = 1) -> list[Any]:
    """Reorder addresses so families alternate (RFC 8305), keeping the first
    ``first_address_family_count`` of the first family in front."""
    by_family: dict[int, list[Any]] = collections.OrderedDict()
    for info in addrinfos:
        by_family.setdefault(info[0], []).append(info)
    lists = list(by_family.values())
    reordered: list[Any] = []
    if first_address_family_count > 1:
        reordered.extend(lists[0][: first_address_family_count - 1])
        del lists[0][: first_address_family_count - 1]
    reordered.extend(a for a in itertools.chain.from_iterable(itertools.zip_longest(*lists)) if a is not None)
    return reordered


class _DrainWaiter(asyncio.Protocol):
    """Temporarily stands in for a transport's protocol during the sendfile
    fallback, to wait on write flow control of any transport (TLS too)."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._proto = transport.get_protocol()
        self._should_resume_reading = transport.is_reading()
        self._should_resume_writing = getattr(self._proto, "_protocol_paused", False)
        transport.pause_reading()
        transport.set_protocol(self)
        loop = transport._loop if hasattr(transport, "_loop") else asyncio.get_running_loop()
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        if self._should_resume_writing:
            self._waiter = loop.create_future()

    async def drain(self) -> None:
        if self._transport.is_closing():
            raise ConnectionError("Connection closed by peer")
        if self._waiter is not None:
            await self._waiter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raise RuntimeError("Invalid state: connection should have been established already.")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None:
            if exc is None:
                self._waiter.set_exception(ConnectionError("Connection is closed by peer"))
            else:
                self._waiter.set_exception(exc)
        self._proto.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._waiter is None:
            self._waiter = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._waiter is not None:
            self._waiter.set_result(None)
            self._waiter = None

    def data_received(self, data: bytes) -> None:
        raise RuntimeError("Invalid state: reading should be paused")

    def eof_received(self) -> bool:
        raise RuntimeError("Invalid state: reading should be paused")

    async def restore(self) -> None:
        self._transport.set_protocol(self._proto)
        if self._should_resume_reading:
            self._transport.resume_reading()
        if self._waiter is not None:
            self._waiter.cancel()  # the caller stopped waiting on a paused transport
        if self._should_resume_writing:
            self._proto.resume_writing()


class NetMixin(SockMixin):
    _transports: Any

    # -- transports ---------------------------------------------------------------

    def _ensure_fd_no_transport(self, sock: Any) -> None:
        fileno = sock if isinstance(sock, int) else sock.fileno()
        transport = self._transports.get(fileno)
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {sock!r} is used by transport {transport!r}")

    def _make_socket_transport(self, sock: socket.socket, protocol: asyncio.BaseProtocol,
                               waiter: asyncio.Future[Any] | None = None, extra: dict[str, Any] | None = None,
                               server: Any = None) -> StreamTransport:
        return StreamTransport(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(self, rawsock: socket.socket, protocol: asyncio.BaseProtocol, sslcontext: Any,
                            waiter: asyncio.Future[Any] | None = None, *, server_side: bool = False,
                            server_hostname: str | None = None, extra: dict[str, Any] | None = None,
                            server: Any = None, ssl_handshake_timeout: float | None = None,
                            ssl_shutdown_timeout: float | None = None) -> Any:
        ssl_protocol = sslproto.SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,  # type: ignore[arg-type]
            ssl_handshake_timeout=ssl_handshake_timeout,  # type: ignore[arg-type]  # typeshed says int
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        StreamTransport(self, rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    async def _create_connection_transport(
        self, sock: socket.socket, protocol_factory: Callable[[], Any], ssl: Any, server_hostname: str | None,
        server_side: bool = False, ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[Any, Any]:
        sock.setblocking(False)
        protocol = protocol_factory()
        waiter = self.create_future()
        if ssl:
            sslcontext = None if isinstance(ssl, bool) else ssl
            transport = self._make_ssl_transport(
                sock, protocol, sslcontext, waiter, server_side=server_side, server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
            )
        else:
            transport = self._make_socket_transport(sock, protocol, waiter)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol

    # -- create_connection ------------------------------------------------------

    async def create_connection(  # type: ignore[override]
        self, protocol_factory: Callable[[], Any], host: Any = None, port: Any = None, *,
        ssl: Any = None, family: int = 0, proto: int = 0, flags: int = 0, sock: Any = None,
        local_addr: Any = None, server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None, ssl_shutdown_timeout: float | None = None,
        happy_eyeballs_delay: float | None = None, interleave: int | None = None, all_errors: bool = False,
    ) -> tuple[Any, Any]:
        if server_hostname is not None and not ssl:
            raise ValueError("server_hostname is only meaningful with ssl")
        if server_hostname is None and ssl:
            if not host:
                raise ValueError("You must set server_hostname when using ssl without a host")
            server_hostname = host
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if sock is not None:
            _check_ssl_socket(sock)
        if happy_eyeballs_delay is not None and interleave is None:
            interleave = 1  # happy eyeballs interleaves families by default

        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            infos = await self._ensure_resolved((host, port), family=family, type=socket.SOCK_STREAM,
                                                proto=proto, flags=flags)
            if not infos:
                raise OSError("getaddrinfo() returned empty list")
            laddr_infos = None
            if local_addr is not None:
                laddr_infos = await self._ensure_resolved(local_addr, family=family, type=socket.SOCK_STREAM,
                                                          proto=proto, flags=flags)
                if not laddr_infos:
                    raise OSError("getaddrinfo() returned empty list")
            if interleave:
                infos = interleave_addrinfos(infos, interleave)
            exceptions: list[list[OSError]] = []
            if happy_eyeballs_delay is None:
                for addrinfo in infos:
                    try:
                        sock = await self._connect_sock(exceptions, addrinfo, laddr_infos)
                        break
                    except OSError:
                        continue
            else:
                sock, _, _ = await staggered.staggered_race(
                    (functools.partial(self._connect_sock, exceptions, addrinfo, laddr_infos)
                     for addrinfo in infos),
                    happy_eyeballs_delay,
                )
            if sock is None:
                flat = [exc for sub in exceptions for exc in sub]
                try:
                    if all_errors:
                        raise ExceptionGroup("create_connection failed", flat)
                    if len(flat) == 1:
                        raise flat[0]
                    model = str(flat[0])
                    if all(str(exc) == model for exc in flat):
                        raise flat[0]
                    raise OSError("Multiple exceptions: {}".format(", ".join(str(exc) for exc in flat)))
                finally:
                    flat = exceptions = None  # type: ignore[assignment]  # break reference cycles
        else:
            if sock is None:
                raise ValueError("host and port was not specified and no sock specified")
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A Stream Socket was expected, got {sock!r}")

        transport, protocol = await self._create_connection_transport(
            sock, protocol_factory, ssl, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        if self._debug:
            logger.debug("%r connected to %s:%r: (%r, %r)", sock, host, port, transport, protocol)
        return transport, protocol

    async def _connect_sock(self, exceptions: list[list[OSError]], addr_info: Any,
                            local_addr_infos: Iterable[Any] | None = None) -> socket.socket:
        mine: list[OSError] = []
        exceptions.append(mine)
        family, type_, proto, _, address = addr_info
        sock = None
        try:
            sock = socket.socket(family=family, type=type_, proto=proto)
            sock.setblocking(False)
            if local_addr_infos is not None:
                for lfamily, _, _, _, laddr in local_addr_infos:
                    if lfamily != family:
                        continue
                    try:
                        sock.bind(laddr)
                        break
                    except OSError as exc:
                        mine.append(OSError(
                            exc.errno,
                            f"error while attempting to bind on address {laddr!r}: {(exc.strerror or '').lower()}",
                        ))
                else:
                    if mine:
                        raise mine.pop()
                    raise OSError(f"no matching local address with family={family} found")
            await self.sock_connect(sock, address)
            return sock
        except OSError as exc:
            mine.append(exc)
            if sock is not None:
                sock.close()
            raise
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        finally:
            # The error lists reach this frame's exceptions, whose tracebacks
            # reach this frame: drop them or they live in a cycle (gh-124859).
            exceptions = mine = None  # type: ignore[assignment]

    # -- create_server ------------------------------------------------------------

    async def create_server(  # type: ignore[override]
        self, protocol_factory: Callable[[], Any], host: Any = None, port: Any = None, *,
        family: int = socket.AF_UNSPEC, flags: int = socket.AI_PASSIVE, sock: Any = None,
        backlog: int = 100, ssl: Any = None, reuse_address: bool | None = None,
        reuse_port: bool | None = None, keep_alive: bool | None = None,
        ssl_handshake_timeout: float | None = None, ssl_shutdown_timeout: float | None = None,
        start_serving: bool = True,
    ) -> Server:
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and ssl is None:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and ssl is None:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if sock is not None:
            _check_ssl_socket(sock)
        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            if reuse_address is None:
                reuse_address = os.name == "posix" and sys.platform != "cygwin"
            if host == "":
                hosts: list[Any] = [None]
            elif isinstance(host, str) or not isinstance(host, collections.abc.Iterable):
                hosts = [host]
            else:
                hosts = list(host)
            infos_per_host = await asyncio.gather(
                *(self._create_server_getaddrinfo(h, port, family=family, flags=flags) for h in hosts)
            )
            infos = set(itertools.chain.from_iterable(infos_per_host))
            sockets = self._bind_server_sockets(infos, reuse_address, reuse_port, keep_alive)
        else:
            if sock is None:
                raise ValueError("Neither host/port nor sock were specified")
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A Stream Socket was expected, got {sock!r}")
            sockets = [sock]
        for s in sockets:
            s.setblocking(False)
        server = Server(self, sockets, protocol_factory, ssl, backlog, ssl_handshake_timeout, ssl_shutdown_timeout)
        if start_serving:
            server._start_serving()
            await asyncio.sleep(0)
        if self._debug:
            logger.info("%r is serving", server)
        return server

    def _bind_server_sockets(self, infos: Iterable[Any], reuse_address: bool, reuse_port: bool | None,
                             keep_alive: bool | None) -> list[socket.socket]:
        sockets: list[socket.socket] = []
        infos = list(infos)
        completed = False
        try:
            for af, socktype, proto, _, sa in infos:
                try:
                    sock = socket.socket(af, socktype, proto)
                except OSError:
                    if self._debug:  # a family/type/protocol combination this host lacks
                        logger.warning("create_server() failed to create socket.socket(%r, %r, %r)",
                                       af, socktype, proto, exc_info=True)
                    continue
                sockets.append(sock)
                if reuse_address:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
                if reuse_port:
                    set_reuseport(sock)
                if keep_alive:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
                # One socket per family: no IPv4-mapped addresses on the IPv6 one.
                if _HAS_IPV6 and af == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
                try:
                    sock.bind(sa)
                except OSError as err:
                    msg = f"error while attempting to bind on address {sa!r}: {(err.strerror or '').lower()}"
                    if err.errno == errno.EADDRNOTAVAIL:
                        sockets.pop()  # this family is not enabled here (bpo-30945)
                        sock.close()
                        if self._debug:
                            logger.warning(msg)
                        continue
                    raise OSError(err.errno, msg) from None
            if not sockets:
                raise OSError(f"could not bind on any address out of {[info[4] for info in infos]!r}")
            completed = True
        finally:
            if not completed:
                for sock in sockets:
                    sock.close()
        return sockets

    async def _create_server_getaddrinfo(self, host: Any, port: Any, family: int, flags: int) -> list[Any]:
        infos = await self._ensure_resolved((host, port), family=family, type=socket.SOCK_STREAM, flags=flags)
        if not infos:
            raise OSError(f"getaddrinfo({host!r}) returned empty list")
        return infos

    def _accept_connection(self, server: Server, conn: socket.socket, peer: Any) -> None:
        """A listener accepted ``conn``: build its protocol and transport."""
        protocol = transport = None
        try:
            conn.setblocking(False)
            extra = {"peername": peer} if peer is not None else None
            protocol = server._protocol_factory()
            if server._ssl_context:
                waiter = self.create_future()
                transport = self._make_ssl_transport(
                    conn, protocol, server._ssl_context, waiter, server_side=True, extra=extra, server=server,
                    ssl_handshake_timeout=server._ssl_handshake_timeout,
                    ssl_shutdown_timeout=server._ssl_shutdown_timeout,
                )
                waiter.add_done_callback(functools.partial(self._ssl_accept_done, protocol, transport))
            else:
                transport = StreamTransport(self, conn, protocol, None, extra, server)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if transport is None:
                conn.close()
            else:
                transport.close()
            if self._debug:
                context: dict[str, Any] = {"message": "Error on transport creation for incoming connection",
                                           "exception": exc}
                if protocol is not None:
                    context["protocol"] = protocol
                if transport is not None:
                    context["transport"] = transport
                self.call_exception_handler(context)

    def _ssl_accept_done(self, protocol: Any, transport: Any, waiter: asyncio.Future[None]) -> None:
        if waiter.cancelled() or waiter.exception() is None:
            return
        transport.close()  # the TLS handshake failed: the protocol never saw the connection
        if self._debug:
            self.call_exception_handler({
                "message": "Error on transport creation for incoming connection",
                "exception": waiter.exception(), "protocol": protocol, "transport": transport,
            })

    async def connect_accepted_socket(  # type: ignore[override]
        self, protocol_factory: Callable[[], Any], sock: socket.socket, *, ssl: Any = None,
        ssl_handshake_timeout: float | None = None, ssl_shutdown_timeout: float | None = None,
    ) -> tuple[Any, Any]:
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A Stream Socket was expected, got {sock!r}")
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        _check_ssl_socket(sock)
        return await self._create_connection_transport(
            sock, protocol_factory, ssl, "", server_side=True,
            ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
        )

    # -- unix sockets ----------------------------------------------------------------

    async def create_unix_connection(  # type: ignore[override]
        self, protocol_factory: Callable[[], Any], path: Any = None, *, ssl: Any = None, sock: Any = None,
        server_hostname: str | None = None, ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[Any, Any]:
        if not hasattr(socket, "AF_UNIX"):
            raise NotImplementedError("AF_UNIX sockets are not available on this platform")
        if ssl:
            if server_hostname is None:
                raise ValueError("you have to pass server_hostname when using ssl")
        else:
            if server_hostname is not None:
                raise ValueError("server_hostname is only meaningful with ssl")
            if ssl_handshake_timeout is not None:
                raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
            if ssl_shutdown_timeout is not None:
                raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("no path and sock were specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
            sock.setblocking(False)
        return await self._create_connection_transport(
            sock, protocol_factory, ssl, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
        )

    async def create_unix_server(  # type: ignore[override]
        self, protocol_factory: Callable[[], Any], path: Any = None, *, sock: Any = None, backlog: int = 100,
        ssl: Any = None, ssl_handshake_timeout: float | None = None, ssl_shutdown_timeout: float | None = None,
        start_serving: bool = True, cleanup_socket: bool = _DEFAULT_UNIX_CLEANUP,
    ) -> Server:
        if not hasattr(socket, "AF_UNIX"):
            raise NotImplementedError("AF_UNIX sockets are not available on this platform")
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if path[0] not in (0, "\x00"):  # not an abstract socket: remove a stale one
                try:
                    if stat.S_ISSOCK(os.stat(path).st_mode):
                        os.remove(path)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    logger.error("Unable to check or remove stale UNIX socket %r: %r", path, err)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(errno.EADDRINUSE, f"Address {path!r} is already in use") from None
                raise
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("path was not specified, and no sock specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
        cleanup: dict[socket.socket, tuple[Any, int]] = {}
        if cleanup_socket:
            bound = sock.getsockname()
            if bound and bound[0] not in (0, "\x00"):
                try:
                    cleanup[sock] = (bound, os.stat(bound).st_ino)
                except FileNotFoundError:
                    pass
        sock.setblocking(False)
        server = Server(self, [sock], protocol_factory, ssl, backlog, ssl_handshake_timeout,
                        ssl_shutdown_timeout, cleanup)
        if start_serving:
            server._start_serving()
            await asyncio.sleep(0)
        return server

    # -- TLS upgrade ---------------------------------------------------------------------

    async def start_tls(  # type: ignore[override]
        self, transport: Any, protocol: Any, sslcontext: Any, *, server_side: bool = False,
        server_hostname: str | None = None, ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> Any:
        if _ssl is None:
            raise RuntimeError("Python ssl module is not available")
        if not isinstance(sslcontext, _ssl.SSLContext):
            raise TypeError(f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}")
        if not getattr(transport, "_start_tls_compatible", False):
            raise TypeError(f"transport {transport!r} is not supported by start_tls()")
        waiter = self.create_future()
        ssl_protocol = sslproto.SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,  # type: ignore[arg-type]  # typeshed says int
            ssl_shutdown_timeout=ssl_shutdown_timeout, call_connection_made=False,
        )
        # Pause first so nothing reaches the TLS protocol before connection_made().
        transport.pause_reading()
        transport.set_protocol(ssl_protocol)
        conmade_cb = self.call_soon(ssl_protocol.connection_made, transport)
        resume_cb = self.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            conmade_cb.cancel()
            resume_cb.cancel()
            raise
        return ssl_protocol._app_transport

    # -- sendfile over a transport ------------------------------------------------------

    async def sendfile(self, transport: Any, file: Any, offset: int = 0, count: int | None = None,  # type: ignore[override]
                       *, fallback: bool = True) -> int:
        if transport.is_closing():
            raise RuntimeError("Transport is closing")
        mode = getattr(transport, "_sendfile_compatible", _SendfileMode.UNSUPPORTED)
        if mode is _SendfileMode.UNSUPPORTED:
            raise RuntimeError(f"sendfile is not supported for transport {transport!r}")
        if mode is _SendfileMode.TRY_NATIVE:
            try:
                return await self._sendfile_native(transport, file, offset, count)
            except asyncio.SendfileNotAvailableError:
                if not fallback:
                    raise
        if not fallback:
            raise RuntimeError(
                f"fallback is disabled and native sendfile is not supported for transport {transport!r}"
            )
        self._check_sendfile_params(transport.get_extra_info("socket") or _StreamLike(), file, offset, count)
        return await self._sendfile_fallback(transport, file, offset, count)

    async def _sendfile_native(self, transport: StreamTransport, file: Any, offset: int,
                               count: int | None) -> int:
        """Zero-copy: reading paused, the write queue drained, then the
        socket is handed to sock_sendfile's native path."""
        sock = transport._sock
        self._check_sendfile_params(sock, file, offset, count)
        resume_reading = transport.is_reading()
        transport.pause_reading()
        await transport._make_empty_waiter()
        try:
            return await self._sock_sendfile_native(sock, file, offset, count, transport_owned=True)
        finally:
            transport._reset_empty_waiter()
            if resume_reading:
                transport.resume_reading()

    async def _sendfile_fallback(self, transport: Any, file: Any, offset: int, count: int | None) -> int:
        if offset:
            file.seek(offset)
        blocksize = min(count, _SENDFILE_FALLBACK_BLOCK) if count else _SENDFILE_FALLBACK_BLOCK
        buf = bytearray(blocksize)
        total = 0
        drainer = _DrainWaiter(transport)
        try:
            while True:
                if count:
                    blocksize = min(count - total, blocksize)
                    if blocksize <= 0:
                        return total
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    return total
                await drainer.drain()
                transport.write(bytes(view[:read]))
                total += read
        finally:
            if total > 0 and hasattr(file, "seek"):
                file.seek(offset + total)
            await drainer.restore()


class _StreamLike:
    """Stands in for a socket in the parameter checks of transports without one."""

    type = socket.SOCK_STREAM


__all__ = ["NetMixin", "interleave_addrinfos", "trsock"]
