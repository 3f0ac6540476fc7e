"""Datagram transports and ``create_datagram_endpoint``.

Receiving keeps one ``recvfrom`` outstanding on the port (io_uring:
``IORING_OP_RECVMSG`` with the peer address decoded from the op's own
``sockaddr_storage``) and re-arms it after each datagram.  A failed receive
(e.g. ``ECONNREFUSED`` from an ICMP error on a connected socket) goes to
``error_received`` and receiving continues, as in the stdlib.

Sending tries ``sendto()`` directly (a datagram either fits in the socket
buffer or it does not); datagrams that would block are queued and flushed
each time the port reports the socket writable.  Buffer accounting follows
the running Python: from 3.13 each queued datagram also counts 8 bytes of
header and empty datagrams are sent; earlier versions drop empty ones.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from ._net import set_reuseport
from ._port import POLLOUT, error_from_result
from ._transport import PortTransport, set_result_unless_cancelled

logger = logging.getLogger("asyncio")

_ECANCELED = -errno.ECANCELED
_LOG_THRESHOLD_FOR_CONNLOST_WRITES = 5
_PY313 = sys.version_info >= (3, 13)
_HEADER = 8 if _PY313 else 0
# The stdlib's wording changed in 3.13; code and tests match on it.
_NOT_DGRAM = "A datagram socket was expected" if sys.version_info >= (3, 13) else "A UDP Socket was expected"


class DatagramTransport(PortTransport, asyncio.DatagramTransport):
    max_size = 256 * 1024  # unix datagrams can be this large
    # An IP datagram carries at most 65,507 bytes, so 64 KiB never truncates,
    # and stays under glibc's mmap threshold (no mmap/munmap per datagram).
    inet_size = 64 * 1024

    def __init__(self, loop: Any, sock: socket.socket, protocol: asyncio.BaseProtocol, address: Any = None,
                 waiter: asyncio.Future[Any] | None = None, extra: dict[str, Any] | None = None) -> None:
        asyncio.DatagramTransport.__init__(self, extra)
        PortTransport.__init__(self, loop, sock, sock.fileno())
        self._init_socket_extra(sock, self._extra)
        self._protocol = protocol
        self._protocol_connected = True
        self._address = address
        self._buffer: deque[tuple[bytes, Any]] = deque()
        self._buffer_size = 0
        self._rsize = self.inet_size if sock.family in (socket.AF_INET, socket.AF_INET6) else self.max_size
        loop._transports[self._sock_fd] = self
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(set_result_unless_cancelled, waiter, None)

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else "closing" if self._closing else "open"
        return f"<{self.__class__.__name__} fd={self._sock_fd} {state} bufsize={self._buffer_size}>"

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._protocol_connected = True

    def get_write_buffer_size(self) -> int:
        return self._buffer_size

    def _writes_pending(self) -> bool:
        return bool(self._buffer)

    def _drop_writes(self) -> None:
        self._buffer.clear()
        self._buffer_size = 0

    # -- receiving ---------------------------------------------------------------

    def _start_reading(self) -> None:
        if not self._closing and not self._rop.active:
            self._port.recvfrom(self._rop, self._rsize)

    def _on_read(self, res: int) -> None:
        if self._closing:
            self._op_done_after_close()
            return
        if res >= 0:
            data, addr = self._rop.data or b"", self._rop.address
            try:
                self._protocol.datagram_received(data, addr)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal read error on datagram transport")
                return
        elif res != _ECANCELED:
            self._protocol.error_received(error_from_result(res))
        self._start_reading()

    # -- sending ------------------------------------------------------------------

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if not data and not _PY313:
            return
        if self._address:
            if addr not in (None, self._address):
                raise ValueError(f"Invalid address: must be None or {self._address}")
            addr = self._address
        if self._conn_lost:
            # After close()/abort(), as write() on a stream transport: dropped
            # (the stdlib only handles the connected case and otherwise raises
            # AttributeError from its closed socket; uvloop drops it).
            if self._conn_lost >= _LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        if not self._buffer:
            try:
                if self._extra["peername"]:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._port.poll(self._wop, POLLOUT)
            except OSError as exc:
                self._protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on datagram transport")
                return
        self._buffer.append((bytes(data), addr))  # immutable copy: it is sent later
        self._buffer_size += len(data) + _HEADER
        self._maybe_pause_protocol()

    def _on_write(self, res: int) -> None:
        """The socket turned writable: flush queued datagrams."""
        if self._conn_lost:
            self._op_done_after_close()
            return
        if res < 0 and res != _ECANCELED:
            self._protocol.error_received(error_from_result(res))
        while self._buffer:
            data, addr = self._buffer.popleft()
            self._buffer_size -= len(data) + _HEADER
            try:
                if self._extra["peername"]:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                self._buffer.appendleft((data, addr))
                self._buffer_size += len(data) + _HEADER
                break
            except OSError as exc:
                self._protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on datagram transport")
                return
        self._maybe_resume_protocol()  # may queue more
        if self._buffer:
            if not self._wop.active:
                self._port.poll(self._wop, POLLOUT)
        elif self._closing:
            self._call_connection_lost(None)

    def abort(self) -> None:
        self._force_close(None)


def _check_unix_datagram_addrs(local_addr: Any, remote_addr: Any) -> None:
    for addr in (local_addr, remote_addr):
        if addr is not None and not isinstance(addr, str):
            raise TypeError("string is expected")
    if local_addr and local_addr[0] not in (0, "\x00"):
        try:
            if stat.S_ISSOCK(os.stat(local_addr).st_mode):
                os.remove(local_addr)
        except FileNotFoundError:
            pass
        except OSError as err:
            logger.error("Unable to check or remove stale UNIX socket %r: %r", local_addr, err)


class DatagramMixin:
    """``create_datagram_endpoint``; mixed into the loop after NetMixin."""

    _debug: bool

    async def create_datagram_endpoint(  # type: ignore[override]
        self, protocol_factory: Callable[[], Any], local_addr: Any = None, remote_addr: Any = None, *,
        family: int = 0, proto: int = 0, flags: int = 0, reuse_port: bool | None = None,
        allow_broadcast: bool | None = None, sock: Any = None,
    ) -> tuple[Any, Any]:
        loop: Any = self
        if sock is not None:
            if sock.type == socket.SOCK_STREAM:
                raise ValueError(f"{_NOT_DGRAM}, got {sock!r}")
            if local_addr or remote_addr or family or proto or flags or reuse_port or allow_broadcast:
                opts = dict(local_addr=local_addr, remote_addr=remote_addr, family=family, proto=proto,
                            flags=flags, reuse_port=reuse_port, allow_broadcast=allow_broadcast)
                problems = ", ".join(f"{k}={v}" for k, v in opts.items() if v)
                raise ValueError(
                    f"socket modifier keyword arguments can not be used when sock is specified. ({problems})"
                )
            sock.setblocking(False)
            r_addr = None
        else:
            if not (local_addr or remote_addr):
                if family == 0:
                    raise ValueError("unexpected address family")
                addr_pairs_info: list[Any] = [((family, proto), (None, None))]
            elif hasattr(socket, "AF_UNIX") and family == socket.AF_UNIX:
                _check_unix_datagram_addrs(local_addr, remote_addr)
                addr_pairs_info = [((family, proto), (local_addr, remote_addr))]
            else:
                addr_pairs_info = await self._datagram_addr_pairs(local_addr, remote_addr, family, proto, flags)
            exceptions: list[OSError] = []
            for (fam, pro), (local_address, remote_address) in addr_pairs_info:
                sock = None
                r_addr = None
                try:
                    sock = socket.socket(family=fam, type=socket.SOCK_DGRAM, proto=pro)
                    if reuse_port:
                        set_reuseport(sock)
                    if allow_broadcast:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                    sock.setblocking(False)
                    if local_addr:
                        sock.bind(local_address)
                    if remote_addr:
                        if not allow_broadcast:
                            await loop.sock_connect(sock, remote_address)
                        r_addr = remote_address
                except OSError as exc:
                    if sock is not None:
                        sock.close()
                    exceptions.append(exc)
                except BaseException:
                    if sock is not None:
                        sock.close()
                    raise
                else:
                    break
            else:
                raise exceptions[0]

        protocol = protocol_factory()
        waiter = loop.create_future()
        transport = DatagramTransport(loop, sock, protocol, r_addr, waiter)
        if self._debug:
            logger.debug("Datagram endpoint local_addr=%r remote_addr=%r created: (%r, %r)",
                         local_addr, remote_addr, transport, protocol)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol

    async def _datagram_addr_pairs(self, local_addr: Any, remote_addr: Any, family: int, proto: int,
                                   flags: int) -> list[Any]:
        """Pair local and remote addresses by (family, proto), in resolution order."""
        loop: Any = self
        addr_infos: dict[tuple[int, int], list[Any]] = {}
        for idx, addr in ((0, local_addr), (1, remote_addr)):
            if addr is None:
                continue
            if not (isinstance(addr, tuple) and len(addr) == 2):
                raise TypeError("2-tuple is expected")
            infos = await loop._ensure_resolved(addr, family=family, type=socket.SOCK_DGRAM,
                                                proto=proto, flags=flags)
            if not infos:
                raise OSError("getaddrinfo() returned empty list")
            for fam, _, pro, _, address in infos:
                addr_infos.setdefault((fam, pro), [None, None])[idx] = address
        pairs = [
            (key, pair) for key, pair in addr_infos.items()
            if not ((local_addr and pair[0] is None) or (remote_addr and pair[1] is None))
        ]
        if not pairs:
            raise ValueError("can not get address information")
        return pairs
