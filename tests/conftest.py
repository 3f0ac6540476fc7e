"""Differential test harness.

Every test that takes ``loop_factory`` (or ``run`` / ``loop``) runs once per
loop: each available backend of ours and the stdlib loop of the platform.
The same assertions must hold on all of them; a backend that cannot run on
this machine is skipped with the reason it cannot.

``IOCP_TEST_LOOPS=io_uring,stdlib`` restricts the set (the sanitizer job uses
it to run only the native backend).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import iocp_policy
from iocp_policy._port import BackendUnavailableError, open_port

NATIVE = "iocp" if sys.platform == "win32" else "io_uring"
ALL_LOOPS = [NATIVE, "emulated", "stdlib"]
OURS = [NATIVE, "emulated"]

# Windows CPython under Wine (../shared/wine sets WINEPY_UNDER_WINE=1).  A few
# Wine gaps are skipped by name, with the reason; see docs/windows.md.
UNDER_WINE = sys.platform == "win32" and os.environ.get("WINEPY_UNDER_WINE") == "1"
# Wine 8.0 answers a receive issued *after* a peer's RST with end of file
# (0 bytes); Windows fails it with WSAECONNRESET.  A receive already pending
# when the RST arrives does get the reset (iocp keeps one pending).
WINE_RST_IS_EOF = "Wine: a receive started after the peer's RST returns EOF, not WSAECONNRESET"


def skip_under_wine(loop_name: str, loops: tuple[str, ...], reason: str) -> None:
    """Skip this loop's run of a test for a documented Wine limitation
    (never on Windows itself)."""
    if UNDER_WINE and loop_name in loops:
        pytest.skip(reason)


def _selected(names: list[str]) -> list[str]:
    only = os.environ.get("IOCP_TEST_LOOPS")
    if not only:
        return names
    wanted = {n.strip() for n in only.split(",")}
    return [n for n in names if n in wanted]


_availability: dict[str, str | None] = {}


def unavailable_reason(name: str) -> str | None:
    if name == "stdlib":
        return None
    if name not in _availability:
        try:
            port, _ = open_port(name)
        except BackendUnavailableError as exc:
            _availability[name] = str(exc)
        else:
            port.close()
            _availability[name] = None
    return _availability[name]


def open_fds() -> set[int]:
    try:
        return {int(fd) for fd in os.listdir("/proc/self/fd")}
    except OSError:
        return set()


def describe_fd(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


FDS_AT_START: set[int] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    """CI sets IOCP_TEST_REQUIRE_NATIVE=1: a missing native backend is then a
    failure, not a quiet skip (a pure-Python install would pass otherwise)."""
    FDS_AT_START.update(open_fds())
    if os.environ.get("IOCP_TEST_REQUIRE_NATIVE") == "1":
        reason = unavailable_reason(NATIVE)
        if reason:
            raise pytest.UsageError(f"IOCP_TEST_REQUIRE_NATIVE=1 but the {NATIVE} backend is unavailable: {reason}")


def make_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "stdlib":
        return asyncio.new_event_loop
    return lambda: iocp_policy.new_event_loop(backend=name)


def _param(name: str) -> Any:
    reason = unavailable_reason(name)
    marks = [pytest.mark.skip(reason=f"{name} backend unavailable here: {reason}")] if reason else []
    return pytest.param(name, id=name, marks=marks)


@pytest.fixture(params=[_param(n) for n in _selected(ALL_LOOPS)])
def loop_name(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=[_param(n) for n in _selected(OURS)])
def our_loop_name(request: pytest.FixtureRequest) -> str:
    """Only our backends: for features the stdlib loop does not have."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def loop_factory(loop_name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    return make_factory(loop_name)


@pytest.fixture
def run(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> Callable[..., Any]:
    """run(coro, debug=False): run a coroutine to completion on a fresh loop."""

    def _run(coro: Coroutine[Any, Any, Any], debug: bool = False) -> Any:
        with asyncio.Runner(loop_factory=loop_factory, debug=debug) as runner:
            return runner.run(coro)

    return _run


@pytest.fixture
def loop(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> Any:
    lp = loop_factory()
    yield lp
    if not lp.is_closed():
        lp.close()


@pytest.fixture
def port_name(our_loop_name: str) -> str:
    return our_loop_name
