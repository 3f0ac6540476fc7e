"""Name resolution: getaddrinfo/getnameinfo in the default executor, with a
shortcut for addresses that are already numeric (no thread hop for
``('127.0.0.1', 8080)``), matching what the stdlib loop accepts."""

from __future__ import annotations

import socket
from typing import Any

from ._core import LoopCore

_HAS_IPV6 = hasattr(socket, "AF_INET6")

AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]


def numeric_addrinfo(host: Any, port: Any, family: int, type: int, proto: int,
                     flowinfo: int = 0, scopeid: int = 0) -> AddrInfo | None:
    """The getaddrinfo() entry for a numeric host, or None if resolving is needed."""
    if host is None or proto not in (0, socket.IPPROTO_TCP, socket.IPPROTO_UDP):
        return None
    if type == socket.SOCK_STREAM:
        proto = socket.IPPROTO_TCP
    elif type == socket.SOCK_DGRAM:
        proto = socket.IPPROTO_UDP
    else:
        return None
    if port is None or port == b"" or port == "":
        port = 0
    else:
        try:
            port = int(port)
        except (TypeError, ValueError):
            return None  # a service name: getaddrinfo must look it up
    if family == socket.AF_UNSPEC:
        candidates: list[int] = [socket.AF_INET, socket.AF_INET6] if _HAS_IPV6 else [socket.AF_INET]
    else:
        candidates = [family]
    if isinstance(host, bytes):
        host = host.decode("idna")
    if "%" in host:
        return None  # scoped IPv6 literal: the scope needs resolving
    for af in candidates:
        try:
            socket.inet_pton(af, host)
        except OSError:
            continue
        if _HAS_IPV6 and af == socket.AF_INET6:
            return af, type, proto, "", (host, port, flowinfo, scopeid)
        return af, type, proto, "", (host, port)
    return None


class DNSMixin(LoopCore):
    async def getaddrinfo(self, host: Any, port: Any, *, family: int = 0, type: int = 0,
                          proto: int = 0, flags: int = 0) -> list[Any]:
        return await self.run_in_executor(None, socket.getaddrinfo, host, port, family, type, proto, flags)

    async def getnameinfo(self, sockaddr: tuple[Any, ...], flags: int = 0) -> tuple[str, str]:
        return await self.run_in_executor(None, socket.getnameinfo, sockaddr, flags)

    async def _ensure_resolved(self, address: tuple[Any, ...], *, family: int = 0,
                               type: int = socket.SOCK_STREAM, proto: int = 0,
                               flags: int = 0) -> list[AddrInfo]:
        host, port = address[:2]
        info = numeric_addrinfo(host, port, family, type, proto, *address[2:])
        if info is not None:
            return [info]
        return await self.getaddrinfo(host, port, family=family, type=type, proto=proto, flags=flags)
