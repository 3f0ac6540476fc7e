"""The accept loop survives per-connection errors and descriptor exhaustion."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

import pytest

import iocp_policy

CHILD = r'''
import asyncio, json, os, resource, socket, sys
import iocp_policy

async def main():
    loop = asyncio.get_running_loop()
    reports = []
    loop.set_exception_handler(lambda lp, ctx: reports.append(ctx["message"]))
    accepted = []

    async def handle(reader, writer):
        accepted.append(writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=100, start_serving=False)
    addr = server.sockets[0].getsockname()
    clients = [socket.socket() for _ in range(20)]  # created before the limit drops
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    # Lower the limit before accepting starts: io_uring reads RLIMIT_NOFILE
    # when an accept is prepared, not when each connection arrives.
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 4, hard))
    await server.start_serving()
    for c in clients:
        c.setblocking(False)
        c.connect_ex(addr)
    await asyncio.sleep(0.5)
    before = len(accepted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))  # descriptors available again
    for _ in range(100):
        await asyncio.sleep(0.05)
        if len(accepted) == 20:
            break
    print(json.dumps({"backend": loop.backend, "before": before, "after": len(accepted),
                      "reports": reports, "serving": server.is_serving()}))
    for w in accepted:
        w.close()
    for c in clients:
        c.close()
    server.close()
    await server.wait_closed()

iocp_policy.run(main())
'''


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_NOFILE and /proc")
def test_emfile_backs_off_and_recovers(port_name: str) -> None:
    env = {**os.environ, "IOCP_POLICY_BACKEND": port_name}
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60,
                          env=env, cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == port_name
    assert result["before"] < 20  # the limit really bit
    assert "socket.accept() out of system resource" in result["reports"]
    assert result["reports"].count("socket.accept() out of system resource") <= 2  # backs off, no storm
    assert result["after"] == 20 and result["serving"]  # every pending connection served later


def test_per_connection_errors_do_not_stop_accepting(port_name: str) -> None:
    """ECONNABORTED and the network errors Linux passes on from a dead pending
    connection are skipped: accepting goes on, nothing is reported."""

    async def main() -> tuple[list[Any], bytes]:
        loop = asyncio.get_running_loop()
        reports: list[Any] = []
        loop.set_exception_handler(lambda lp, ctx: reports.append(ctx))

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(await r.read(10))
            w.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        listener = server._listeners[0]  # type: ignore[attr-defined]
        for err in (errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN, errno.EHOSTUNREACH):
            listener._on_accept(-err)  # as if the kernel reported it for one connection
        await asyncio.sleep(0.01)
        r, w = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        w.write(b"still ok")
        data = await r.read(10)
        w.close()
        server.close()
        await server.wait_closed()
        return reports, data

    with asyncio.Runner(loop_factory=lambda: iocp_policy.new_event_loop(backend=port_name)) as r:
        reports, data = r.run(main())
    assert reports == [] and data == b"still ok"


def test_closing_server_closes_listening_socket_after_reaping(port_name: str) -> None:
    async def main() -> tuple[int, bool]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        sock = server.sockets[0]
        fd = sock.fileno()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)
        inflight = loop.backend_info()["inflight"]  # type: ignore[attr-defined]
        return inflight, os.path.exists(f"/proc/self/fd/{fd}") if sys.platform == "linux" else False

    with asyncio.Runner(loop_factory=lambda: iocp_policy.new_event_loop(backend=port_name)) as r:
        inflight, fd_open = r.run(main())
    assert inflight == 0
    assert not fd_open
