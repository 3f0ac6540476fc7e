"""The emulated backend: a readiness selector dressed as a completion port.

How it behaves
==============

Where no completion facility can be used (io_uring blocked by a container's
seccomp profile, macOS, the BSDs, a build without a compiler) the loop still
talks to a completion port; this module fakes one with :mod:`selectors`
(epoll, kqueue, select):

* Submitting an operation first *tries the call* (``recv``, ``send``,
  ``accept``...) on the non-blocking socket, unless the previous completion
  of the same op already showed the socket drained (a short read); if the
  call would block, the op is queued on its file descriptor and the fd is
  registered with the selector.
* ``run(timeout)`` asks the selector which fds are ready, performs the queued
  call at the head of each ready queue, and reports the outcome exactly like
  a completion: ``callback(res)`` with a byte count, a new fd, a poll mask or
  ``-errno``.
* Results found at submission time are *not* delivered from inside the
  submitting call: they wait in the completion queue for the next ``run()``,
  as a real port would deliver them, so callers never re-enter themselves.
* Registrations are reconciled lazily, once per ``run()``: an op that
  completes and is re-submitted from its own callback (the steady state of a
  stream transport) costs no ``epoll_ctl`` at all.

Each fd has a FIFO of read-side ops, a FIFO of write-side ops, and a set of
readiness polls (``add_reader``/``add_writer`` and connect).  Selectors are
level-triggered, so a multishot poll reports again on every ``run()`` while
the fd stays ready, which is exactly the ``add_reader`` contract.

Nothing here hands memory to the kernel beyond a single synchronous call, so
cancellation is immediate: the op leaves its queue and completes with
``-ECANCELED`` on the next ``run()``.

``wait_process`` polls a descriptor that turns readable when the child exits
(a pidfd, or a pipe closed by a waiter thread: ``process_exit_fd``); the op
owns it and it is closed when the op's final completion is dispatched, or
when the port closes.  ``wakeup_fd()`` is the write end of the wakeup
socket pair: a signal's byte written there by the interpreter wakes the
selector like ``wakeup()`` does, and is drained with the rest.
"""

from __future__ import annotations

import errno
import os
import select
import selectors
import socket
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from ._port import (
    ECANCELED,
    POLLIN,
    POLLOUT,
    Callback,
    FileLike,
    connect_via_poll,
    process_exit_fd,
    sendfile_via_poll,
)

# Op kinds.
_RECV, _RECV_INTO, _RECVFROM, _RECVFROM_INTO, _ACCEPT, _READ, _READ_INTO = range(1, 8)
_SEND, _SENDV, _WRITE, _POLL = range(8, 12)
_SHORT_READ_KINDS = frozenset({_RECV, _RECV_INTO, _READ, _READ_INTO})
_IOV_MAX = 1024
_MULTISHOT_BATCH = 64  # accepts per readiness event, so one listener cannot starve the rest

_HAS_RECVMSG = hasattr(socket.socket, "recvmsg")
_HAS_SENDMSG = hasattr(socket.socket, "sendmsg")
# Windows (no recvmsg): recvfrom() fails on a datagram longer than the buffer
# (WSAEMSGSIZE) and drops it.  Receive whole datagrams and truncate here.
_MAX_DATAGRAM = 65536
_MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0x100)
_WSAENOTSOCK = 10038


class EmulatedOp:
    """Operation slot of the emulated port (same attributes as ``_uring.Op``)."""

    __slots__ = (
        "__weakref__",
        "_a",
        "_b",
        "_c",
        "_kind",
        "_multishot",
        "_owned_fd",
        "_poll_first",
        "_posted",
        "_state",
        "active",
        "address",
        "callback",
        "cancelling",
        "data",
        "fd",
        "fileobj",
        "msg_flags",
    )

    def __init__(self, fd: int, callback: Callback, fileobj: Any) -> None:
        self.callback = callback
        self.fileobj = fileobj
        self.fd = fd
        self.active = False
        self.cancelling = False
        self.data: bytes | None = None
        self.address: Any = None
        self.msg_flags = 0
        self._kind = 0
        self._a: Any = None
        self._b: Any = 0
        self._c: Any = 0
        self._multishot = False
        self._poll_first = False
        self._posted = False  # final completion queued, not yet dispatched
        self._state: _FdState | None = None
        self._owned_fd = -1  # wait_process: the descriptor polled, closed after the final completion

    def _close_owned(self) -> None:
        fd, self._owned_fd = self._owned_fd, -1
        if fd >= 0:
            socket.close(fd)  # close(2) on POSIX; a socket handle on Windows

    def __repr__(self) -> str:
        state = " active" if self.active else ""
        return f"<emulated.Op fd={self.fd} kind={self._kind}{state}>"


class _FdState:
    __slots__ = ("fd", "owner", "pollers", "readers", "registered", "stale", "writers")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.readers: deque[EmulatedOp] = deque()
        self.writers: deque[EmulatedOp] = deque()
        self.pollers: list[EmulatedOp] = []
        self.registered = 0
        self.owner: Any = None  # fileobj of the last op queued here
        self.stale = False  # the registration may belong to a closed file

    def idle(self) -> bool:
        return not (self.readers or self.writers or self.pollers)

    def wanted(self) -> int:
        mask = 0
        if self.readers:
            mask |= selectors.EVENT_READ
        if self.writers:
            mask |= selectors.EVENT_WRITE
        for op in self.pollers:
            if op._a & POLLIN:
                mask |= selectors.EVENT_READ
            if op._a & POLLOUT:
                mask |= selectors.EVENT_WRITE
        return mask


_WAKE = object()


class EmulatedPort:
    """Completion port over :mod:`selectors`.  See the module docstring."""

    name = "emulated"
    # Windows' select() waits on sockets only: no pipes, so no subprocess
    # pipes either (the stdlib's Windows SelectorEventLoop refuses them too).
    pipes_supported = sys.platform != "win32"

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._fds: dict[int, _FdState] = {}
        self._dirty: set[int] = set()
        self._done: deque[tuple[EmulatedOp, int, bool]] = deque()
        self._closed = False
        self.inflight = 0
        self.error_handler: Callable[[Any, BaseException], object] | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_pending = False
        self._selector.register(self._wake_r.fileno(), selectors.EVENT_READ, _WAKE)

    # -- operation slots ---------------------------------------------------

    def op(self, fileobj: FileLike, callback: Callback) -> EmulatedOp:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return EmulatedOp(fd, callback, fileobj)

    def _begin(self, op: EmulatedOp, kind: int) -> None:
        if self._closed:
            raise RuntimeError("the completion port is closed")
        if op.active:
            raise RuntimeError("operation already in flight")
        op._kind = kind
        op._multishot = False
        op.active = True
        op.cancelling = False
        op._posted = False
        self.inflight += 1

    def _state_for(self, op: EmulatedOp) -> _FdState:
        return self._state_of(op.fd, op.fileobj)

    def _state_of(self, fd: int, fileobj: Any) -> _FdState:
        st = self._fds.get(fd)
        if st is None:
            st = self._fds[fd] = _FdState(fd)
        elif st.registered and st.idle() and (isinstance(fileobj, int) or fileobj is not st.owner):
            # Registrations are reconciled lazily, so an idle fd may still be
            # registered for a file that has since been closed, its number
            # now reused by this one.  epoll forgot the closed file; the
            # selector did not.  Register afresh.
            st.stale = True
        st.owner = fileobj
        return st

    def _queue(self, op: EmulatedOp, writer: bool) -> None:
        """Try the call now (unless the fd is known drained); queue if it would block."""
        st = self._state_for(op)
        q = st.writers if writer else st.readers
        if not q:
            if op._poll_first:
                op._poll_first = False
            else:
                try:
                    res = self._perform(op)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as exc:
                    self._post(op, -(exc.errno or errno.EIO), True)
                    return
                else:
                    if not op._multishot or res < 0:
                        self._post(op, res, True)
                        return
                    self._post(op, res, False)
        op._state = st
        q.append(op)
        self._dirty.add(op.fd)

    # -- submissions ---------------------------------------------------------

    def recv(self, op: EmulatedOp, nbytes: int, flags: int = 0) -> None:
        if nbytes < 0:
            raise ValueError("negative buffersize in recv")
        self._begin(op, _RECV)
        op._a, op._b = nbytes, flags
        self._queue(op, False)

    def recv_into(self, op: EmulatedOp, buffer: Any, nbytes: int = 0, flags: int = 0) -> None:
        self._begin(op, _RECV_INTO)
        op._a, op._b, op._c = buffer, nbytes, flags
        self._queue(op, False)

    def recvfrom(self, op: EmulatedOp, nbytes: int, flags: int = 0) -> None:
        self._begin(op, _RECVFROM)
        op._a, op._b = nbytes, flags
        self._queue(op, False)

    def recvfrom_into(self, op: EmulatedOp, buffer: Any, nbytes: int = 0, flags: int = 0) -> None:
        self._begin(op, _RECVFROM_INTO)
        op._a, op._b, op._c = buffer, nbytes, flags
        self._queue(op, False)

    def read(self, op: EmulatedOp, nbytes: int) -> None:
        self._begin(op, _READ)
        op._a = nbytes
        self._queue(op, False)

    def read_into(self, op: EmulatedOp, buffer: Any, nbytes: int = 0) -> None:
        self._begin(op, _READ_INTO)
        op._a, op._b = buffer, nbytes
        self._queue(op, False)

    def accept(self, op: EmulatedOp, multishot: bool = False) -> None:
        self._begin(op, _ACCEPT)
        op._multishot = bool(multishot)
        self._queue(op, False)

    def send(self, op: EmulatedOp, data: Any, flags: int = 0) -> None:
        self._begin(op, _SEND)
        op._a, op._b = data, flags
        self._queue(op, True)

    def sendv(self, op: EmulatedOp, buffers: Any) -> None:
        buffers = list(buffers[:_IOV_MAX])
        if not buffers:
            raise ValueError("sendv() needs at least one buffer")
        self._begin(op, _SENDV)
        op._a = buffers
        self._queue(op, True)

    def write(self, op: EmulatedOp, data: Any) -> None:
        self._begin(op, _WRITE)
        op._a = data
        self._queue(op, True)

    def poll(self, op: EmulatedOp, events: int, multishot: bool = False) -> None:
        self._begin(op, _POLL)
        op._a = events
        op._multishot = bool(multishot)
        self._add_poller(op, op.fd, op.fileobj)

    def _add_poller(self, op: EmulatedOp, fd: int, fileobj: Any) -> None:
        st = self._state_of(fd, fileobj)
        op._state = st
        st.pollers.append(op)
        self._dirty.add(fd)

    def wait_process(self, op: EmulatedOp, pid: int) -> None:
        self._begin(op, _POLL)
        op._a = POLLIN
        try:
            fd = process_exit_fd(pid)
        except BaseException:
            op.active = False
            self.inflight -= 1
            raise
        op._owned_fd = fd  # closed when the final completion is dispatched
        self._add_poller(op, fd, fd)

    def connect(self, op: EmulatedOp, address: Any) -> None:
        connect_via_poll(self, op, address)

    def sendfile(self, op: EmulatedOp, in_fd: int, offset: int, count: int) -> None:
        sendfile_via_poll(self, op, in_fd, offset, count)

    def post(self, op: EmulatedOp, res: int) -> None:
        self._begin(op, 0)
        self._post(op, res, True)

    def cancel(self, op: EmulatedOp) -> bool:
        if not op.active or op.cancelling or op._posted or self._closed:
            return False
        op.cancelling = True
        self._unqueue(op)
        self._post(op, -ECANCELED, True)
        return True

    # -- performing the calls ------------------------------------------------

    def _perform(self, op: EmulatedOp) -> int:
        """Do the operation's syscall once.  Raises BlockingIOError if not ready."""
        kind = op._kind
        f = op.fileobj
        if kind == _RECV:
            data = f.recv(op._a, op._b)
            op.data = data
            return len(data)
        if kind == _SEND:
            return f.send(op._a, op._b)  # type: ignore[no-any-return]
        if kind == _RECV_INTO:
            return f.recv_into(op._a, op._b, op._c)  # type: ignore[no-any-return]
        if kind == _SENDV:
            if _HAS_SENDMSG:
                return f.sendmsg(op._a)  # type: ignore[no-any-return]
            buffers = op._a
            return f.send(buffers[0] if len(buffers) == 1 else b"".join(buffers))  # type: ignore[no-any-return]
        if kind == _ACCEPT:
            fd, addr = f._accept()
            op.address = None if op._multishot else addr
            return fd  # type: ignore[no-any-return]
        if kind == _RECVFROM:
            if _HAS_RECVMSG:
                data, _, op.msg_flags, op.address = f.recvmsg(op._a, 0, op._b)
            elif f.type == socket.SOCK_DGRAM:
                data, op.address = f.recvfrom(max(op._a, _MAX_DATAGRAM), op._b)
                if len(data) > op._a:
                    data = data[: op._a]
                    op.msg_flags = _MSG_TRUNC
            else:
                data, op.address = f.recvfrom(op._a, op._b)
            op.data = data
            return len(data)
        if kind == _RECVFROM_INTO:
            buf = op._a
            if op._b:
                buf = memoryview(buf)[: op._b]
            if _HAS_RECVMSG:
                n, _, op.msg_flags, op.address = f.recvmsg_into([buf], 0, op._c)
            elif f.type == socket.SOCK_DGRAM:
                data, op.address = f.recvfrom(_MAX_DATAGRAM, op._c)
                view = memoryview(buf).cast("B")
                n = min(len(data), len(view))
                view[:n] = data[:n]
                if n < len(data):
                    op.msg_flags = _MSG_TRUNC
            else:
                n, op.address = f.recvfrom_into(buf, 0, op._c)
            return n  # type: ignore[no-any-return]
        if kind == _READ:
            data = os.read(op.fd, op._a)
            op.data = data
            return len(data)
        if kind == _READ_INTO:
            buf = op._a if not op._b else memoryview(op._a)[: op._b]
            if sys.platform == "win32":  # refused earlier (pipes_supported); for mypy
                raise OSError(errno.ENOTSUP, "no readv() on Windows")
            return os.readv(op.fd, [buf])
        if kind == _WRITE:
            return os.write(op.fd, op._a)
        raise AssertionError(f"unknown op kind {kind}")

    def _post(self, op: EmulatedOp, res: int, final: bool) -> None:
        if final:
            op._posted = True
            op._state = None
        self._done.append((op, res, final))

    def _unqueue(self, op: EmulatedOp) -> None:
        st = op._state
        if st is None:
            return
        op._state = None
        if op._kind == _POLL:
            if op in st.pollers:
                st.pollers.remove(op)
        else:
            for q in (st.readers, st.writers):
                try:
                    q.remove(op)
                except ValueError:
                    continue
                break
        self._dirty.add(st.fd)

    def _service(self, st: _FdState, q: deque[EmulatedOp]) -> None:
        accepted = 0
        while q:
            op = q[0]
            try:
                res = self._perform(op)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                res = -(exc.errno or errno.EIO)
            if op._multishot and res >= 0:
                self._post(op, res, False)
                accepted += 1
                if accepted >= _MULTISHOT_BATCH:
                    return
                continue
            q.popleft()
            self._post(op, res, True)
        self._dirty.add(st.fd)

    def _service_polls(self, st: _FdState, ready: int) -> None:
        for op in list(st.pollers):
            got = op._a & ready
            if not got:
                continue
            if op._multishot:
                self._post(op, got, False)
            else:
                st.pollers.remove(op)
                self._post(op, got, True)
                self._dirty.add(st.fd)

    # -- the wait ------------------------------------------------------------

    def _sync(self) -> None:
        """Bring selector registrations in line with the queues."""
        sel = self._selector
        dirty = self._dirty
        self._dirty = set()
        for fd in dirty:
            st = self._fds.get(fd)
            if st is None:
                continue
            if st.stale:
                st.stale = False
                if st.registered:
                    self._unregister(fd)
                    st.registered = 0
            want = st.wanted()
            if want == st.registered:
                if not want and st.idle():
                    del self._fds[fd]
                continue
            try:
                if want == 0:
                    self._unregister(fd)
                elif st.registered == 0:
                    try:
                        sel.register(fd, want, st)
                    except KeyError:  # a stale entry of a closed fd with the same number
                        self._unregister(fd)
                        sel.register(fd, want, st)
                else:
                    try:
                        sel.modify(fd, want, st)
                    except (OSError, KeyError):
                        self._unregister(fd)
                        sel.register(fd, want, st)
            except (OSError, ValueError) as exc:
                self._fail_fd(st, -(getattr(exc, "errno", None) or errno.EBADF))
                continue
            st.registered = want
            if not want:
                del self._fds[fd]

    def _unregister(self, fd: int) -> None:
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError, OSError):
            pass

    def _fail_fd(self, st: _FdState, res: int) -> None:
        for op in [*st.readers, *st.writers, *st.pollers]:
            self._post(op, res, True)
        st.readers.clear()
        st.writers.clear()
        st.pollers.clear()
        self._unregister(st.fd)
        st.registered = 0
        self._fds.pop(st.fd, None)

    def run(self, timeout: float | None) -> None:
        if self._closed:
            raise RuntimeError("the completion port is closed")
        if self._dirty:
            self._sync()
        if self._done:
            timeout = 0
        try:
            selected = self._selector.select(timeout)
        except OSError as exc:
            # Windows' select() fails as a whole (WSAENOTSOCK) when a socket
            # was closed with operations still queued on it; epoll forgets
            # such a descriptor silently.  Fail those operations, go on.
            if getattr(exc, "winerror", None) != _WSAENOTSOCK or not self._fail_closed_sockets():
                raise
            selected = self._selector.select(0)
        for key, mask in selected:
            st = key.data
            if st is _WAKE:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except OSError:
                    pass
                # Clear only after draining: a wakeup() between a clear and the
                # drain would have its byte swallowed while the flag stays set,
                # and every later wakeup() would skip its write (lost wakeup).
                self._wake_pending = False
                continue
            if st.pollers:
                ready = (POLLIN if mask & selectors.EVENT_READ else 0) | (
                    POLLOUT if mask & selectors.EVENT_WRITE else 0
                )
                self._service_polls(st, ready)
            if mask & selectors.EVENT_READ and st.readers:
                self._service(st, st.readers)
            if mask & selectors.EVENT_WRITE and st.writers:
                self._service(st, st.writers)
        self._dispatch()

    def _fail_closed_sockets(self) -> bool:
        """Windows: find registered sockets that were closed; fail their ops."""
        found = False
        for key in list(self._selector.get_map().values()):
            if key.data is _WAKE:
                continue
            try:
                select.select([key.fd], [], [], 0)
            except OSError:
                found = True
                self._fail_fd(key.data, -errno.EBADF)
        return found

    def _dispatch(self) -> None:
        done = self._done
        for _ in range(len(done)):
            op, res, final = done.popleft()
            if final:
                op.active = False
                op.cancelling = False
                op._posted = False
                self.inflight -= 1
                if op._owned_fd >= 0:
                    op._close_owned()
                if op._kind in _SHORT_READ_KINDS and 0 <= res < self._requested(op):
                    op._poll_first = True  # drained: the next submit waits for readiness
            try:
                op.callback(res)
            except Exception as exc:
                handler = self.error_handler
                if handler is None:
                    raise
                handler(op, exc)

    @staticmethod
    def _requested(op: EmulatedOp) -> int:
        kind = op._kind
        if kind in (_RECV, _READ):
            return op._a  # type: ignore[no-any-return]
        return op._b or len(memoryview(op._a))  # type: ignore[no-any-return]

    def wakeup(self) -> None:
        if self._wake_pending or self._closed:
            return
        self._wake_pending = True
        try:
            self._wake_w.send(b"\0")
        except OSError:  # buffer full: a wakeup is already pending
            pass

    def wakeup_fd(self) -> int:
        if self._closed:
            raise RuntimeError("the completion port is closed")
        return self._wake_w.fileno()

    def prepare_thread(self) -> None:
        pass

    def close(self, timeout: float = 5.0) -> int:
        if self._closed:
            return 0
        self._closed = True
        # The emulated port never lends memory to the kernel across calls:
        # dropping the queues is the whole cancellation.
        for st in self._fds.values():
            for op in [*st.readers, *st.writers, *st.pollers]:
                op.active = False
                op._state = None
                op._close_owned()
        for op, _, final in self._done:
            if final:
                op.active = False
                op._close_owned()
        self._fds.clear()
        self._done.clear()
        self.inflight = 0
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        return 0

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "selector": type(self._selector).__name__,
            "inflight": self.inflight,
        }
