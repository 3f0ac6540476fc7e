"""``add_reader`` / ``add_writer``: readiness callbacks on the completion port.

How readiness fits a completion port (what this module relies on)
=================================================================

A completion port reports operations, not states, so readiness is an
operation too: ``port.poll(op, POLLIN)`` completes once the descriptor is
readable, with the ``poll(2)`` mask (io_uring: ``IORING_OP_POLL_ADD``; the
emulated port: its selector; IOCP: an AFD poll on sockets).  ``add_reader``
promises more than one event, though: *level-triggered* callbacks, called
again on every loop iteration for as long as the descriptor stays readable,
exactly like ``epoll``/``select`` in the stdlib's selector loop.  A reader
that consumes one byte of ten per call must be called ten times, not once
and not eleven times.

io_uring's multishot poll (``IORING_POLL_ADD_MULTI``) does not give that: it
posts a completion per *wakeup* of the file (new data arriving), not per
iteration while data is there, so a reader that leaves data behind would
never hear of it again.  So each direction of each descriptor has one
one-shot poll, re-armed right after its callback has run: the kernel checks
readiness when the poll is armed, so a descriptor still readable completes
at once and its callback runs in the next iteration, and one that was
drained waits.  Re-arming *after* the callback (not when the completion
arrives) is what keeps the count exact: arming before it would report
readiness the callback is about to consume.

The rules, all the stdlib's:

* one reader and one writer per descriptor; adding again replaces the
  callback (the old Handle is cancelled, so a run already queued for it is
  skipped);
* ``remove_*`` returns whether a callback was registered, cancels its Handle
  (so it never runs after removal, even if its completion is already in the
  ready queue) and cancels the poll; a completion that still arrives for it
  is ignored;
* callbacks are ``asyncio.Handle`` s run by the loop (exceptions go to the
  exception handler);
* descriptors owned by a transport are refused (``RuntimeError``), invalid
  file objects raise ``ValueError``, a closed descriptor ``OSError(EBADF)``,
  and where the stdlib's selector is epoll a regular file or directory
  ``PermissionError(EPERM)``, as ``epoll_ctl`` would.

Memory and descriptors: a poll op holds no buffer; the op object is kept by
its ``_Watch`` until its final completion has been reaped, also after
removal (the watch leaves the table only then).  A poll resolves its file
when it is armed, so a later descriptor with the same number is never
confused with it.  The flip side, on io_uring: an armed poll holds a
reference to the file, so a socket closed while still registered stays open
in the kernel (its peer sees no FIN) until ``remove_reader``/``remove_writer``
cancels the poll, where epoll would forget it at ``close()``.  Libraries
remove before or right after closing; the loop's ``close()`` cancels the rest.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import stat
import sys
from collections.abc import Callable
from typing import Any

from ._handles import Handle as _LoopHandle
from ._net import NetMixin
from ._port import POLLIN, POLLOUT

logger = logging.getLogger("asyncio")

_ECANCELED = -errno.ECANCELED
# The stdlib's unix loop uses epoll where it exists, which refuses files that
# cannot be polled (regular files, directories) with EPERM.
_EPOLL = selectors.DefaultSelector.__name__ == "EpollSelector"


class Handle(_LoopHandle):
    """The registered callback.  Named ``Handle`` so that its repr is the
    stdlib's; after each run it re-arms its descriptor's poll."""

    __slots__ = ("_watch",)
    _watch: _Watch

    def _run(self) -> None:
        watch: _Watch = self._watch
        watch.running = True
        try:
            super()._run()
        finally:
            watch.running = False
            watch.after_run()


class _Watch:
    """One direction (POLLIN or POLLOUT) of add_reader/add_writer on one fd."""

    __slots__ = ("cancel_sent", "events", "fd", "fileobj", "handle", "loop", "op", "queued", "running", "table")

    def __init__(self, loop: Any, table: dict[int, _Watch], fd: int, events: int) -> None:
        self.loop = loop
        self.table = table
        self.fd = fd
        self.events = events
        self.op = loop._port.op(fd, self.completed)
        self.handle: Handle | None = None
        self.queued = False  # the handle sits in the ready queue (op idle meanwhile)
        self.running = False  # the handle's callback is running right now
        self.cancel_sent = False  # the op in flight was cancelled: ignore its result
        self.fileobj: Any = fd  # what the caller registered (found again after it is closed)

    def arm(self) -> None:
        self.cancel_sent = False
        self.loop._port.poll(self.op, self.events)

    def set(self, handle: Handle) -> None:
        old, self.handle = self.handle, handle
        if old is not None:
            old.cancel()  # if already queued, it is skipped
        if self.op.active:
            return  # armed: fires for the new handle; cancelling: re-armed when reaped
        if self.queued:
            if self.running:
                return  # re-armed when the running callback returns
            self.queued = False  # the queued handle was cancelled: it will never run
        self.arm()

    def clear(self) -> bool:
        handle = self.handle
        if handle is None:
            return False
        self.handle = None
        handle.cancel()
        if self.op.active:
            if not self.cancel_sent:
                self.cancel_sent = True
                self.loop._port.cancel(self.op)
        elif self.queued and not self.running:
            self.queued = False
        self.forget_if_idle()
        return True

    def forget_if_idle(self) -> None:
        if self.handle is None and not self.op.active and not self.queued and not self.running:
            if self.table.get(self.fd) is self:
                del self.table[self.fd]

    def completed(self, res: int) -> None:
        """The poll's (final) completion, called by the port."""
        handle = self.handle
        if handle is None or self.loop._closed:
            self.forget_if_idle()
            return
        if self.cancel_sent or res == _ECANCELED:
            # Removed and added again meanwhile: whatever this result says is
            # about the old registration; ask afresh.
            self.arm()
            return
        if handle._cancelled:  # type: ignore[attr-defined]
            # Cancelled by its owner (the stdlib then drops the registration).
            self.handle = None
            self.forget_if_idle()
            return
        if res < 0:
            # EBADF and the like: the descriptor went away between
            # add_reader and the poll.  A selector silently forgets such a
            # descriptor; so do we (the registration stays until removed).
            if self.loop.get_debug():
                logger.debug("poll of fd %d for %s failed: %s", self.fd,
                             "reading" if self.events == POLLIN else "writing", os.strerror(-res))
            return
        # Ready (POLLERR/POLLHUP count: the callback's own I/O reports them).
        self.queued = True
        self.loop._ready.append(handle)

    def after_run(self) -> None:
        self.queued = False
        if self.handle is not None and not self.op.active and not self.loop._closed:
            self.arm()  # level-triggered: still ready -> completes at once
        else:
            self.forget_if_idle()


def _fileno(fileobj: Any) -> int:
    if isinstance(fileobj, int):
        return fileobj
    try:
        return int(fileobj.fileno())
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"Invalid file object: {fileobj!r}") from None


class ReadinessMixin(NetMixin):
    """add_reader/remove_reader/add_writer/remove_writer."""

    _readers: dict[int, _Watch]
    _writers: dict[int, _Watch]

    def __init__(self, *, backend: str | None = None) -> None:
        super().__init__(backend=backend)
        self._readers = {}
        self._writers = {}

    def _check_pollable(self, fd: int) -> None:
        if fd < 0:
            raise ValueError(f"Invalid file descriptor: {fd}")
        if sys.platform == "win32":
            # A SOCKET handle, not a CRT fd (os.fstat would say EBADF): the
            # iocp port refuses what it cannot poll (ENOTSOCK), select() too.
            return
        mode = os.fstat(fd).st_mode  # OSError(EBADF) for a closed descriptor, as epoll_ctl
        if _EPOLL and (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    def _add_watch(self, table: dict[int, _Watch], events: int, fileobj: Any,
                   callback: Callable[..., object], args: tuple[Any, ...]) -> Handle:
        self._check_closed()
        fd = _fileno(fileobj)
        self._check_pollable(fd)
        watch = table.get(fd)
        if watch is None:
            watch = table[fd] = _Watch(self, table, fd, events)
        handle = Handle(callback, args, self, None)
        handle._watch = watch
        watch.fileobj = fileobj
        watch.set(handle)
        return handle

    def _remove_watch(self, table: dict[int, _Watch], fileobj: Any) -> bool:
        if self._closed:
            return False
        fd = _fileno(fileobj)
        if fd < 0:
            # A socket closed after add_reader(sock): like selectors, find its
            # registration by the object itself.
            watch = next((w for w in table.values() if w.fileobj is fileobj), None)
            if watch is None:
                raise ValueError(f"Invalid file descriptor: {fd}")
        else:
            watch = table.get(fd)
        return watch is not None and watch.clear()

    # The underscored forms skip the transport check (the stdlib's internals,
    # which some libraries call).
    def _add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> Handle:
        return self._add_watch(self._readers, POLLIN, fd, callback, args)

    def _remove_reader(self, fd: Any) -> bool:
        return self._remove_watch(self._readers, fd)

    def _add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> Handle:
        return self._add_watch(self._writers, POLLOUT, fd, callback, args)

    def _remove_writer(self, fd: Any) -> bool:
        return self._remove_watch(self._writers, fd)

    def _ensure_fd_no_transport(self, sock: Any) -> None:
        _fileno(sock)  # ValueError("Invalid file object: ...") first, as the stdlib
        super()._ensure_fd_no_transport(sock)

    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:  # type: ignore[override]
        self._ensure_fd_no_transport(fd)
        self._add_reader(fd, callback, *args)

    def remove_reader(self, fd: Any) -> bool:
        self._ensure_fd_no_transport(fd)
        return self._remove_reader(fd)

    def add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:  # type: ignore[override]
        self._ensure_fd_no_transport(fd)
        self._add_writer(fd, callback, *args)

    def remove_writer(self, fd: Any) -> bool:
        self._ensure_fd_no_transport(fd)
        return self._remove_writer(fd)

    def _close_io(self) -> None:
        # The port cancels the polls when it closes; the Handles go now.
        for table in (self._readers, self._writers):
            for watch in list(table.values()):
                watch.clear()
            table.clear()
        super()._close_io()
