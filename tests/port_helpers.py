"""Helpers shared by the tests that drive a completion port directly."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def pump(port: Any, until: Callable[[], object], timeout: float = 10.0) -> None:
    """Run the port until ``until()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "the port did not deliver in time"
        port.run(0.05)


def fill_pipe(w: int) -> int:
    """Write to a non-blocking pipe until it is full; return how much."""
    os.set_blocking(w, False)
    filled = 0
    try:
        while True:
            filled += os.write(w, b"f" * 65536)
    except BlockingIOError:
        return filled


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))
