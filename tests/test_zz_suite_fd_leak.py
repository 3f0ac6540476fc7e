"""Runs last (file order): no fd opened by the suite is left open."""

from __future__ import annotations

import gc
import os
import sys

import conftest
import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.isdir("/proc/self/fd"),
                    reason="reads /proc/self/fd (Linux)")
def test_no_fd_leaked_by_the_suite() -> None:
    gc.collect()
    leaked = conftest.open_fds() - conftest.FDS_AT_START
    details = {fd: conftest.describe_fd(fd) for fd in sorted(leaked)}
    assert not leaked, f"fds left open by the test suite: {details}"
    assert sys.platform.startswith("linux")
