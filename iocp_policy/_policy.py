"""Entry points: new_event_loop, run, EventLoopPolicy, install."""

from __future__ import annotations

import asyncio
import sys
import warnings
from asyncio import events
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._loop import Loop

_T = TypeVar("_T")

# Policies are deprecated from Python 3.14 (gh-127949) and go away in 3.16.
POLICIES_DEPRECATED = sys.version_info >= (3, 14)

# Renamed with a leading underscore in 3.14, when policies were deprecated.
_BASE_NAMES = ("BaseDefaultEventLoopPolicy", "_BaseDefaultEventLoopPolicy")
_BasePolicy: Any = next(getattr(events, name) for name in _BASE_NAMES if hasattr(events, name))


def new_event_loop(*, backend: str | None = None) -> Loop:
    """Return a new :class:`Loop`.  Usable as ``loop_factory`` anywhere."""
    return Loop(backend=backend)


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Run a coroutine on a new :class:`Loop`, like :func:`asyncio.run`."""
    if events._get_running_loop() is not None:
        raise RuntimeError("iocp_policy.run() cannot be called from a running event loop")
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)


class EventLoopPolicy(_BasePolicy):  # type: ignore[misc]
    """Event loop policy whose loops are :class:`Loop` instances.

    Deprecated on Python 3.14+, as asyncio's own policies are: prefer
    ``loop_factory=iocp_policy.new_event_loop`` or :func:`run`.
    """

    def __init__(self) -> None:
        if POLICIES_DEPRECATED:
            warnings.warn(
                "iocp_policy.EventLoopPolicy is deprecated as asyncio policies are (Python 3.14+); "
                "use iocp_policy.run() or loop_factory=iocp_policy.new_event_loop",
                DeprecationWarning, stacklevel=2,
            )
        super().__init__()

    def _loop_factory(self) -> Loop:
        return new_event_loop()


def install() -> None:
    """Make asyncio create our loops (``asyncio.set_event_loop_policy``)."""
    if POLICIES_DEPRECATED:
        warnings.warn(
            "iocp_policy.install() is deprecated as asyncio policies are (Python 3.14+); "
            "use iocp_policy.run() or loop_factory=iocp_policy.new_event_loop",
            DeprecationWarning, stacklevel=2,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(EventLoopPolicy())
