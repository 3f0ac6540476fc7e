"""Unix signals as loop callbacks: ``add_signal_handler`` / ``remove_signal_handler``.

How a signal reaches an event loop (what this module relies on)
===============================================================

The kernel interrupts whichever thread of the process it picks.  CPython's
C-level handler only records the signal ("tripped") and, if a wakeup fd is
set (``signal.set_wakeup_fd``, main thread only), writes the signal number
to it as one byte.  The Python-level handler runs later, in the main thread,
at the next bytecode boundary.  So a loop blocked in the kernel hears of a
signal in one of two ways:

* its wait fails with ``EINTR``, if the signal hit the loop's own thread;
  the port then runs the Python-level handlers at once, or
* the wakeup fd it is waiting on turns readable.

The second closes the gap the first leaves open: a signal that lands after
the loop last ran Python code but before it blocks.  Its handler has not
run, nothing is pending any more, and without the wakeup fd the loop would
sleep through it until some unrelated event (the stdlib's selector loop has
this gap for handlers it did not install, such as ``asyncio.Runner``'s
SIGINT handler).  The port provides the descriptor (``port.wakeup_fd()``:
io_uring's wake pipe, the emulated port's wakeup socket; writing to it is a
``port.wakeup()``) and this module installs it:

* whenever the loop runs in the main thread, restoring the previous one
  after the run (as the stdlib's proactor loop keeps one installed), so
  ``Runner``'s own SIGINT handler is never missed;
* while loop signal handlers are registered (as the stdlib's unix loop
  does), so that signals are noticed between runs too.

A handler added with ``add_signal_handler`` is an asyncio ``Handle``.  The
Python-level signal handler we install puts that Handle in the ready queue
and wakes the port; the loop runs it like any callback (exceptions go to
the exception handler).  The stdlib reads signal numbers back from its
self-pipe instead; the visible difference is none, except that two
deliveries of one signal before the interpreter gets to its handlers run
the callback once (as the kernel itself merges a pending signal).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Any

from ._core import LoopCore
from ._handles import Handle

logger = logging.getLogger("asyncio")


class SignalMixin(LoopCore):
    """Signal handlers, and the signal wakeup fd while the loop runs."""

    _signal_handlers: dict[int, asyncio.Handle]
    _wakeup_prev: int | None = None  # what was installed before ours; None: ours is not installed
    _wakeup_mine = -1  # the fd we installed
    _wakeup_for_run = False  # installed because the loop is running in the main thread

    def __init__(self, *, backend: str | None = None) -> None:
        super().__init__(backend=backend)
        self._signal_handlers = {}

    # -- the wakeup fd -------------------------------------------------------------

    def _install_wakeup_fd(self) -> None:
        """Make our port's wakeup fd the interpreter's.  ValueError outside
        the main thread (of the main interpreter)."""
        wakeup_fd = getattr(self._port, "wakeup_fd", None)
        if wakeup_fd is None:  # a backend written before wakeup_fd() joined the interface
            raise ValueError(f"the {self._port.name} completion port has no signal wakeup fd")
        fd = wakeup_fd()
        prev = signal.set_wakeup_fd(fd)
        if self._wakeup_prev is None:
            self._wakeup_prev = -1 if prev == fd else prev
            self._wakeup_mine = fd

    def _uninstall_wakeup_fd(self) -> None:
        """Put back what was there before, unless somebody replaced ours since."""
        prev = self._wakeup_prev
        if prev is None:
            return
        self._wakeup_prev = None
        try:
            current = signal.set_wakeup_fd(prev)
        except (ValueError, OSError) as exc:
            # Not the main thread (nothing can be done: the stdlib logs it
            # too), or the previous fd was closed meanwhile: then none.
            logger.info("set_wakeup_fd(%d) failed: %s", prev, exc)
            try:
                current = signal.set_wakeup_fd(-1)
            except (ValueError, OSError):
                return
        if current != self._wakeup_mine:
            signal.set_wakeup_fd(current)  # somebody else's since ours: leave it theirs

    def _wakeup_fd_unused(self) -> None:
        if not self._signal_handlers and not self._wakeup_for_run:
            self._uninstall_wakeup_fd()

    def run_forever(self) -> None:
        claim = (not self._closed and not self.is_running() and not self._wakeup_for_run
                 and threading.current_thread() is threading.main_thread())
        if claim:
            try:
                self._install_wakeup_fd()
            except (ValueError, OSError):  # a subinterpreter: no signals here
                claim = False
            else:
                self._wakeup_for_run = True
        try:
            super().run_forever()
        finally:
            if claim:
                self._wakeup_for_run = False
                self._wakeup_fd_unused()

    # -- handlers ------------------------------------------------------------------

    def _check_signal(self, sig: Any) -> None:
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def add_signal_handler(self, sig: int, callback: Callable[..., object],  # type: ignore[override]
                           *args: Any) -> None:
        if sys.platform == "win32":
            raise NotImplementedError  # as every stdlib loop on Windows
        if asyncio.iscoroutine(callback) or asyncio.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        try:
            # Raises ValueError outside the main thread: a loop running in
            # another thread cannot take signals, as in the stdlib.
            self._install_wakeup_fd()
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))  # noqa: B904 - the stdlib chains implicitly
        self._signal_handlers[sig] = Handle(callback, args, self, None)
        try:
            signal.signal(sig, self._on_signal)
            signal.siginterrupt(sig, False)  # SA_RESTART: fewer EINTRs for everybody else
        except OSError as exc:
            del self._signal_handlers[sig]
            self._wakeup_fd_unused()
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught")  # noqa: B904
            raise

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        """The Python-level handler: main thread, between two bytecodes."""
        handle = self._signal_handlers.get(sig)
        if handle is None or self._closed:
            return
        if handle._cancelled:  # type: ignore[attr-defined]
            self.remove_signal_handler(sig)
            return
        # Like call_soon_threadsafe: the loop may run in another thread, or
        # be blocked in the kernel right now.
        self._ready.append(handle)
        self._port.wakeup()

    def remove_signal_handler(self, sig: int) -> bool:
        if sys.platform == "win32":
            raise NotImplementedError
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught")  # noqa: B904
            raise
        self._wakeup_fd_unused()
        return True

    def _close_io(self) -> None:
        # Before the port (and its wakeup fd) goes away.
        if sys.is_finalizing():
            if self._signal_handlers:
                warnings.warn(f"Closing the loop {self!r} on interpreter shutdown stage, "
                              "skipping signal handlers removal", ResourceWarning, source=self, stacklevel=2)
                self._signal_handlers.clear()
        else:
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        self._uninstall_wakeup_fd()
        super()._close_io()
