"""pytest plugin: run a project's async tests on iocp_policy's loop.

Installed as a ``pytest11`` entry point, so pytest loads it wherever
iocp-policy is installed; it changes nothing until a run opts in with the
``--iocp-loop`` option or the ``iocp_loop = true`` ini setting.  Then:

- **pytest-asyncio** 1.4 and later: a ``pytest_asyncio_loop_factories`` hook
  returns ``{"iocp": iocp_policy.new_event_loop}``, so every asyncio test (and
  its async fixtures) runs on our loop; with one factory the test ids are
  unchanged.  A project's own implementation of the hook in a conftest takes
  precedence (the hook is first-result).
- **pytest-asyncio** 0.23 to 1.3: an ``event_loop_policy`` fixture returning
  ``iocp_policy.EventLoopPolicy()`` (a project's own ``event_loop_policy``
  fixture in a conftest takes precedence).
- **anyio**: a value of the ``anyio_backend`` fixture naming the asyncio backend
  without a ``loop_factory`` (``"asyncio"``, ``("asyncio", {"debug": True})``)
  gets ``loop_factory=iocp_policy.new_event_loop``; other backends, and asyncio
  values that already name a loop factory or ask for uvloop, are left alone.

The backend is chosen as everywhere else: ``IOCP_POLICY_BACKEND=io_uring|iocp|emulated``
or the platform's native port.

Without opting in, two fixtures are still available to tests that ask for them:
``iocp_loop_factory`` (``iocp_policy.new_event_loop``) and ``iocp_event_loop``
(a new loop, closed after the test).  For anyio tests, the backend value
:data:`ANYIO_BACKEND` can be used in a project's own ``anyio_backend`` fixture
or parametrization.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any

import pytest

from ._loop import Loop
from ._policy import EventLoopPolicy, new_event_loop

__all__ = ["ANYIO_BACKEND", "LOOP_FACTORY_NAME", "anyio_backend_on_our_loop"]

#: Name of our factory in pytest-asyncio's ``pytest_asyncio_loop_factories``
#: mapping (usable in ``@pytest.mark.asyncio(loop_factories=["iocp"])``).
LOOP_FACTORY_NAME = "iocp"

#: anyio backend value that runs a test on our loop.
ANYIO_BACKEND: tuple[str, dict[str, Any]] = ("asyncio", {"loop_factory": new_event_loop})

_OPTION = "iocp_loop"
_INI_HELP = "run async tests (pytest-asyncio, anyio) on iocp_policy's event loop (true/false)"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("iocp_policy")
    group.addoption("--iocp-loop", action="store_true", default=None, dest=_OPTION,
                    help="run async tests (pytest-asyncio, anyio) on iocp_policy's event loop")
    parser.addini(_OPTION, _INI_HELP, type="bool", default=False)


def opted_in(config: pytest.Config) -> bool:
    """Whether this run asked for our loop (``--iocp-loop`` or ``iocp_loop = true``)."""
    option = config.getoption(_OPTION, default=None)
    if option is not None:
        return bool(option)
    return bool(config.getini(_OPTION))


def _has_loop_factories_hook(config: pytest.Config) -> bool:
    """pytest-asyncio 1.4+ declares ``pytest_asyncio_loop_factories``."""
    caller = getattr(config.hook, "pytest_asyncio_loop_factories", None)
    return caller is not None and getattr(caller, "spec", None) is not None


def pytest_configure(config: pytest.Config) -> None:
    if not opted_in(config):
        return
    config.pluginmanager.register(_AnyioBackendRewrite(), "iocp_policy-anyio")
    if config.pluginmanager.has_plugin("asyncio"):
        if _has_loop_factories_hook(config):
            config.pluginmanager.register(_LoopFactories(), "iocp_policy-asyncio")
        else:
            config.pluginmanager.register(_EventLoopPolicyFixture(), "iocp_policy-asyncio")


class _LoopFactories:
    """pytest-asyncio 1.4+: our loop as the one loop factory."""

    def pytest_asyncio_loop_factories(self, config: pytest.Config,
                                      item: pytest.Item) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
        return {LOOP_FACTORY_NAME: new_event_loop}


class _EventLoopPolicyFixture:
    """pytest-asyncio 0.23 to 1.3: loops come from the ``event_loop_policy`` fixture."""

    @pytest.fixture(scope="session")
    def event_loop_policy(self) -> asyncio.AbstractEventLoopPolicy:
        with warnings.catch_warnings():  # policies are deprecated on 3.14+; this is their last user
            warnings.simplefilter("ignore", DeprecationWarning)
            return EventLoopPolicy()  # type: ignore[no-any-return]


def anyio_backend_on_our_loop(value: Any) -> Any:
    """``value`` of an ``anyio_backend`` fixture with our loop factory, if it names
    the asyncio backend without choosing a loop; otherwise ``value`` unchanged."""
    if value == "asyncio":
        return ANYIO_BACKEND
    if (isinstance(value, tuple) and len(value) == 2 and value[0] == "asyncio" and isinstance(value[1], dict)
            and value[1].get("loop_factory") is None and not value[1].get("use_uvloop")):
        return ("asyncio", {**value[1], "loop_factory": new_event_loop})
    return value


class _AnyioBackendRewrite:
    """anyio: put the asyncio values of ``anyio_backend`` on our loop."""

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: pytest.FixtureRequest) -> Generator[None, Any, Any]:
        value = yield
        if fixturedef.argname != "anyio_backend":
            return value
        new = anyio_backend_on_our_loop(value)
        cached = fixturedef.cached_result
        if new is not value and isinstance(cached, tuple) and cached and cached[0] is value:
            fixturedef.cached_result = (new, *cached[1:])
        return new


@pytest.fixture
def iocp_loop_factory() -> Callable[[], Loop]:
    """``iocp_policy.new_event_loop``, for tests that build loops themselves."""
    return new_event_loop


@pytest.fixture
def iocp_event_loop() -> Iterator[Loop]:
    """A new :class:`iocp_policy.Loop` (not running, not set as current), closed after the test."""
    loop = new_event_loop()
    try:
        yield loop
    finally:
        if not loop.is_closed():
            loop.close()
