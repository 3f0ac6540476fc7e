"""Callback handles.

They subclass :class:`asyncio.Handle` / :class:`asyncio.TimerHandle` so that
``isinstance`` checks, ``cancel()``, ``cancelled()``, ``when()``, ``repr`` and
the exception reporting of ``_run()`` are exactly the stdlib's; only the
constructors are replaced, because they sit on the ``call_soon`` hot path and
the stdlib's asks the loop for its debug flag through a method call.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from asyncio import format_helpers
from collections.abc import Callable
from typing import Any

_copy_context = contextvars.copy_context


class Handle(asyncio.Handle):
    __slots__ = ()

    def __init__(
        self,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: Any,
        context: contextvars.Context | None = None,
    ) -> None:
        self._context = _copy_context() if context is None else context
        self._loop = loop
        self._callback = callback
        self._args = args
        self._cancelled = False
        self._repr = None
        if loop._debug:
            self._source_traceback = format_helpers.extract_stack(sys._getframe(1))
        else:
            self._source_traceback = None  # type: ignore[assignment]


class TimerHandle(asyncio.TimerHandle):
    __slots__ = ()

    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: Any,
        context: contextvars.Context | None = None,
    ) -> None:
        self._context = _copy_context() if context is None else context
        self._loop = loop
        self._callback = callback
        self._args = args
        self._cancelled = False
        self._repr = None
        self._when = when
        self._scheduled = False
        if loop._debug:
            self._source_traceback = format_helpers.extract_stack(sys._getframe(1))
        else:
            self._source_traceback = None  # type: ignore[assignment]
