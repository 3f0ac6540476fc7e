"""Stand-in ``uvloop`` module for running uvloop's test suite on iocp_policy.

``compat/uvloop/run.py`` puts the directory holding this package first on
``PYTHONPATH`` and copies uvloop's own ``_testbase.py`` (from the pinned
sdist, at run time) beside this file, so the suite's ``import uvloop`` and
``from uvloop import _testbase`` find this module: every place the suite
makes a uvloop loop, policy or runner gets ours.  Only the public API of the
uvloop module is provided; ``uvloop.loop`` (its Cython internals) is absent
on purpose, and the tests that import it are excluded with their reason in
``compat/uvloop/expectations.toml``.

With ``IOCP_COMPAT_SHIM_LOOP=stdlib`` the stand-in hands out the stdlib loop
instead (``run.py --uv-on-stdlib``): a diagnostic run that shows which of the
uvloop variants' expectations the stdlib loop does not meet either.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from iocp_policy import EventLoopPolicy, Loop, __version__, install, new_event_loop

if os.environ.get("IOCP_COMPAT_SHIM_LOOP") == "stdlib":
    from asyncio import DefaultEventLoopPolicy as EventLoopPolicy  # type: ignore[assignment]
    from asyncio import SelectorEventLoop as Loop  # type: ignore[assignment]
    from asyncio import new_event_loop  # type: ignore[assignment]

__all__ = ["EventLoopPolicy", "Loop", "__version__", "install", "new_event_loop", "run"]

_T = TypeVar("_T")


def run(main: Coroutine[Any, Any, _T], *, loop_factory: Callable[[], asyncio.AbstractEventLoop] = new_event_loop,
        debug: bool | None = None) -> _T:
    """``uvloop.run``: run ``main`` on a fresh loop from ``loop_factory``."""
    with asyncio.Runner(loop_factory=loop_factory, debug=debug) as runner:
        return runner.run(main)
