"""pytest plugin for anyio's test suite (``run.py`` loads it with ``-p``).

Puts every asyncio loop that anyio's backend creates on the loop this run is
about (``--compat-loop``): ``stdlib`` (``asyncio.new_event_loop``, the control)
or a backend of ours (``iocp_policy.new_event_loop``, the backend chosen by
``IOCP_POLICY_BACKEND``).  Both runs go through the same substitution, so the
only difference between them is the loop class.

- ``AsyncIOBackend.run`` and ``AsyncIOBackend.create_test_runner`` (anyio's
  backend interface: ``anyio.run``, blocking portals, the pytest plugin's test
  runner) get ``loop_factory`` set when the options have none.  A
  ``loop_factory`` the suite passes itself (its ``asyncio+eager`` parameter on
  Python 3.12+) is kept on the stdlib run; on ours the loop it builds lends its
  task factory to one of our loops.
- the suite's ``asyncio_event_loop`` fixture (a bare loop for tests that drive
  one by hand) yields one of our loops on ours.
- tests that are not on the asyncio backend (``trio``) are deselected: this
  run is about asyncio loops.

Tests whose ``server_sock`` fixture binds ``('localhost', 0)`` as IPv6 are
skipped, with the reason, where ``localhost`` has no IPv6 address (they fail on
every loop there, and leak a socket).  Two adjustments apply to every run, the
control included: the suite's blockbuster rules allow our loop's
``subprocess_exec``/``subprocess_shell`` the blocking ``os.read`` they allow
asyncio's (``subprocess.Popen`` reading the child's exec status), and garbage
is collected after each failed test, so that what it leaked is reported by
that test.

In the Windows CPython under Wine (``run.py --wine``), on every run too: the
blockbuster allowance of imports extends to zipimport (the embeddable
CPython's standard library is a zip), and the tests of ``WINE_SKIPS`` are
skipped with their reasons (they cannot pass under Wine, whatever the loop).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import os
import socket
import sys
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest
from compat_common import Session, add_options, configure

import iocp_policy

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
OUR_SUBPROCESS_MODULE = "iocp_policy/_subprocess.py"
ZIPIMPORT = "<frozen zipimport>"
_session: Session | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def _base_factory() -> LoopFactory:
    if _session is not None and _session.ours:
        return iocp_policy.new_event_loop
    return asyncio.new_event_loop


def _on_our_loop(factory: LoopFactory) -> LoopFactory:
    """A factory for one of our loops configured as ``factory``'s loop is (its task factory)."""

    def make() -> asyncio.AbstractEventLoop:
        model = factory()
        try:
            task_factory = model.get_task_factory()
        finally:
            model.close()
        loop = iocp_policy.new_event_loop()
        loop.set_task_factory(task_factory)
        return loop

    return make


def substitute(options: dict[str, Any]) -> dict[str, Any]:
    """anyio asyncio backend options with this run's loop factory in them."""
    factory = options.get("loop_factory")
    if options.get("use_uvloop") and factory is None:
        return options  # asks for uvloop by name; not installed here, such tests skip on both runs
    if factory is None:
        return {**options, "loop_factory": _base_factory()}
    if _session is not None and _session.ours:
        return {**options, "loop_factory": _on_our_loop(factory)}
    return options


def _patch_anyio() -> None:
    from anyio._backends._asyncio import AsyncIOBackend

    run = AsyncIOBackend.run.__func__  # type: ignore[attr-defined]
    create_test_runner = AsyncIOBackend.create_test_runner.__func__  # type: ignore[attr-defined]

    def patched_run(cls: type, func: Any, args: Any, kwargs: Any, options: dict[str, Any]) -> Any:
        return run(cls, func, args, kwargs, substitute(options))

    def patched_create_test_runner(cls: type, options: dict[str, Any]) -> Any:
        return create_test_runner(cls, substitute(options))

    AsyncIOBackend.run = classmethod(patched_run)  # type: ignore[assignment,method-assign]
    AsyncIOBackend.create_test_runner = classmethod(  # type: ignore[assignment,method-assign]
        patched_create_test_runner)


def pytest_configure(config: pytest.Config) -> None:
    global _session
    _session = configure(config)
    if _session is not None:
        _session.recorder.meta["anyio"] = importlib.metadata.version("anyio")  # run.py checks it is the pin's
        _patch_anyio()


def _our_event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = iocp_policy.new_event_loop()
    yield loop
    loop.close()


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Generator[None, Any, Any]:
    if _session is None:
        return (yield)
    if fixturedef.argname == "asyncio_event_loop" and _session.ours:
        original = fixturedef.func
        fixturedef.func = _our_event_loop
        try:
            return (yield)
        finally:
            fixturedef.func = original
    value = yield
    if fixturedef.argname == "blockbuster" and value is not None:
        # The suite lets asyncio's own subprocess_exec/subprocess_shell (named
        # by their file, asyncio/base_events.py) make subprocess.Popen's blocking
        # read of the child's exec status; the same methods of our loop get the
        # same allowance.
        value.functions["os.read"].can_block_in(OUR_SUBPROCESS_MODULE, {"subprocess_exec", "subprocess_shell"})
        # blockbuster lets an import read its module from a file (importlib's
        # get_data) but has no rule for zipimport, through which the embeddable
        # Windows CPython used under Wine imports its standard library
        # (python313.zip): the first use of a codec inside a running loop then
        # "blocks".  The same allowance for zipimport (inert elsewhere).
        value.functions["io.BufferedReader.read"].can_block_in(ZIPIMPORT, {"_get_data"})
    return value


_failed: set[str] = set()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed and report.when in ("setup", "call"):
        _failed.add(report.nodeid)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """After a test that failed, collect garbage once its fixtures are torn
    down: what it leaked then warns in that test (and not in whichever test
    the garbage collector happens to run in, which differs between runs).
    Only after failures, as a collection per test would double the run time."""
    if _session is not None and item.nodeid in _failed:
        for name in ("last_exc", "last_type", "last_value", "last_traceback"):
            # pytest keeps a failed test's exception here for post-mortem
            # debugging, and with it everything its frames refer to.
            if hasattr(sys, name):
                delattr(sys, name)
        gc.collect()


def _backend_name(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None or "anyio_backend" not in callspec.params:
        return None
    value = callspec.params["anyio_backend"]
    return value if isinstance(value, str) else str(value[0])


def _localhost_has_ipv6() -> bool:
    try:
        return bool(socket.getaddrinfo("localhost", 0, socket.AF_INET6, socket.SOCK_STREAM))
    except OSError:
        return False


NO_IPV6_LOCALHOST = (
    "environment: 'localhost' has no IPv6 address on this machine, and this test's server_sock fixture binds "
    "('localhost', 0) as AF_INET6 (the suite checks only that ::1 binds); it fails on every loop, leaking its "
    "socket into the warnings of whichever test the garbage collector runs in")


#: Tests that cannot pass in the Windows CPython under Wine, whatever the loop
#: (skipped there on every run, control included), by test id without its parameters.
UNDER_WINE = os.environ.get("WINEPY_UNDER_WINE") == "1"
WINE_SKIPS = {
    "tests/streams/test_tls.py::TestTLSStream::test_truststore_ssl": (
        "environment (Wine 8.0): truststore verifies certificates through Windows' CryptoAPI, and Wine's accepts "
        "one whose CA is in no trust store (a handshake with a certificate of the test CA, which the test expects "
        "to fail with SSLCertVerificationError, succeeds; a ten-line program with truststore.SSLContext shows it)"),
    **dict.fromkeys(
        ["tests/test_pytest_plugin.py::test_keyboardinterrupt_during_test",
         "tests/test_pytest_plugin.py::test_dynamic_async_fixture_access_does_not_hang"],
        "environment (Wine 8.0): the test gives a new pytest process 3 s (runpytest_subprocess(timeout=3)), and "
        "under Wine one takes 3.5 to 4.5 s to start (measured; every import stats each sys.path directory, a "
        "round trip to wineserver each), so the test fails or passes by chance; the process runs the stdlib loop "
        "whatever the run"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _session is None:
        return
    ipv6_localhost = _localhost_has_ipv6()
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if (not ipv6_localhost and callspec is not None and callspec.params.get("family") == socket.AF_INET6
                and "server_sock" in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.skip(reason=NO_IPV6_LOCALHOST))
        if UNDER_WINE and item.nodeid.split("[", 1)[0] in WINE_SKIPS:
            item.add_marker(pytest.mark.skip(reason=WINE_SKIPS[item.nodeid.split("[", 1)[0]]))
        name = _backend_name(item)
        (drop if name is not None and name != "asyncio" else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
