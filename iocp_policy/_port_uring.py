"""The io_uring backend: the native ring in ``_uring.c`` behind the port interface.

The ring itself (mmap'd SQ/CQ, memory ordering, buffer ownership, setup
flags, cancellation, overflow, the -EAGAIN retry of READ/WRITE on O_NONBLOCK
files, the wake pipe that doubles as the signal wakeup fd) lives in C, see
the essay at the top of ``_uring.c``.  This module only turns it into a
:class:`CompletionPort`: building ops from sockets, explaining why io_uring
cannot be set up, rebinding a single-issuer ring when a loop moves to another
thread, and waiting for processes (a pidfd polled with ``poll_fd``, which
hands the pidfd to the ring: closed right after the final completion).
"""

from __future__ import annotations

import errno
import os
import platform
import threading
from typing import Any

from ._port import (
    POLLIN,
    BackendUnavailableError,
    Callback,
    FileLike,
    connect_via_poll,
    process_exit_fd,
    sendfile_via_poll,
)

try:
    from . import _uring  # type: ignore[attr-defined,unused-ignore]  # compiled, no stub
except ImportError as exc:  # not compiled: the emulated backend takes over
    _uring = None  # type: ignore[assignment]
    _IMPORT_ERROR: str | None = str(exc)
else:
    _IMPORT_ERROR = None

# Tests set this (or the environment variable) to make io_uring_setup "fail"
# with a given errno name, e.g. "EPERM", without touching the machine.
INJECT_ENV = "_IOCP_POLICY_INJECT_URING_ERRNO"
inject_errno: str | None = None

SQ_ENTRIES = 1024
CQ_FACTOR = 4
# Setup flags to treat as refused by the kernel (tests exercise each fallback level).
REJECT_FLAGS = 0
# Tests set this (or the environment variable) so READ/WRITE go out with
# RWF_NOWAIT and complete with -EAGAIN when not ready, as kernels before
# about 6.1 do for every O_NONBLOCK pipe: it exercises the poll-and-resubmit
# path of the ring on any kernel.
INJECT_RW_NOWAIT_ENV = "_IOCP_POLICY_INJECT_RW_NOWAIT"
inject_rw_nowait = False


def _read_sysctl(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def explain_setup_error(code: int, detail: str = "") -> str:
    """One line saying why io_uring_setup() failed, in the user's terms."""
    if code == errno.EPERM:
        disabled = _read_sysctl("/proc/sys/kernel/io_uring_disabled")
        if disabled == "2":
            return "io_uring_setup() failed with EPERM: kernel.io_uring_disabled=2 turns io_uring off"
        if disabled == "1":
            return (
                "io_uring_setup() failed with EPERM: kernel.io_uring_disabled=1 limits io_uring "
                "to CAP_SYS_ADMIN and the kernel.io_uring_group group"
            )
        return (
            "io_uring_setup() failed with EPERM: blocked by a seccomp filter "
            "(Docker's and containerd's default profiles block io_uring)"
        )
    if code == errno.ENOSYS:
        return "io_uring_setup() failed with ENOSYS: this kernel (or sandbox) has no io_uring"
    if code == errno.ENOMEM:
        return "io_uring_setup() failed with ENOMEM: RLIMIT_MEMLOCK too low for the rings"
    if code == errno.ENOTSUP and detail:
        return detail
    return f"io_uring_setup() failed with {errno.errorcode.get(code, code)}: {os.strerror(code)}"


if _uring is not None:

    class UringPort(_uring.Ring):  # type: ignore[misc,name-defined]
        """io_uring completion port.  Submission methods are the C ring's."""

        name = "io_uring"

        def op(self, fileobj: FileLike, callback: Callback) -> Any:
            fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
            return _uring.Op(fd, callback, fileobj)

        def connect(self, op: Any, address: Any) -> None:
            connect_via_poll(self, op, address)

        def sendfile(self, op: Any, in_fd: int, offset: int, count: int) -> None:
            sendfile_via_poll(self, op, in_fd, offset, count)

        def wait_process(self, op: Any, pid: int) -> None:
            fd = process_exit_fd(pid)
            try:
                self.poll_fd(op, fd, POLLIN)  # the ring owns fd from here on
            except BaseException:
                os.close(fd)
                raise

        def prepare_thread(self) -> None:
            """Called by run_forever: with IORING_SETUP_SINGLE_ISSUER only the
            thread that first ran the loop may submit.  A loop that moves to
            another thread gets a fresh ring if nothing is in flight."""
            owner = self.owner
            if owner is None or not self.single_issuer or owner == threading.get_ident():
                return
            if self.inflight:
                raise RuntimeError(
                    "this loop's io_uring ring (IORING_SETUP_SINGLE_ISSUER) belongs to the thread "
                    f"that first ran it and {self.inflight} operation(s) are still in flight there; "
                    "run the loop from that thread, or set IOCP_POLICY_BACKEND=emulated"
                )
            self.reset()

        def info(self) -> dict[str, Any]:
            d: dict[str, Any] = {"backend": self.name, "kernel": platform.release()}
            d.update(self.ring_info())
            d["multishot_accept"] = True
            return d


def open_uring_port() -> Any:
    if _uring is None:
        raise BackendUnavailableError(
            f"the native extension iocp_policy._uring is not built ({_IMPORT_ERROR}); "
            "reinstall with a C compiler available"
        )
    injected = inject_errno or os.environ.get(INJECT_ENV)
    if injected:
        code = getattr(errno, injected)
        raise BackendUnavailableError(explain_setup_error(code) + " [injected for testing]")
    try:
        port = UringPort(SQ_ENTRIES, CQ_FACTOR, REJECT_FLAGS)
    except OSError as exc:
        raise BackendUnavailableError(explain_setup_error(exc.errno or 0, exc.strerror or "")) from exc
    if inject_rw_nowait or os.environ.get(INJECT_RW_NOWAIT_ENV) == "1":
        port.inject_rw_nowait = True
    return port
