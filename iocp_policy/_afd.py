"""Readiness on the completion port: ``IOCTL_AFD_POLL`` (see the essay in
``_port_iocp.py``, section "AFD poll").

``AfdPoller`` keeps, per base socket handle, the set of ``port.poll`` ops
waiting on it and at most one live ``IOCTL_AFD_POLL`` asking for the union
of their events.  When the union changes the live poll is cancelled
(``CancelIoEx``) and becomes an *orphan*: its ``OVERLAPPED`` and
``AFD_POLL_INFO`` stay referenced from ``records`` until its completion
packet arrives, whatever happens to the ops that wanted it.  Changes are
collected in ``dirty`` and applied once per ``port.run()`` by
:meth:`AfdPoller.refresh`, so a socket whose waiters come and go inside one
loop iteration costs one ioctl, not one per change.
"""

from __future__ import annotations

import errno
from ctypes import Structure, addressof, byref, c_int, c_size_t, sizeof
from typing import Any, Protocol

from . import _winapi as w
from ._port import POLLERR, POLLHUP, POLLIN, POLLOUT, POLLPRI

# Cancelling one of N polls on a single AFD handle costs O(N) inside afd.sys,
# so polls are spread over several handles (trio measured the cubic blow-up
# starting near 1000 polls per handle and settled on 500).
MAX_AFD_GROUP_SIZE = 500

# The name after \Device\Afd is free-form; afd.sys ignores it.  It shows up
# in handle listings (Process Explorer), which helps when debugging.
AFD_DEVICE = r"\\.\GLOBALROOT\Device\Afd\IocpPolicy"

_READABLE = (w.AFD_POLL_RECEIVE | w.AFD_POLL_ACCEPT | w.AFD_POLL_DISCONNECT
             | w.AFD_POLL_ABORT | w.AFD_POLL_LOCAL_CLOSE)
_WRITABLE = w.AFD_POLL_SEND | w.AFD_POLL_CONNECT_FAIL | w.AFD_POLL_ABORT | w.AFD_POLL_LOCAL_CLOSE
_URGENT = w.AFD_POLL_RECEIVE_EXPEDITED | w.AFD_POLL_ABORT | w.AFD_POLL_LOCAL_CLOSE
_TIMEOUT_NEVER = (1 << 63) - 1


def afd_events(events: int) -> int:
    """poll(2) bits -> the AFD_POLL_* bits to ask for."""
    flags = 0
    if events & POLLIN:
        flags |= _READABLE
    if events & POLLOUT:
        flags |= _WRITABLE
    if events & POLLPRI:
        flags |= _URGENT
    return flags


def poll_events(flags: int) -> int:
    """AFD_POLL_* bits that fired -> poll(2) bits, as Linux would report them."""
    mask = 0
    if flags & (w.AFD_POLL_RECEIVE | w.AFD_POLL_ACCEPT | w.AFD_POLL_DISCONNECT):
        mask |= POLLIN
    if flags & w.AFD_POLL_RECEIVE_EXPEDITED:
        mask |= POLLPRI
    if flags & w.AFD_POLL_SEND:
        mask |= POLLOUT
    if flags & w.AFD_POLL_CONNECT_FAIL:
        mask |= POLLOUT | POLLERR
    if flags & w.AFD_POLL_ABORT:
        mask |= POLLIN | POLLOUT | POLLERR | POLLHUP
    return mask


class PollOp(Protocol):
    """What the poller needs of a ``port.poll`` op."""

    _events: int
    _multishot: bool
    _afd_target: AfdTarget | None


class _PollMem(Structure):
    # lpOverlapped first: the completion packet's lpOverlapped is the
    # address of the whole record.
    _fields_ = [("ov", w.OVERLAPPED), ("info", w.AFD_POLL_INFO)]


_INFO_OFFSET: int = _PollMem.info.offset  # type: ignore[attr-defined]


class AfdGroup:
    """One handle on \\Device\\Afd, associated with the port."""

    __slots__ = ("handle", "size")

    def __init__(self, handle: int) -> None:
        self.handle = handle
        self.size = 0  # live (not orphaned) polls issued on it


class AfdPollRecord:
    """One IOCTL_AFD_POLL in flight; owns the memory the kernel writes."""

    __slots__ = ("address", "flags", "group", "mem", "orphan", "target")

    def __init__(self, target: AfdTarget, group: AfdGroup, flags: int) -> None:
        self.mem = _PollMem()
        self.address: int = addressof(self.mem)
        self.target = target
        self.group = group
        self.flags = flags
        self.orphan = False


class AfdTarget:
    """The waiters on one base socket and its live poll."""

    __slots__ = ("base", "dirty", "record", "waiters")

    def __init__(self, base: int) -> None:
        self.base = base
        self.waiters: list[Any] = []
        self.record: AfdPollRecord | None = None
        self.dirty = False


def base_handle(handle: int) -> int:
    """The base provider's handle for a socket (what afd.sys knows).

    Layered service providers wrap sockets; IOCTL_AFD_POLL needs the handle
    underneath (SIO_BASE_HANDLE).  Komodia-style LSPs refuse that ioctl and
    answer SIO_BSP_HANDLE_POLL instead.  Anything that is not a socket is
    refused: AFD can only poll sockets.  (getsockopt(SO_TYPE) decides that:
    Wine answers SIO_BASE_HANDLE even for a pipe.)"""
    sotype = c_int()
    size = c_int(sizeof(sotype))
    if w.ws_getsockopt(handle, w.SOL_SOCKET, w.SO_TYPE, addressof(sotype), addressof(size)) != 0:
        err = w.get_last_error()
        if err == w.WSAENOTSOCK:
            raise OSError(
                errno.ENOTSOCK,
                f"handle {handle} is not a socket: readiness (AFD poll, add_reader/add_writer) works "
                "on sockets only on Windows; use the pipe transports for pipes",
            )
        raise w.winerror(err, "getsockopt(SO_TYPE)")
    out = c_size_t()
    nbytes = w.DWORD()
    for ioctl in (w.SIO_BASE_HANDLE, w.SIO_BSP_HANDLE_POLL):
        if w.WSAIoctl(handle, ioctl, None, 0, byref(out), sizeof(out), byref(nbytes), None, None) == 0:
            return out.value
    return handle  # neither ioctl answered: poll the handle itself


class AfdPoller:
    """All AFD polls of one completion port."""

    def __init__(self, iocp: int, key: int) -> None:
        self._iocp = iocp
        self._key = key
        self._groups: list[AfdGroup] = []
        self.records: dict[int, AfdPollRecord] = {}  # lpOverlapped -> record, orphans included
        self.targets: dict[int, AfdTarget] = {}
        self.dirty: list[AfdTarget] = []
        self.issued = 0

    # -- waiters ------------------------------------------------------------

    def add(self, op: PollOp, base: int) -> None:
        target = self.targets.get(base)
        if target is None:
            target = self.targets[base] = AfdTarget(base)
        target.waiters.append(op)
        op._afd_target = target
        self._mark(target)

    def remove(self, op: PollOp) -> None:
        target = op._afd_target
        op._afd_target = None
        if target is None:
            return
        try:
            target.waiters.remove(op)
        except ValueError:
            return
        self._mark(target)

    def _mark(self, target: AfdTarget) -> None:
        if not target.dirty:
            target.dirty = True
            self.dirty.append(target)

    # -- issuing ------------------------------------------------------------

    def refresh(self, failed: list[tuple[Any, int]]) -> None:
        """Bring every changed socket's live poll in line with its waiters.
        Waiters whose poll cannot be issued are appended to ``failed`` as
        (op, -errno) and forgotten."""
        dirty = self.dirty
        self.dirty = []
        for target in dirty:
            target.dirty = False
            want = 0
            for op in target.waiters:
                want |= afd_events(op._events)
            record = target.record
            if record is not None:
                if record.flags == want:
                    continue
                self._orphan(record)
                target.record = None
            if not want:
                if self.targets.get(target.base) is target:
                    del self.targets[target.base]
                continue
            err = self._issue(target, want)
            if err:
                self._drop(target, -err, failed)

    def _issue(self, target: AfdTarget, flags: int) -> int:
        """Start one IOCTL_AFD_POLL.  Returns 0 or an errno."""
        try:
            group = self._vacant_group()
        except OSError as exc:
            return exc.errno or errno.EIO
        record = AfdPollRecord(target, group, flags)
        info = record.mem.info
        info.Timeout = _TIMEOUT_NEVER
        info.NumberOfHandles = 1
        info.Exclusive = 0
        info.Handles[0].Handle = target.base
        info.Handles[0].Events = flags
        address = record.address
        size = sizeof(w.AFD_POLL_INFO)
        if not w.DeviceIoControl(group.handle, w.IOCTL_AFD_POLL, address + _INFO_OFFSET, size,
                                 address + _INFO_OFFSET, size, None, address):
            err = w.get_last_error()
            if err != w.ERROR_IO_PENDING:
                return w.errno_from_winerror(err)  # failed at once: no packet will come
        # Pending, or done already: either way the packet is on its way.
        self.records[address] = record
        target.record = record
        group.size += 1
        self.issued += 1
        return 0

    def _vacant_group(self) -> AfdGroup:
        for group in self._groups:
            if group.size < MAX_AFD_GROUP_SIZE:
                return group
        handle = w.CreateFileW(AFD_DEVICE, w.SYNCHRONIZE, w.FILE_SHARE_READ | w.FILE_SHARE_WRITE,
                               None, w.OPEN_EXISTING, w.FILE_FLAG_OVERLAPPED, None)
        if not handle or handle == w.INVALID_HANDLE_VALUE:
            raise w.winerror(w.get_last_error(), r"CreateFileW(\Device\Afd)")
        if not w.CreateIoCompletionPort(handle, self._iocp, self._key, 0):
            err = w.get_last_error()
            w.CloseHandle(handle)
            raise w.winerror(err, "CreateIoCompletionPort(AFD handle)")
        group = AfdGroup(handle)
        self._groups.append(group)
        return group

    def _orphan(self, record: AfdPollRecord) -> None:
        """Cancel a live poll; its memory stays in ``records`` until its packet."""
        record.orphan = True
        record.group.size -= 1
        # ERROR_NOT_FOUND: it completed and its packet is already queued.
        w.CancelIoEx(record.group.handle, record.address)

    def _drop(self, target: AfdTarget, res: int, out: list[Any]) -> None:
        for op in target.waiters:
            op._afd_target = None
            out.append((op, res))
        target.waiters = []
        if target.record is not None:
            self._orphan(target.record)
            target.record = None
        if self.targets.get(target.base) is target:
            del self.targets[target.base]

    # -- completions ----------------------------------------------------------

    def complete(self, address: int, out: list[tuple[Any, int, bool]]) -> bool:
        """Handle the packet of the poll at ``address``; append (op, res,
        final) deliveries to ``out``.  False if the address is not ours."""
        record = self.records.pop(address, None)
        if record is None:
            return False
        if record.orphan:
            return True  # cancelled and replaced: nobody waits for this one
        record.group.size -= 1
        target = record.target
        if target.record is record:
            target.record = None
        status = record.mem.ov.Internal & 0xFFFFFFFF
        if status == w.STATUS_CANCELLED:
            self._mark(target)  # cancelled behind our back (handle closed): re-issue
            return True
        if status != w.STATUS_SUCCESS:
            failed: list[tuple[Any, int]] = []
            self._drop(target, -w.errno_from_ntstatus(status), failed)
            out.extend((op, res, True) for op, res in failed)
            return True
        info = record.mem.info
        fired = info.Handles[0].Events if info.NumberOfHandles else 0
        if fired & w.AFD_POLL_LOCAL_CLOSE:
            # The socket was closed under its waiters.
            failed = []
            self._drop(target, -errno.EBADF, failed)
            out.extend((op, res, True) for op, res in failed)
            return True
        mask = poll_events(fired)
        trouble = mask & (POLLERR | POLLHUP)
        keep = []
        for op in target.waiters:
            got = mask & op._events
            if trouble:  # an error wakes every waiter, whatever it asked for
                got |= trouble | (op._events & (POLLIN | POLLOUT))
            if not got:
                keep.append(op)
            elif op._multishot:
                keep.append(op)
                out.append((op, got, False))
            else:
                op._afd_target = None
                out.append((op, got, True))
        target.waiters = keep
        self._mark(target)  # re-arm (or retire) at the next run()
        return True

    # -- shutdown ---------------------------------------------------------------

    def cancel_all(self) -> list[Any]:
        """Cancel every poll; returns the ops that were waiting."""
        waiting: list[Any] = []
        for target in self.targets.values():
            for op in target.waiters:
                op._afd_target = None
                waiting.append(op)
            target.waiters = []
            target.record = None
        self.targets.clear()
        self.dirty = []
        for record in self.records.values():
            if not record.orphan:
                self._orphan(record)
        return waiting

    def close(self) -> None:
        """Close the AFD handles (after the records were reaped or buried)."""
        for group in self._groups:
            w.CloseHandle(group.handle)
        self._groups = []

    def info(self) -> dict[str, Any]:
        return {
            "afd_handles": len(self._groups),
            "afd_polls_in_flight": len(self.records),
            "afd_sockets": len(self.targets),
            "afd_polls_issued": self.issued,
        }
