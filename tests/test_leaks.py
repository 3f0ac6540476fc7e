"""No fd or memory growth over 100,000 port operations."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import sys
from typing import Any

import pytest

import iocp_policy

# Windows: tests/test_windows.py counts process handles instead (and under
# Wine "/proc/self/fd" would be the Wine process's Linux descriptors).
pytestmark = pytest.mark.skipif(sys.platform == "win32" or not os.path.isdir("/proc/self/fd"),
                                reason="reads /proc/self")


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def ping_pong(rounds: int) -> None:
    """Each receive is issued before its data exists, so every one of the
    2 * rounds receives goes through the completion port."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)

    async def side(me: socket.socket, first: bool) -> None:
        if first:
            await loop.sock_sendall(me, b"p")
        for _ in range(rounds):
            assert await loop.sock_recv(me, 16) == b"p"
            await loop.sock_sendall(me, b"p")

    await asyncio.gather(side(a, True), side(b, False))
    a.close()
    b.close()


def test_no_growth_after_100k_operations(port_name: str) -> None:
    def once(rounds: int) -> dict[str, Any]:
        lp = iocp_policy.new_event_loop(backend=port_name)
        try:
            lp.run_until_complete(ping_pong(rounds))
            info = lp.backend_info()
            assert info["inflight"] == 0
            return info
        finally:
            lp.close()

    once(2_000)  # warm-up: allocator pools, imports, code objects
    gc.collect()
    fds0, rss0 = fd_count(), rss_bytes()
    info = once(50_000)  # 100,000 receives through the port
    gc.collect()
    fds1, rss1 = fd_count(), rss_bytes()
    if port_name == "io_uring":
        assert info["completions"] >= 99_000  # all but the odd receive that found data waiting
        from iocp_policy import _uring

        assert len(_uring.graveyard) == 0
    assert fds1 == fds0, f"fd leak: {fds0} -> {fds1}"
    if os.environ.get("IOCP_TEST_UNDER_ASAN") != "1":  # ASan's quarantine keeps freed memory mapped
        assert rss1 - rss0 < 16 * 1024 * 1024, f"RSS grew by {(rss1 - rss0) / 2**20:.1f} MiB"


def test_many_loops_do_not_leak_fds(port_name: str) -> None:
    fds0 = fd_count()
    for _ in range(200):
        lp = iocp_policy.new_event_loop(backend=port_name)
        lp.run_until_complete(asyncio.sleep(0))
        lp.close()
    gc.collect()
    assert fd_count() == fds0
