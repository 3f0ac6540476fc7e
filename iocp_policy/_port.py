"""The completion-port interface every backend implements, and backend choice.

A completion port here is the IOCP model reduced to what an asyncio loop
needs:

1. ``port.op(fileobj, callback)`` makes an *operation slot* bound to a socket
   or file descriptor.  The slot is reusable: a transport keeps one for
   receiving and one for sending and submits them again and again.
2. ``port.recv(op, ...)``, ``port.send(op, ...)``, ... *submit* the operation.
   From then on the operation's buffers belong to the OS.
3. ``port.run(timeout)`` waits at most ``timeout`` seconds (``None``: until
   something happens, ``0``: not at all) and calls ``op.callback(res)`` for
   every completion, directly, in completion order.  ``res >= 0`` is the
   result (bytes transferred, new fd, poll mask); ``res < 0`` is ``-errno``.
   Multishot operations (accept, poll) call back once per event and stay
   ``op.active`` until their last completion.
4. ``port.cancel(op)`` asks for cancellation.  The callback still runs once
   more with the final result: ``-ECANCELED``, or a real result if the
   operation won the race.  Until that final callback the operation's memory
   stays pinned; callers must treat a late success as real data.

Rules the loop relies on, whatever the backend:

* submissions never run callbacks synchronously (no re-entrancy), and never
  drop work;
* an operation is submitted at most once at a time (``RuntimeError``);
* callbacks that raise an ``Exception`` are reported through
  ``port.error_handler(op, exc)``; other ``BaseException`` s propagate out of
  ``run()`` and the completions not yet dispatched stay queued;
* ``wakeup()`` may be called from any thread;
* ``close()`` cancels what is in flight, reaps it with a bounded wait, never
  frees memory the OS may still write, and returns how many operations it
  had to abandon.

Two operations are not I/O on a descriptor:

* ``wait_process(op, pid)`` completes ``op`` once, when the child process
  ``pid`` has exited.  The port does *not* collect the exit status (the
  caller reaps it, e.g. ``Popen.poll()``); it only says "it has exited".
  ``op`` is made with ``port.op(pid, callback)``: the pid stands in for a
  file and is never used as a descriptor or handle.  ``res >= 0``: exited;
  ``res < 0``: ``-errno`` (``-ECANCELED`` after ``cancel(op)``).  Whatever
  the port opens to wait (a pidfd on Linux, a process handle and a
  registered wait on Windows) it owns, and releases after the final
  completion.
* ``wakeup_fd()`` returns a non-blocking descriptor (a socket on Windows)
  for ``signal.set_wakeup_fd``: bytes written to it wake ``run()`` exactly
  like ``wakeup()``, and are discarded.  It stays the same for the life of
  the port, and is closed by ``close()``.  The loop installs it while it
  runs in the main thread and while signal handlers are registered; the
  port itself never calls ``signal.set_wakeup_fd``.
"""

from __future__ import annotations

import contextvars
import errno
import functools
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol, cast

__all__ = [
    "BackendUnavailableError",
    "CompletionPort",
    "Op",
    "error_from_result",
    "in_current_context",
    "open_port",
]

logger = logging.getLogger("iocp_policy")

FileLike = int | Any  # an int fd or an object with fileno()
Callback = Callable[[int], object]


def in_current_context(callback: Callback) -> Callback:
    """*callback* bound to a copy of the calling task's context.

    Completions run straight from ``port.run()``, outside any task; binding
    them this way gives protocol callbacks (and what they schedule) the
    context of the task that opened the transport, as the stdlib's reader
    and writer callbacks have.  A ``partial`` of ``Context.run`` adds no
    Python frame per completion."""
    run: Any = contextvars.copy_context().run  # typeshed's Context.run does not fit partial()
    return cast(Callback, functools.partial(run, callback))

# poll(2) bits used by ``port.poll``; identical on Linux and in our emulation.
POLLIN = 0x001
POLLPRI = 0x002
POLLOUT = 0x004
POLLERR = 0x008
POLLHUP = 0x010

ECANCELED = errno.ECANCELED


class Op(Protocol):
    """An operation slot.  Attributes are read after a completion."""

    callback: Callback

    @property
    def active(self) -> bool: ...  # submitted and final completion not seen

    @property
    def cancelling(self) -> bool: ...

    @property
    def data(self) -> bytes | None: ...  # result of recv/recvfrom/read (taken on read)

    @property
    def address(self) -> Any: ...  # peer of the last recvfrom / one-shot accept

    @property
    def msg_flags(self) -> int: ...  # e.g. MSG_TRUNC after recvfrom

    @property
    def fd(self) -> int: ...

    @property
    def fileobj(self) -> Any: ...


class CompletionPort(Protocol):
    """What the loop core sees of a backend.  See the module docstring.

    ``op`` parameters are typed ``Any``: each backend takes its own :class:`Op`
    type (and only ops it made with ``op()``)."""

    name: str
    error_handler: Callable[[Any, BaseException], object] | None

    @property
    def inflight(self) -> int: ...

    def op(self, fileobj: FileLike, callback: Callback) -> Any: ...

    def recv(self, op: Any, nbytes: int, flags: int = 0) -> None: ...

    def recv_into(self, op: Any, buffer: Any, nbytes: int = 0, flags: int = 0) -> None: ...

    def recvfrom(self, op: Any, nbytes: int, flags: int = 0) -> None: ...

    def recvfrom_into(self, op: Any, buffer: Any, nbytes: int = 0, flags: int = 0) -> None: ...

    def send(self, op: Any, data: Any, flags: int = 0) -> None: ...

    def sendv(self, op: Any, buffers: Any) -> None: ...

    def accept(self, op: Any, multishot: bool = False) -> None: ...

    def poll(self, op: Any, events: int, multishot: bool = False) -> None: ...

    def read(self, op: Any, nbytes: int) -> None: ...

    def read_into(self, op: Any, buffer: Any, nbytes: int = 0) -> None: ...

    def write(self, op: Any, data: Any) -> None: ...

    def connect(self, op: Any, address: Any) -> None: ...  # res 0 or -errno

    def sendfile(self, op: Any, in_fd: int, offset: int, count: int) -> None: ...  # res = bytes sent

    def post(self, op: Any, res: int) -> None: ...  # deliver res as a completion

    def wait_process(self, op: Any, pid: int) -> None: ...  # res >= 0 once pid has exited (not reaped)

    def cancel(self, op: Any) -> bool: ...

    def run(self, timeout: float | None) -> None: ...

    def wakeup(self) -> None: ...

    def wakeup_fd(self) -> int: ...  # for signal.set_wakeup_fd: writing to it == wakeup()

    def prepare_thread(self) -> None: ...  # the loop is about to run in this thread

    def close(self, timeout: float = 5.0) -> int: ...

    def info(self) -> dict[str, Any]: ...


def require_pipes(port: Any, what: str) -> None:
    """Refuse pipe I/O on a port that cannot wait on pipes (the emulated port
    on Windows), before anything is started, with the stdlib's exception."""
    if not getattr(port, "pipes_supported", True):
        raise NotImplementedError(
            f"{what} needs pipe I/O, which the {port.name} backend cannot wait on here "
            "(select() takes sockets only); use the native backend"
        )


class BackendUnavailableError(RuntimeError):
    """A backend forced with IOCP_POLICY_BACKEND (or ``backend=``) cannot run here."""


def error_from_result(res: int) -> OSError:
    """The exception for a negative completion result (``-errno``)."""
    code = -res
    # OSError(errno, msg) picks the right subclass (ConnectionResetError, ...).
    return OSError(code, os.strerror(code))


# -- backend choice ---------------------------------------------------------

BACKENDS = ("io_uring", "iocp", "emulated")
_reported: set[str] = set()  # fallback reasons already logged in this process


def _native_backend() -> str | None:
    if sys.platform == "win32":
        return "iocp"
    if sys.platform.startswith("linux"):
        return "io_uring"
    return None


def _construct(name: str) -> CompletionPort:
    """Build one backend; raises BackendUnavailableError with the reason."""
    if name == "io_uring":
        from ._port_uring import open_uring_port

        uring: CompletionPort = open_uring_port()
        return uring
    if name == "iocp":
        if sys.platform != "win32":
            raise BackendUnavailableError("the iocp backend needs Windows")
        from ._port_iocp import IocpPort  # type: ignore[import-not-found,unused-ignore]

        return IocpPort()  # type: ignore[no-any-return,unused-ignore]
    if name == "emulated":
        from ._port_emulated import EmulatedPort

        return EmulatedPort()
    raise BackendUnavailableError(
        f"unknown backend {name!r}; IOCP_POLICY_BACKEND must be one of {', '.join(BACKENDS)}"
    )


def open_port(backend: str | None = None) -> tuple[CompletionPort, str | None]:
    """Open the completion port for a new loop.

    Returns ``(port, fallback_reason)``.  ``backend`` (or the environment
    variable ``IOCP_POLICY_BACKEND``) forces one backend; forcing one that
    cannot run raises :class:`BackendUnavailableError`.  Otherwise the native
    backend is tried and, if it cannot be set up, the emulated one is used and
    the reason is logged once per process.
    """
    requested = backend or os.environ.get("IOCP_POLICY_BACKEND", "").strip() or "auto"
    if requested != "auto":
        return _construct(requested), None
    native = _native_backend()
    if native is None:
        return _construct("emulated"), None
    try:
        return _construct(native), None
    except BackendUnavailableError as exc:
        reason = str(exc)
    port = _construct("emulated")
    if reason not in _reported:
        _reported.add(reason)
        logger.warning("iocp_policy: %s backend unavailable (%s); using the emulated backend", native, reason)
    return port, reason


# -- operations built from readiness --------------------------------------------
#
# Backends whose kernel interface has no cheap native form of an operation
# (io_uring's CONNECT would need our own sockaddr encoding; neither io_uring
# nor selectors have sendfile(2)) build it from a POLLOUT completion and the
# plain syscall.  IOCP has native ConnectEx/TransmitFile instead.

_IN_PROGRESS = {errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK, errno.EALREADY,
                getattr(errno, "WSAEWOULDBLOCK", -1)}


def connect_via_poll(port: CompletionPort, op: Any, address: Any) -> None:
    """Non-blocking connect(2); the completion comes when the socket turns
    writable, with the result read from SO_ERROR.  Bad addresses raise here."""
    sock = op.fileobj
    err = sock.connect_ex(address)
    if err not in _IN_PROGRESS:
        port.post(op, -err if err else 0)
        return
    user_callback = op.callback

    def writable(res: int) -> None:
        op.callback = user_callback
        if res >= 0:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            res = -err if err else 0
        user_callback(res)

    op.callback = writable
    port.poll(op, POLLOUT)


def sendfile_via_poll(port: CompletionPort, op: Any, in_fd: int, offset: int, count: int) -> None:
    """One zero-copy sendfile(2) of up to ``count`` bytes, retried each time
    the socket turns writable until it moves some bytes or fails."""
    if sys.platform == "win32" or not hasattr(os, "sendfile"):
        port.post(op, -errno.ENOSYS)  # the caller falls back to read + send
        return
    out_fd = op.fd
    user_callback = op.callback

    def attempt() -> int | None:
        try:
            return os.sendfile(out_fd, in_fd, offset, count)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            return -(exc.errno or errno.EIO)

    def writable(res: int) -> None:
        if res >= 0:
            again = attempt()
            if again is None:
                port.poll(op, POLLOUT)  # still full: wait again
                return
            res = again
        op.callback = user_callback
        user_callback(res)

    res = attempt()
    if res is not None:
        port.post(op, res)
        return
    op.callback = writable
    port.poll(op, POLLOUT)


# -- waiting for a child process --------------------------------------------------
#
# POSIX backends wait for a process the way they wait for anything: poll a
# descriptor that turns readable when it exits.  Linux 5.3+ has one built in,
# the pidfd: readable once the process is a zombie, and it stays readable
# after someone reaps it, so there is no race with Popen.poll().  Where
# pidfd_open() is missing or refused (old kernel, a seccomp profile that
# blocks it, another POSIX system) a waiter thread stands in, as the
# stdlib's ThreadedChildWatcher does, but without reaping:
# waitid(WEXITED | WNOWAIT) only observes the exit, so the status is still
# there for Popen to collect, and the thread reports by closing the write end
# of a pipe whose read end is what we poll.


def _exited_pipe_read_end() -> int:
    """A descriptor that is readable at once: the process is already gone."""
    r, w = os.pipe()
    os.close(w)
    return r


def _wait_exit_then_close(pid: int, w: int) -> None:
    if sys.platform == "win32":  # unreachable there (process_exit_fd branches first); for mypy
        raise AssertionError("POSIX only")
    try:
        while True:
            try:
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
                break
            except InterruptedError:
                continue
            except OSError:  # ECHILD: reaped by somebody else; it has exited all the same
                break
    finally:
        os.close(w)  # the poll on the read end now reports POLLHUP


if sys.platform == "win32":  # (an if, not a function-level check: mypy narrows on it)
    import _winapi

    def _windows_exit_socket(pid: int) -> int:
        """Windows (the emulated port's select() takes sockets only): a socket
        whose peer a waiter thread closes when the process exits.  The process
        handle keeps the pid from being reused while we wait."""
        r, w = socket.socketpair()
        try:
            handle = _winapi.OpenProcess(_winapi.SYNCHRONIZE, False, pid)
        except OSError:  # no such process any more: already exited
            w.close()
            return r.detach()

        def wait() -> None:
            try:
                _winapi.WaitForSingleObject(handle, _winapi.INFINITE)
            finally:
                _winapi.CloseHandle(handle)
                w.close()

        try:
            threading.Thread(target=wait, daemon=True, name=f"iocp_policy-wait-{pid}").start()
        except BaseException:
            _winapi.CloseHandle(handle)
            r.close()
            w.close()
            raise
        return r.detach()


def process_exit_fd(pid: int) -> int:
    """A descriptor that turns readable when child ``pid`` exits, without
    reaping it: a pidfd, else the read end of a pipe closed by a waiter
    thread (a socket on Windows).  The caller owns it and closes it with
    ``socket.close()``, which is close(2) on POSIX and closesocket on Windows."""
    if sys.platform == "win32":
        return _windows_exit_socket(pid)
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        try:
            return pidfd_open(pid)  # type: ignore[no-any-return]
        except ProcessLookupError:
            return _exited_pipe_read_end()
        except OSError as exc:  # ENOSYS, EPERM (seccomp), EMFILE...
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                raise
    if not hasattr(os, "waitid"):
        raise OSError(errno.ENOSYS, "no pidfd_open() and no waitid(): cannot wait for a process here")
    r, w = os.pipe()
    try:
        threading.Thread(target=_wait_exit_then_close, args=(pid, w), daemon=True,
                         name=f"iocp_policy-waitpid-{pid}").start()
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    return r
