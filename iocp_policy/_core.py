"""The scheduling core: ready queue, timer heap, the run loop, executors,
exception handling, debug mode, async generator hooks and tasks.

It knows nothing about the operating system.  One iteration
(:meth:`LoopCore._run_once`) is:

1. compute how long the port may wait: 0 if callbacks are ready or the loop
   is stopping, else until the earliest timer, else forever;
2. ``port.run(timeout)``: one kernel transition that submits every queued
   operation, waits, and calls each completed operation's callback directly
   (completions need no handle, no ready-queue round trip);
3. move due timers to the ready queue;
4. run the callbacks that were ready at this point, and only those, so a
   callback that schedules another cannot starve I/O.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import heapq
import itertools
import logging
import os
import sys
import threading
import time
import traceback
import warnings
import weakref
from asyncio import events, futures, tasks
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar, TypeVarTuple, Unpack

from ._handles import Handle, TimerHandle
from ._port import CompletionPort, open_port

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

# The stdlib's logger: applications configure it and tests capture it.
logger = logging.getLogger("asyncio")

_MAX_TIMEOUT = 24 * 3600  # longest single wait, as the stdlib selector loop
_MIN_SCHEDULED_TIMER_HANDLES = 100
_MIN_CANCELLED_TIMER_HANDLES_FRACTION = 0.5
_DEBUG_STACK_DEPTH = 10
_THREAD_JOIN_TIMEOUT = 300

_TASK_HAS_EAGER_START = sys.version_info >= (3, 12)
_yield_gil = time.sleep  # see the end of run_forever()


def _env_debug() -> bool:
    return bool(sys.flags.dev_mode) or (
        not sys.flags.ignore_environment and bool(os.environ.get("PYTHONASYNCIODEBUG"))
    )


def _format_handle(handle: asyncio.Handle) -> str:
    cb = handle._callback  # type: ignore[attr-defined]
    if isinstance(getattr(cb, "__self__", None), tasks.Task):
        return repr(cb.__self__)
    return str(handle)


class LoopCore(asyncio.AbstractEventLoop):
    """Everything of :class:`asyncio.AbstractEventLoop` that is not I/O."""

    _port: CompletionPort

    def __init__(self, *, backend: str | None = None) -> None:
        port, reason = open_port(backend)
        self._closed = False  # set only once there is a port to close
        self._port = port
        self._backend_fallback_reason = reason
        port.error_handler = self._completion_error
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        # Heap of (when, sequence, handle): tuple comparison runs in C and
        # the sequence keeps equal deadlines FIFO.
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._timer_seq = itertools.count()
        self._timer_cancelled_count = 0
        self._stopping = False
        self._thread_id: int | None = None
        self._clock_resolution = time.get_clock_info("monotonic").resolution
        self._exception_handler: Callable[[Any, dict[str, Any]], object] | None = None
        self._debug = False
        self.set_debug(_env_debug())
        self.slow_callback_duration = 0.1
        self._current_handle: asyncio.Handle | None = None
        self._task_factory: Any = None
        self._default_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_shutdown_called = False
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth: int | None = None
        # fd -> transport owning it, so sock_*/add_reader can refuse those fds.
        self._transports: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        # Objects holding an fd that may close only once their cancelled ops
        # are reaped (closed transports, stopped listeners).  If the loop
        # closes first, the port reaps those ops without callbacks, so close()
        # finishes the job (see _close_deferred_fds).
        self._deferred_fds: set[Any] = set()
        self._asyncgens: weakref.WeakSet[Any] = weakref.WeakSet()
        self._asyncgens_shutdown_called = False

    def __repr__(self) -> str:
        return (
            f"<{self.__class__.__name__} backend={self._port.name} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()}>"
        )

    # -- backend -------------------------------------------------------------

    @property
    def backend(self) -> str:
        """Name of the completion-port backend: ``io_uring``, ``iocp`` or ``emulated``."""
        return self._port.name

    @property
    def backend_fallback_reason(self) -> str | None:
        """Why the native backend was not used, or ``None``."""
        return self._backend_fallback_reason

    def backend_info(self) -> dict[str, Any]:
        return self._port.info()

    def _completion_error(self, op: Any, exc: BaseException) -> None:
        self.call_exception_handler(
            {"message": f"Exception in completion callback of {op!r}", "exception": exc}
        )

    # -- time and callbacks -----------------------------------------------------

    def time(self) -> float:
        return time.monotonic()

    def call_soon(self, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts,
                  context: contextvars.Context | None = None) -> Handle:
        if self._closed:
            raise RuntimeError("Event loop is closed")
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_soon")
        handle = Handle(callback, args, self, context)
        if handle._source_traceback:
            del handle._source_traceback[-1]
        self._ready.append(handle)
        return handle

    def _call_soon(self, callback: Callable[..., object], args: tuple[Any, ...],
                   context: contextvars.Context | None) -> Handle:
        # Internal fast path (no checks); also the name asyncio helpers use.
        handle = Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_soon_threadsafe(self, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts,
                             context: contextvars.Context | None = None) -> Handle:
        if self._closed:
            raise RuntimeError("Event loop is closed")
        if self._debug:
            self._check_callback(callback, "call_soon_threadsafe")
        handle = Handle(callback, args, self, context)
        if handle._source_traceback:
            del handle._source_traceback[-1]
        # Append first, then wake: the loop drains the wakeup before it looks
        # at the ready queue, so the callback cannot be missed.
        self._ready.append(handle)
        self._port.wakeup()
        return handle

    def _write_to_self(self) -> None:
        """Wake the loop from any thread (name kept for libraries that call it)."""
        self._port.wakeup()

    def call_later(self, delay: float, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts,
                   context: contextvars.Context | None = None) -> TimerHandle:
        if delay is None:
            raise TypeError("delay must not be None")
        timer = self.call_at(time.monotonic() + delay, callback, *args, context=context)
        if timer._source_traceback:
            del timer._source_traceback[-1]
        return timer

    def call_at(self, when: float, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts,
                context: contextvars.Context | None = None) -> TimerHandle:
        if when is None:
            raise TypeError("when cannot be None")
        if self._closed:
            raise RuntimeError("Event loop is closed")
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_at")
        timer = TimerHandle(when, callback, args, self, context)
        if timer._source_traceback:
            del timer._source_traceback[-1]
        heapq.heappush(self._timers, (when, next(self._timer_seq), timer))
        timer._scheduled = True
        return timer

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        # Called by TimerHandle.cancel(); the heap entry is dropped lazily.
        if handle._scheduled:  # type: ignore[attr-defined]
            self._timer_cancelled_count += 1

    def _check_callback(self, callback: Any, method: str) -> None:
        if asyncio.iscoroutine(callback) or asyncio.iscoroutinefunction(callback):
            raise TypeError(f"coroutines cannot be used with {method}()")
        if not callable(callback):
            raise TypeError(f"a callable object was expected by {method}(), got {callback!r}")

    def _check_thread(self) -> None:
        if self._thread_id is None:
            return
        if threading.get_ident() != self._thread_id:
            raise RuntimeError(
                "Non-thread-safe operation invoked on an event loop other than the current one"
            )

    def _check_closed(self) -> None:
        if self._closed:
            raise RuntimeError("Event loop is closed")

    # -- running -------------------------------------------------------------

    def _run_once(self) -> None:
        ready = self._ready
        timers = self._timers
        heappop = heapq.heappop

        if self._timer_cancelled_count:
            n = len(timers)
            if (n > _MIN_SCHEDULED_TIMER_HANDLES
                    and self._timer_cancelled_count / n > _MIN_CANCELLED_TIMER_HANDLES_FRACTION):
                # Many cancelled timers: rebuild instead of popping them one by one,
                # so the heap cannot grow without bound.
                live = []
                for entry in timers:
                    if entry[2]._cancelled:
                        entry[2]._scheduled = False
                    else:
                        live.append(entry)
                heapq.heapify(live)
                self._timers = timers = live
                self._timer_cancelled_count = 0
            else:
                while timers and timers[0][2]._cancelled:
                    self._timer_cancelled_count -= 1
                    heappop(timers)[2]._scheduled = False

        if ready or self._stopping:
            timeout: float | None = 0
        elif timers:
            timeout = timers[0][0] - time.monotonic()
            if timeout < 0:
                timeout = 0
            elif timeout > _MAX_TIMEOUT:
                timeout = _MAX_TIMEOUT
        else:
            timeout = None

        self._port.run(timeout)

        if timers:
            end = time.monotonic() + self._clock_resolution
            while timers:
                entry = timers[0]
                if entry[0] >= end:
                    break
                heappop(timers)
                timer = entry[2]
                timer._scheduled = False
                if timer._cancelled:
                    self._timer_cancelled_count -= 1
                else:
                    ready.append(timer)

        ntodo = len(ready)
        if self._debug:
            for _ in range(ntodo):
                handle = ready.popleft()
                if handle._cancelled:  # type: ignore[attr-defined]
                    continue
                try:
                    self._current_handle = handle
                    t0 = time.monotonic()
                    handle._run()  # type: ignore[attr-defined]
                    dt = time.monotonic() - t0
                    if dt >= self.slow_callback_duration:
                        logger.warning("Executing %s took %.3f seconds", _format_handle(handle), dt)
                finally:
                    self._current_handle = None
        else:
            popleft = ready.popleft
            for _ in range(ntodo):
                handle = popleft()
                if not handle._cancelled:  # type: ignore[attr-defined]
                    handle._run()  # type: ignore[attr-defined]
        handle = None  # type: ignore[assignment]  # break cycles with a failed callback

    def _check_running(self) -> None:
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        if events._get_running_loop() is not None:
            raise RuntimeError("Cannot run the event loop while another loop is running")

    def run_forever(self) -> None:
        self._check_closed()
        self._check_running()
        self._port.prepare_thread()
        self._set_coroutine_origin_tracking(self._debug)
        old_agen_hooks = sys.get_asyncgen_hooks()
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook, finalizer=self._asyncgen_finalizer_hook
            )
            events._set_running_loop(self)
            while True:
                self._run_once()
                if self._stopping:
                    break
        finally:
            self._stopping = False
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)
            # Give threads that became runnable while we ran (workers told to
            # stop, executor threads handing back results) the GIL once, as
            # the stdlib loop's blocking select() would: our iterations with
            # callbacks ready make no syscall at all.  (anyio's test for its
            # issue #1203 otherwise finds its worker thread still alive,
            # holding the closed loop, when run() returns.)  Measured: a zero
            # sleep hands the GIL over every time, select(0) and sched_yield()
            # about a third of the time.  Bound at import: this is the loop's
            # own yield, not a blocking call for tools such as blockbuster
            # (anyio's suite) to flag when code on the loop thread sleeps.
            _yield_gil(0)

    def run_until_complete(self, future: Generator[Any, None, _T] | Awaitable[_T]) -> _T:
        self._check_closed()
        self._check_running()
        new_task = not futures.isfuture(future)
        fut: asyncio.Future[_T] = tasks.ensure_future(future, loop=self)  # type: ignore[arg-type]
        if new_task:
            # An exception raised by the task is consumed here; don't log it.
            fut._log_destroy_pending = False  # type: ignore[attr-defined]
        fut.add_done_callback(_run_until_complete_cb)
        try:
            self.run_forever()
        except BaseException:
            if new_task and fut.done() and not fut.cancelled():
                fut.exception()  # mark retrieved: it is propagating right now
            raise
        finally:
            fut.remove_done_callback(_run_until_complete_cb)
        if not fut.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return fut.result()

    def stop(self) -> None:
        self._stopping = True

    def is_running(self) -> bool:
        return self._thread_id is not None

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self._closed:
            return
        if self._debug:
            logger.debug("Close %r", self)
        self._closed = True
        self._ready.clear()
        for entry in self._timers:
            entry[2]._scheduled = False
        self._timers.clear()
        self._timer_cancelled_count = 0
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)
        self._close_io()
        abandoned = self._port.close(5.0)
        self._close_deferred_fds()
        if abandoned:
            logging.getLogger("iocp_policy").error(
                "%r: %d operation(s) were still owned by the kernel after close(); "
                "their buffers are kept alive forever rather than freed", self, abandoned
            )

    def _close_io(self) -> None:
        """Hook for the I/O layers to release what they own before the port closes."""

    def _close_deferred_fds(self) -> None:
        """After the port closed: close fds whose ops it reaped.  An fd whose
        op the kernel never released stays open, as its buffers stay alive."""
        for owner in list(self._deferred_fds):
            owner._close_after_port()
        self._deferred_fds.clear()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if not getattr(self, "_closed", True):
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    # -- futures and tasks ---------------------------------------------------

    def create_future(self) -> asyncio.Future[Any]:
        return futures.Future(loop=self)

    def create_task(self, coro: Coroutine[Any, Any, _T] | Generator[Any, None, _T], *,
                    name: str | None = None, context: contextvars.Context | None = None,
                    **kwargs: Any) -> asyncio.Task[_T]:
        """Schedule a coroutine.  ``eager_start=`` is accepted where the
        interpreter's Task supports it (3.12+), and other keywords pass
        through to a custom task factory as on Python 3.14."""
        self._check_closed()
        if kwargs and not _TASK_HAS_EAGER_START and self._task_factory is None:
            raise TypeError(f"create_task() got unexpected keyword arguments {sorted(kwargs)}")
        if self._task_factory is None:
            task = tasks.Task(coro, loop=self, name=name, context=context, **kwargs)
            if task._source_traceback:  # type: ignore[attr-defined]
                del task._source_traceback[-1]  # type: ignore[attr-defined]
        else:
            if context is not None:
                kwargs["context"] = context
            task = self._task_factory(self, coro, **kwargs)
            if name is not None:
                task.set_name(name)
        return task

    def set_task_factory(self, factory: Any) -> None:
        if factory is not None and not callable(factory):
            raise TypeError("task factory must be a callable or None")
        self._task_factory = factory

    def get_task_factory(self) -> Any:
        return self._task_factory

    # -- executors -----------------------------------------------------------

    def _check_default_executor(self) -> None:
        if self._executor_shutdown_called:
            raise RuntimeError("Executor shutdown has been called")

    def run_in_executor(self, executor: Any, func: Callable[[Unpack[_Ts]], _T],
                        *args: *_Ts) -> asyncio.Future[_T]:
        self._check_closed()
        if self._debug:
            self._check_callback(func, "run_in_executor")
        if executor is None:
            executor = self._default_executor
            self._check_default_executor()
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
                self._default_executor = executor
        return futures.wrap_future(executor.submit(func, *args), loop=self)

    def set_default_executor(self, executor: Any) -> None:
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            raise TypeError("executor must be ThreadPoolExecutor")
        self._default_executor = executor

    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        """Join the default executor's threads; warn if that takes longer than
        ``timeout`` seconds (the 3.12 signature, offered on every version)."""
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is None:
            return
        future = self.create_future()
        thread = threading.Thread(target=self._do_shutdown, args=(executor, future))
        thread.start()
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            warnings.warn(
                "The executor did not finishing joining its threads within "
                f"{timeout} seconds.", RuntimeWarning, stacklevel=2,
            )
            executor.shutdown(wait=False)
        else:
            thread.join()

    def _do_shutdown(self, executor: concurrent.futures.Executor, future: asyncio.Future[None]) -> None:
        try:
            executor.shutdown(wait=True)
            if not self.is_closed():
                self.call_soon_threadsafe(_set_result_unless_cancelled, future, None)
        except Exception as ex:
            if not self.is_closed() and not future.cancelled():
                self.call_soon_threadsafe(future.set_exception, ex)

    # -- exception handling --------------------------------------------------

    def get_exception_handler(self) -> Any:
        return self._exception_handler

    def set_exception_handler(self, handler: Any) -> None:
        if handler is not None and not callable(handler):
            raise TypeError(f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        message = context.get("message") or "Unhandled exception in event loop"
        exception = context.get("exception")
        exc_info: Any = (type(exception), exception, exception.__traceback__) if exception is not None else False
        if ("source_traceback" not in context and self._current_handle is not None
                and self._current_handle._source_traceback):  # type: ignore[attr-defined]
            context["handle_traceback"] = self._current_handle._source_traceback  # type: ignore[attr-defined]
        lines = [message]
        for key in sorted(context):
            if key in {"message", "exception"}:
                continue
            value = context[key]
            if key == "source_traceback":
                tb = "".join(traceback.format_list(value))
                value = "Object created at (most recent call last):\n" + tb.rstrip()
            elif key == "handle_traceback":
                tb = "".join(traceback.format_list(value))
                value = "Handle created at (most recent call last):\n" + tb.rstrip()
            else:
                value = repr(value)
            lines.append(f"{key}: {value}")
        logger.error("\n".join(lines), exc_info=exc_info)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        if self._exception_handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error("Exception in default exception handler", exc_info=True)
            return
        try:
            self._exception_handler(self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler(
                    {"message": "Unhandled error in exception handler", "exception": exc, "context": context}
                )
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error(
                    "Exception in default exception handler while handling an unexpected "
                    "error in custom exception handler", exc_info=True,
                )

    # -- debug -----------------------------------------------------------------

    def get_debug(self) -> bool:
        return self._debug

    def set_debug(self, enabled: bool) -> None:
        self._debug = enabled
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, enabled)

    def _set_coroutine_origin_tracking(self, enabled: bool) -> None:
        if bool(enabled) == bool(self._coroutine_origin_tracking_enabled):
            return
        if enabled:
            self._coroutine_origin_tracking_saved_depth = sys.get_coroutine_origin_tracking_depth()
            sys.set_coroutine_origin_tracking_depth(_DEBUG_STACK_DEPTH)
        else:
            sys.set_coroutine_origin_tracking_depth(self._coroutine_origin_tracking_saved_depth or 0)
        self._coroutine_origin_tracking_enabled = enabled

    # -- async generators ------------------------------------------------------

    def _asyncgen_finalizer_hook(self, agen: Any) -> None:
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    def _asyncgen_firstiter_hook(self, agen: Any) -> None:
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after loop.shutdown_asyncgens() call",
                ResourceWarning, source=self, stacklevel=1,
            )
        self._asyncgens.add(agen)

    async def shutdown_asyncgens(self) -> None:
        self._asyncgens_shutdown_called = True
        if not len(self._asyncgens):
            return
        closing = list(self._asyncgens)
        self._asyncgens.clear()
        results = await tasks.gather(*[ag.aclose() for ag in closing], return_exceptions=True)
        for result, agen in zip(results, closing):
            if isinstance(result, Exception):
                self.call_exception_handler({
                    "message": f"an error occurred during closing of asynchronous generator {agen!r}",
                    "exception": result,
                    "asyncgen": agen,
                })


def _run_until_complete_cb(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        exc = fut.exception()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            # Those propagate out of the task's step; the loop stops anyway.
            return
    fut.get_loop().stop()


def _set_result_unless_cancelled(fut: asyncio.Future[Any], result: Any) -> None:
    if not fut.cancelled():
        fut.set_result(result)
