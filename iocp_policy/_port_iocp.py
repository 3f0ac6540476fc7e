"""The iocp backend: a Windows I/O completion port, driven from Python.

How IOCP and AFD poll really behave (what this file relies on)
===============================================================

The port.  ``CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0)``
makes a kernel queue.  ``CreateIoCompletionPort(handle, port, key, 0)``
*associates* a socket, pipe or file with it: from then on every overlapped
operation on that handle queues a *completion packet* to that port when it
finishes.  The association is for the lifetime of the handle and cannot be
undone or moved (Windows 8.1's FileReplaceCompletionInformation aside): a
socket that one event loop has used can never report to another loop's
port.  Asking a second time fails with ERROR_INVALID_PARAMETER, which is
also what "associated with somebody else's port" looks like, so we remember
which handles we associated and refuse the others with a clear error instead
of waiting forever for packets that go elsewhere.

Operations.  ``WSARecv``, ``WSASend``, ``WSARecvFrom``, ``AcceptEx``,
``ConnectEx``, ``TransmitFile``, ``ReadFile``, ``WriteFile`` and
``DeviceIoControl`` all take an ``lpOverlapped``.  The address of that
OVERLAPPED is the operation's *key*: the packet carries it back
(``OVERLAPPED_ENTRY.lpOverlapped``) and we look the operation up by it.
The kernel writes the final NTSTATUS into ``lpOverlapped->Internal`` and the
byte count into ``InternalHigh``; until then ``Internal`` is STATUS_PENDING.
From the call until the packet, the OVERLAPPED, the WSABUF array, the data
buffers, the flags word, the address buffer and its length all belong to
the kernel, which may write them at any moment (a receive fills its buffer
from a DPC on another CPU).  Every one of them is owned by the ``IocpOp``
(``_mem``, ``_rbuf``, ``_pins``, ``_wsabufs``, ``_conn``), and the op is
referenced from ``IocpPort._pending`` until its packet is dequeued: also
after cancellation, also when Python code dropped every other reference.
User buffers are *exported* (``PyObject_GetBuffer``), so a bytearray being
received into refuses to resize (BufferError) rather than moving under the
kernel.

Which calls produce a packet.  The documented rule, and the one the I/O
manager implements: a call that returns success, or fails with
ERROR_IO_PENDING, will queue a packet.  A call that fails with a real error
(an NT_ERROR status) queues nothing: its result is known now, and we post it
ourselves (``port.post`` semantics: delivered at the next ``run()``, never
from inside the submission).  The awkward middle is the NT *warning*
statuses: a datagram larger than the buffer (STATUS_BUFFER_OVERFLOW, seen as
WSAEMSGSIZE or ERROR_MORE_DATA) fails the call *and* queues a packet.
Rather than bet on that, we treat such calls as pending and post a probe
packet behind them (see late cancel below): the probe proves or disproves
that the real packet exists.  We never set
FILE_SKIP_COMPLETION_PORT_ON_SUCCESS: it changes the handle forever (for
every later user of the socket), it is unreliable with non-IFS layered
providers, and the port contract forbids synchronous callbacks anyway, so
the saving would be one queue round trip.

Dequeuing.  ``GetQueuedCompletionStatusEx`` takes up to MAX_EVENTS packets
per call (CPython's proactor takes one per ``GetQueuedCompletionStatus``).
Timeouts are rounded *up* to whole milliseconds, so a wait never ends
before the loop's next timer is due.  Dequeued entries sit in ``_entries``
until they are copied into ``_raw``; ``_nremoved`` is zeroed only after the
copy.  A KeyboardInterrupt raised by a signal handler in between (CPython
runs handlers right after a C call returns) therefore loses nothing: the
next ``run()`` salvages the batch.

Completion keys say who a packet is for: KEY_IO (associated sockets and
pipes), KEY_AFD (AFD poll handles), KEY_WAKEUP (``wakeup()``), and
KEY_LATE_CANCEL (probes, below).

Cancellation.  ``CancelIoEx(handle, lpOverlapped)`` only *asks*.  The packet
still comes, with STATUS_CANCELLED or, if the operation won the race, with
its real result (a receive that already copied data reports it: the caller
must treat that as real data).  ERROR_NOT_FOUND means the kernel no longer
has the operation: it completed and its packet is queued -- or the packet
will never come because the handle is not associated with this port (or
skips the port on success).  trio's answer, used here too, is the *late
cancel*: post a packet of our own with the same lpOverlapped (completion
key KEY_LATE_CANCEL, the submission's sequence number as the byte count).
Packets are FIFO, so if the real packet exists it is dequeued first and the
probe finds nothing to do.  If the probe comes first, the operation is over
(``Internal`` is no longer STATUS_PENDING) but unreported: we finish it from
the OVERLAPPED itself and keep that OVERLAPPED forever in ``_tombstones``,
so that a straggling packet is recognised and its address never reused.
That is what keeps ``close()`` from waiting forever on an operation that
will never report (the ProactorEventLoop's ``close()`` hangs there,
gh-111604).

Closing.  ``close(timeout)`` cancels everything in flight, then reaps with a
bounded wait.  Whatever the kernel has not released by the deadline goes to
the module-level ``graveyard`` (referenced forever) with an error log: a
leaked buffer is a bug report, a freed buffer the kernel still writes is
memory corruption.  No callbacks run during close.

Wakeups.  ``wakeup()`` is ``PostQueuedCompletionStatus(port, 0,
KEY_WAKEUP, NULL)`` from any thread, coalesced by a flag cleared when the
packet is dequeued: no self-pipe.  Signals are different: CPython's C signal
handler only writes to a socket (``signal.set_wakeup_fd``), and a thread
blocked in GetQueuedCompletionStatusEx notices nothing else.  So
``wakeup_fd()`` hands out the write end of a socketpair whose read end
always has a WSARecv outstanding on the port, as the ProactorEventLoop's
self-pipe does; the loop installs it with ``set_wakeup_fd`` (the port never
does).  Ctrl-C then ends the wait, the interpreter runs the Python-level
handler (asyncio.Runner's cancels the main task) and the loop carries on.

Processes.  ``wait_process(op, pid)`` opens the process (SYNCHRONIZE) and
registers a thread-pool wait on its handle whose callback posts a packet
carrying ``lpOverlapped`` to the port (``_overlapped.RegisterWaitWithQueue``,
the C callback the stdlib uses: no Python runs in the pool thread).  That
OVERLAPPED is only a key; no kernel call writes it.  Cancelling is
``UnregisterWaitEx(wait, INVALID_HANDLE_VALUE)``, which returns once the
callback can no longer run, followed by a late-cancel probe: a packet the
callback posted is ahead of the probe, so "exited" and "cancelled" cannot
both be reported.

Accept.  ``AcceptEx`` needs a pre-made socket of the listener's family;
after the packet, ``SO_UPDATE_ACCEPT_CONTEXT`` makes it a normal connected
socket (getpeername, shutdown).  The peer address comes from
``GetAcceptExSockaddrs`` on the AcceptEx output buffer, which stays valid
even if the peer has reset meanwhile.  Windows reports a client that
connected and reset before the accept completed as a failed accept
(ERROR_NETNAME_DELETED, the famous "WinError 64"; also ECONNABORTED):
that is a per-connection error, not a listener error, so it is swallowed
and AcceptEx re-issued -- the server's accept loop survives it.  Multishot
accept re-issues AcceptEx after every connection until cancelled.

Connect.  ``ConnectEx`` refuses unbound sockets: bind to the wildcard
address first, as the stdlib's ``BindLocal`` does.  After the packet,
``SO_UPDATE_CONNECT_CONTEXT``.  UDP "connect" is synchronous (it only sets
the default peer) and is reported through ``post``.

AFD poll (readiness without a selector thread: add_reader/add_writer).
Winsock's own select/WSAPoll are built on ``IOCTL_AFD_POLL``, an ioctl on
the "Ancillary Function Driver" (afd.sys) that every socket is a file of.
Open ``\\Device\\Afd\\<anything>`` as a file, associate that handle with
the port, and issue ``DeviceIoControl(afd, IOCTL_AFD_POLL, &info, ...,
lpOverlapped)`` with an ``AFD_POLL_INFO`` naming the socket's *base* handle
(``SIO_BASE_HANDLE``; layered providers wrap sockets) and the AFD_POLL_*
events wanted.  The packet arrives on the port like any other; the kernel
has rewritten ``Handles[0].Events`` with what fired.  Facts from trio's
notes, wepoll, libuv and mio, which this follows:
  * readiness is one-shot: after the packet, re-issue while someone waits
    (``add_reader`` keeps re-arming, which gives level-triggered behaviour:
    a socket that stays readable completes the next poll at once);
  * only ONE poll per socket at a time: two polls on one socket confuse
    afd.sys (a writability poll gets completed by readability).  Readers
    and writers of a socket are coalesced into one poll asking for the
    union; when the union changes the old poll is cancelled and a new one
    issued (``_afd.AfdPoller``);
  * cancelling one of N polls on one AFD handle costs O(N) in the driver,
    so sockets are spread over several AFD handles of at most 500 polls;
  * AFD_POLL_LOCAL_CLOSE fires when the socket is closed under the poll;
  * only sockets can be polled.  Pipes and consoles are refused (ENOTSOCK)
    with a message pointing to the pipe transports.

Errors.  Results are ``-errno``.  The NTSTATUS in the OVERLAPPED is mapped
directly (STATUS_CONNECTION_RESET -> ECONNRESET, STATUS_CANCELLED ->
ECANCELED, ...) the way ``WSAGetOverlappedResult`` reports it, rather than
through ``RtlNtStatusToDosError``, which would turn a reset into
ERROR_NETNAME_DELETED.  On Windows Python's errno values for socket errors
are the WSA numbers (errno.ECONNRESET == 10054), so ``OSError(-res)`` still
picks ConnectionResetError and friends.  A pipe read that meets a closed
writer (STATUS_PIPE_BROKEN) or end of file is end-of-stream: result 0.

References: trio ``src/trio/_core/_io_windows.py`` (the header essay and
notes-to-self/afd-lab.py), wepoll (piscisaureus/wepoll), libuv
``src/win/poll.c``, mio ``src/sys/windows/afd.rs``, CPython
``Lib/asyncio/windows_events.py`` and ``Modules/overlapped.c``.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import importlib
import itertools
import logging
import math
import socket
import struct
import sys
import time
import weakref
from collections.abc import Callable
from ctypes import Structure, addressof, byref, c_int, c_uint8, create_string_buffer, string_at
from typing import Any, cast

from . import _winapi as w
from ._afd import AfdPoller, AfdTarget, base_handle
from ._port import ECANCELED, BackendUnavailableError, Callback, CompletionPort, FileLike, connect_via_poll

log = logging.getLogger("iocp_policy")

__all__ = ["IocpOp", "IocpPort", "graveyard"]

MAX_EVENTS = 256  # packets per GetQueuedCompletionStatusEx
_IOV_MAX = 1024  # buffers per sendv, as on Linux

KEY_IO = 0
KEY_AFD = 1
KEY_WAKEUP = 2
KEY_LATE_CANCEL = 3

# Op kinds.
(_IDLE, _RECV, _RECV_INTO, _RECVFROM, _RECVFROM_INTO, _SEND, _SENDV, _ACCEPT, _CONNECT,
 _READ, _READ_INTO, _WRITE, _SENDFILE, _POLL, _POST, _WAIT) = range(16)
_KIND_NAMES = ("idle", "recv", "recv_into", "recvfrom", "recvfrom_into", "send", "sendv", "accept",
               "connect", "read", "read_into", "write", "sendfile", "poll", "post", "wait_process")
_BYTES_KINDS = frozenset({_RECV, _RECVFROM, _READ})  # results land in op._rbuf, handed out as op.data
_READ_KINDS = frozenset({_READ, _READ_INTO})
_EOF_STATUSES = frozenset({w.STATUS_PIPE_BROKEN, w.STATUS_END_OF_FILE})
_EOF_ERRORS = frozenset({w.ERROR_BROKEN_PIPE, w.ERROR_HANDLE_EOF})
# Call failures that still queue a packet (NT warning statuses), verified by a probe.
_WARNING_ERRORS = frozenset({w.ERROR_MORE_DATA, w.WSAEMSGSIZE})
# An accept that fails with these lost one client, not the listener
# (Windows: ERROR_NETNAME_DELETED; Wine: STATUS_INVALID_CONNECTION).
_PER_CONNECTION = frozenset({errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN, errno.ETIMEDOUT,
                             errno.ENETRESET, errno.EHOSTUNREACH, errno.ENETUNREACH})

# A plain bool, not a sys.platform test, so that type checkers on other
# platforms still see the whole class.
_WINDOWS: bool = sys.platform == "win32"

# Operations the kernel never released before close() gave up: referenced
# here forever so that their memory is never reused (see the essay).
graveyard: list[Any] = []


class _OpMem(Structure):
    """Everything of one operation the kernel may write, in one block.
    lpOverlapped is the address of the block (``ov`` comes first)."""

    _fields_ = [
        ("ov", w.OVERLAPPED),
        ("wsabuf", w.WSABUF),
        ("flags", w.DWORD),  # WSARecv/WSARecvFrom lpFlags (in/out)
        ("addrlen", c_int),  # WSARecvFrom lpFromlen (written at completion)
        ("addr", c_uint8 * w.SOCKADDR_STORAGE_SIZE),  # WSARecvFrom lpFrom, ConnectEx name
        ("acceptbuf", c_uint8 * (2 * w.ACCEPT_ADDRESS_LENGTH)),  # AcceptEx lpOutputBuffer
        ("received", w.DWORD),  # AcceptEx lpdwBytesReceived
    ]


def _offset(field: str) -> int:
    return int(getattr(_OpMem, field).offset)


_WSABUF_OFF = _offset("wsabuf")
_FLAGS_OFF = _offset("flags")
_ADDRLEN_OFF = _offset("addrlen")
_ADDR_OFF = _offset("addr")
_ACCEPTBUF_OFF = _offset("acceptbuf")
_RECEIVED_OFF = _offset("received")


class IocpOp:
    """Operation slot of the iocp port (same attributes as ``_uring.Op``)."""

    __slots__ = (
        "__weakref__", "_afd_target", "_assoc", "_conn", "_data", "_done", "_events", "_internal",
        "_kind", "_mem", "_multishot", "_ovaddr", "_params", "_pins", "_poll_base", "_proc", "_rbuf", "_seq",
        "_wsabufs", "active", "address", "callback", "cancelling", "fd", "fileobj", "msg_flags",
    )

    def __init__(self, fd: int, callback: Callback, fileobj: Any) -> None:
        self.callback = callback
        self.fileobj = fileobj
        self.fd = fd
        self.active = False
        self.cancelling = False
        self.address: Any = None
        self.msg_flags = 0
        self._data: bytes | None = None
        self._kind = _IDLE
        self._mem: _OpMem | None = None
        self._ovaddr = 0
        self._seq = 0
        self._pins: list[w.Pin] = []
        self._rbuf: ctypes.Array[ctypes.c_char] | None = None
        self._wsabufs: Any = None
        self._conn: socket.socket | None = None
        self._multishot = False
        self._events = 0
        self._afd_target: AfdTarget | None = None
        self._poll_base = -1
        self._params: tuple[int, int, int] | None = None
        self._done = False  # the final result is queued for dispatch
        self._internal = False  # the port's own (signal wakeup): not counted, not cancellable by users
        self._assoc = False
        self._proc: list[int] | None = None  # wait_process: [process handle, wait handle or 0]

    @property
    def data(self) -> bytes | None:
        """Bytes of the last recv/recvfrom/read (handed over: taken on read)."""
        if self.active:
            return None
        d = self._data
        self._data = None
        return d

    def __repr__(self) -> str:
        state = (" active" if self.active else "") + (" cancelling" if self.cancelling else "")
        return f"<iocp.Op handle={self.fd} {_KIND_NAMES[self._kind]}{state}>"


def _overlapped_module() -> Any:
    """CPython's _overlapped (Windows only): RegisterWaitWithQueue's callback
    is C code that posts to the port without taking the GIL."""
    return importlib.import_module("_overlapped")


def _fileno(fileobj: FileLike) -> int:
    return fileobj if isinstance(fileobj, int) else int(fileobj.fileno())


def _ms(timeout: float | None) -> int:
    """Seconds -> GetQueuedCompletionStatusEx milliseconds, rounded up."""
    if timeout is None:
        return w.INFINITE
    if timeout <= 0:
        return 0
    return min(math.ceil(timeout * 1000), w.INFINITE - 1)


class IocpPort:
    """Completion port over a Windows IOCP.  See the module docstring."""

    name = "iocp"

    def __init__(self) -> None:
        self._closed = True  # until the port exists
        self._iocp: int = 0
        if not _WINDOWS:
            raise BackendUnavailableError("the iocp backend needs Windows")
        try:
            w.load()
            w.load_extensions()
        except (OSError, AttributeError) as exc:
            raise BackendUnavailableError(f"cannot load the Win32 socket API: {exc}") from exc
        handle = w.CreateIoCompletionPort(w.INVALID_HANDLE_VALUE, None, 0, 0)
        if not handle:
            raise BackendUnavailableError(
                f"CreateIoCompletionPort failed: {w.winerror(w.get_last_error(), 'CreateIoCompletionPort')}")
        self._iocp = handle
        self._closed = False
        self._closing = False
        self._dispatching = False
        self.inflight = 0
        self.error_handler: Callable[[Any, BaseException], object] | None = None
        self._pending: dict[int, IocpOp] = {}  # lpOverlapped -> op, from submission to packet
        self._tombstones: dict[int, _OpMem] = {}  # finished without a packet (see late cancel)
        self._backlog: collections.deque[tuple[IocpOp, int, bool]] = collections.deque()
        self._raw: collections.deque[tuple[int, int, int]] = collections.deque()
        self._entries = (w.OVERLAPPED_ENTRY * MAX_EVENTS)()
        self._entries_addr = addressof(self._entries)
        self._nremoved = w.ULONG(0)
        self._afd: AfdPoller | None = None
        self._wake_pending = False
        self._seq = itertools.count(1)
        self._assoc_objs: weakref.WeakSet[Any] = weakref.WeakSet()
        self._assoc_handles: set[int] = set()
        self._stats = collections.Counter[str]()
        self._wake_socks: tuple[socket.socket, socket.socket] | None = None  # made by wakeup_fd()

    # -- operation slots ---------------------------------------------------

    def op(self, fileobj: FileLike, callback: Callback) -> IocpOp:
        return IocpOp(_fileno(fileobj), callback, fileobj)

    def _check(self, op: IocpOp) -> None:
        if self._closed or self._closing:
            raise RuntimeError("the completion port is closed")
        if not isinstance(op, IocpOp):
            raise TypeError(f"expected an iocp Op, got {type(op).__name__}")
        if op.active:
            raise RuntimeError("operation already in flight")

    def _prepare(self, op: IocpOp, kind: int) -> _OpMem | None:
        """Checks, association and a clean OVERLAPPED for a kernel operation.
        Returns None if the op already failed (its error is posted)."""
        op._kind = kind
        op._multishot = False
        op.cancelling = False
        op.address = None
        op.msg_flags = 0
        op._data = None
        if op.fd < 0:
            self._fail_now(op, -errno.EBADF)
            return None
        if not op._assoc:
            err = self._associate(op)
            if err:
                self._fail_now(op, -err)
                return None
        return self._clean_overlapped(op)

    @staticmethod
    def _clean_overlapped(op: IocpOp) -> _OpMem:
        """The op's OVERLAPPED block, zeroed for the next call.  Only called
        when the kernel is done with it (no packet outstanding)."""
        mem = op._mem
        if mem is None:
            mem = op._mem = _OpMem()
            op._ovaddr = addressof(mem)
        ov = mem.ov
        ov.Internal = ov.InternalHigh = ov.Offset = ov.OffsetHigh = 0
        ov.hEvent = None
        return mem

    def _associate(self, op: IocpOp) -> int:
        """Associate op's handle with the port (once per handle).  Returns 0
        or an errno for a handle that is not usable at all."""
        fobj = op.fileobj
        if not isinstance(fobj, int):
            try:
                if fobj in self._assoc_objs:
                    op._assoc = True
                    return 0
            except TypeError:  # not weak-referenceable
                pass
        h = op.fd
        if not w.CreateIoCompletionPort(h, self._iocp, KEY_IO, 0):
            err = w.get_last_error()
            if err != w.ERROR_INVALID_PARAMETER:
                return w.errno_from_winerror(err)
            if h not in self._assoc_handles:
                raise OSError(
                    errno.EINVAL,
                    f"handle {h} is already associated with another I/O completion port (was it used "
                    "by another event loop?); Windows binds a handle to one port for its whole life",
                )
        self._assoc_handles.add(h)
        if not isinstance(fobj, int):
            try:
                self._assoc_objs.add(fobj)
            except TypeError:
                pass
        op._assoc = True
        return 0

    def _issued(self, op: IocpOp, ok: bool) -> None:
        """Account for a just-made overlapped call (``ok``: it returned success)."""
        if ok:
            self._track(op)
            return
        err = w.get_last_error()
        if err == w.ERROR_IO_PENDING:
            self._track(op)
        elif err in _WARNING_ERRORS:
            # Truncated datagram or pipe message: the packet should follow.
            # Probe rather than trust it (see "Which calls produce a packet").
            self._track(op)
            self._late_cancel(op)
        elif err in _EOF_ERRORS and op._kind in _READ_KINDS:
            if op._kind == _READ:
                op._data = b""
            self._fail_now(op, 0)
        else:
            self._fail_now(op, -w.errno_from_winerror(err))

    def _track(self, op: IocpOp) -> None:
        """The kernel owns the op until its packet."""
        if not op.active:
            op.active = True
            if not op._internal:
                self.inflight += 1
        op._done = False
        op._seq = next(self._seq)
        self._pending[op._ovaddr] = op

    def _fail_now(self, op: IocpOp, res: int) -> None:
        """The operation's result is known without a packet: queue it."""
        self._release(op)
        if not op.active:
            op.active = True
            if not op._internal:
                self.inflight += 1
        op._done = True
        self._backlog.append((op, res, True))

    def _release(self, op: IocpOp) -> None:
        """Drop what only the kernel needed.  Never called while it may write."""
        for pin in op._pins:
            pin.release()
        op._pins = []
        op._wsabufs = None
        conn = op._conn
        if conn is not None:
            op._conn = None
            conn.close()
        if op._proc is not None:
            self._unregister_process_wait(op, blocking=False)
            w.CloseHandle(op._proc[0])
            op._proc = None

    def _params_of(self, op: IocpOp) -> tuple[int, int, int]:
        """(family, type, proto) of op's socket."""
        params = op._params
        if params is None:
            f = op.fileobj
            if isinstance(f, socket.socket):
                params = (int(f.family), int(f.type), f.proto)
            else:
                s = socket.socket(fileno=op.fd)
                try:
                    params = (int(s.family), int(s.type), s.proto)
                finally:
                    s.detach()
            op._params = params
        return params

    # -- receiving --------------------------------------------------------------

    def _recv_buffer(self, op: IocpOp, nbytes: int) -> int:
        buf = op._rbuf
        if buf is None or len(buf) < nbytes:
            buf = op._rbuf = create_string_buffer(max(nbytes, 1))
        return addressof(buf)

    def recv(self, op: IocpOp, nbytes: int, flags: int = 0) -> None:
        self._check(op)
        if nbytes < 0:
            raise ValueError("negative buffersize in recv")
        mem = self._prepare(op, _RECV)
        if mem is None:
            return
        self._wsarecv(op, mem, self._recv_buffer(op, nbytes), nbytes, flags)

    def recv_into(self, op: IocpOp, buffer: Any, nbytes: int = 0, flags: int = 0) -> None:
        self._check(op)
        if nbytes < 0:
            raise ValueError("negative buffersize in recv_into")
        pin = w.Pin(buffer, True)
        if nbytes > pin.length:
            pin.release()
            raise ValueError("buffer too small for requested bytes")
        mem = self._prepare(op, _RECV_INTO)
        if mem is None:
            pin.release()
            return
        op._pins = [pin]
        self._wsarecv(op, mem, pin.address, nbytes or pin.length, flags)

    def _wsarecv(self, op: IocpOp, mem: _OpMem, address: int, nbytes: int, flags: int) -> None:
        mem.wsabuf.len = nbytes
        mem.wsabuf.buf = address
        mem.flags = flags
        base = op._ovaddr
        rc = w.WSARecv(op.fd, base + _WSABUF_OFF, 1, None, base + _FLAGS_OFF, base, None)
        self._issued(op, rc == 0)

    def recvfrom(self, op: IocpOp, nbytes: int, flags: int = 0) -> None:
        self._check(op)
        if nbytes < 0:
            raise ValueError("negative buffersize in recvfrom")
        mem = self._prepare(op, _RECVFROM)
        if mem is None:
            return
        self._wsarecvfrom(op, mem, self._recv_buffer(op, nbytes), nbytes, flags)

    def recvfrom_into(self, op: IocpOp, buffer: Any, nbytes: int = 0, flags: int = 0) -> None:
        self._check(op)
        pin = w.Pin(buffer, True)
        if nbytes < 0 or nbytes > pin.length:
            pin.release()
            raise ValueError("nbytes is greater than the length of the buffer")
        mem = self._prepare(op, _RECVFROM_INTO)
        if mem is None:
            pin.release()
            return
        op._pins = [pin]
        self._wsarecvfrom(op, mem, pin.address, nbytes or pin.length, flags)

    def _wsarecvfrom(self, op: IocpOp, mem: _OpMem, address: int, nbytes: int, flags: int) -> None:
        mem.wsabuf.len = nbytes
        mem.wsabuf.buf = address
        mem.flags = flags
        mem.addrlen = w.SOCKADDR_STORAGE_SIZE
        base = op._ovaddr
        rc = w.WSARecvFrom(op.fd, base + _WSABUF_OFF, 1, None, base + _FLAGS_OFF, base + _ADDR_OFF,
                           base + _ADDRLEN_OFF, base, None)
        self._issued(op, rc == 0)

    def read(self, op: IocpOp, nbytes: int) -> None:
        self._check(op)
        if nbytes < 0:
            raise ValueError("negative read size")
        mem = self._prepare(op, _READ)
        if mem is None:
            return
        ok = w.ReadFile(op.fd, self._recv_buffer(op, nbytes), nbytes, None, op._ovaddr)
        self._issued(op, bool(ok))

    def read_into(self, op: IocpOp, buffer: Any, nbytes: int = 0) -> None:
        self._check(op)
        pin = w.Pin(buffer, True)
        if nbytes < 0 or nbytes > pin.length:
            pin.release()
            raise ValueError("buffer too small for requested bytes")
        mem = self._prepare(op, _READ_INTO)
        if mem is None:
            pin.release()
            return
        op._pins = [pin]
        ok = w.ReadFile(op.fd, pin.address, nbytes or pin.length, None, op._ovaddr)
        self._issued(op, bool(ok))

    # -- sending ----------------------------------------------------------------

    def send(self, op: IocpOp, data: Any, flags: int = 0) -> None:
        self._check(op)
        pin = w.Pin(data, False)
        mem = self._prepare(op, _SEND)
        if mem is None:
            pin.release()
            return
        op._pins = [pin]
        mem.wsabuf.len = pin.length
        mem.wsabuf.buf = pin.address
        base = op._ovaddr
        rc = w.WSASend(op.fd, base + _WSABUF_OFF, 1, None, flags, base, None)
        self._issued(op, rc == 0)

    def sendv(self, op: IocpOp, buffers: Any) -> None:
        """Gather-send up to 1024 buffers in one WSASend."""
        self._check(op)
        pins: list[w.Pin] = []
        try:
            for b in itertools.islice(buffers, _IOV_MAX):
                pins.append(w.Pin(b, False))
        except BaseException:
            for pin in pins:
                pin.release()
            raise
        if not pins:
            raise ValueError("sendv() needs at least one buffer")
        mem = self._prepare(op, _SENDV)
        if mem is None:
            for pin in pins:
                pin.release()
            return
        wsabufs = (w.WSABUF * len(pins))()
        for i, pin in enumerate(pins):
            wsabufs[i].len = pin.length
            wsabufs[i].buf = pin.address
        op._pins = pins
        op._wsabufs = wsabufs
        rc = w.WSASend(op.fd, addressof(wsabufs), len(pins), None, 0, op._ovaddr, None)
        self._issued(op, rc == 0)

    def write(self, op: IocpOp, data: Any) -> None:
        self._check(op)
        pin = w.Pin(data, False)
        mem = self._prepare(op, _WRITE)
        if mem is None:
            pin.release()
            return
        op._pins = [pin]
        ok = w.WriteFile(op.fd, pin.address, pin.length, None, op._ovaddr)
        self._issued(op, bool(ok))

    def sendfile(self, op: IocpOp, in_fd: int, offset: int, count: int) -> None:
        """TransmitFile of ``count`` bytes at ``offset`` of the CRT fd ``in_fd``."""
        self._check(op)
        if offset < 0 or count < 0:
            raise ValueError("offset and count must be non-negative")
        mem = self._prepare(op, _SENDFILE)
        if mem is None:
            return
        msvcrt: Any = importlib.import_module("msvcrt")
        try:
            hfile = msvcrt.get_osfhandle(in_fd)
        except OSError:
            self._fail_now(op, -errno.EBADF)
            return
        mem.ov.Offset = offset & 0xFFFFFFFF
        mem.ov.OffsetHigh = offset >> 32
        ok = w.TransmitFile(op.fd, hfile, min(count, 0x7FFFFFFE), 0, op._ovaddr, None, 0)
        self._issued(op, bool(ok))

    # -- connections ----------------------------------------------------------------

    def accept(self, op: IocpOp, multishot: bool = False) -> None:
        self._check(op)
        mem = self._prepare(op, _ACCEPT)
        if mem is None:
            return
        op._multishot = bool(multishot)
        self._acceptex(op)

    def _acceptex(self, op: IocpOp) -> None:
        family, type_, proto = self._params_of(op)
        try:
            conn = socket.socket(family, type_, proto)
        except OSError as exc:
            self._fail_now(op, -(exc.errno or errno.EMFILE))
            return
        op._conn = conn
        base = op._ovaddr
        ok = w.AcceptEx(op.fd, conn.fileno(), base + _ACCEPTBUF_OFF, 0, w.ACCEPT_ADDRESS_LENGTH,
                        w.ACCEPT_ADDRESS_LENGTH, base + _RECEIVED_OFF, base)
        self._issued(op, bool(ok))

    def connect(self, op: IocpOp, address: Any) -> None:
        self._check(op)
        family, type_, _ = self._params_of(op)
        if type_ != socket.SOCK_STREAM or family not in (w.AF_INET, w.AF_INET6):
            if type_ == socket.SOCK_DGRAM:
                self._connect_now(op, address)
            else:
                connect_via_poll(cast(CompletionPort, self), op, address)
            return
        name = w.encode_sockaddr(family, address)  # bad addresses raise here
        mem = self._prepare(op, _CONNECT)
        if mem is None:
            return
        err = self._bind_if_unbound(op.fd, family)
        if err:
            self._fail_now(op, -err)
            return
        base = op._ovaddr
        ctypes.memmove(base + _ADDR_OFF, name, len(name))
        ok = w.ConnectEx(op.fd, base + _ADDR_OFF, len(name), None, 0, None, base)
        self._issued(op, bool(ok))

    def _connect_now(self, op: IocpOp, address: Any) -> None:
        """UDP connect only sets the default peer: synchronous, then posted."""
        sock = op.fileobj if isinstance(op.fileobj, socket.socket) else None
        wrapped = sock is None
        if sock is None:
            sock = socket.socket(fileno=op.fd)
        try:
            err = sock.connect_ex(address)
        finally:
            if wrapped:
                sock.detach()
        self.post(op, -err if err else 0)

    @staticmethod
    def _bind_if_unbound(handle: int, family: int) -> int:
        """ConnectEx needs a bound socket: bind to the wildcard address if it
        is not bound yet (what CPython's _overlapped.BindLocal does)."""
        sa = create_string_buffer(w.SOCKADDR_STORAGE_SIZE)
        n = c_int(w.SOCKADDR_STORAGE_SIZE)
        if w.ws_getsockname(handle, addressof(sa), addressof(n)) == 0:
            return 0
        err = w.get_last_error()
        if err != w.WSAEINVAL:
            return w.errno_from_winerror(err)
        wildcard = w.encode_sockaddr(family, ("0.0.0.0", 0) if family == w.AF_INET else ("::", 0))
        if w.ws_bind(handle, wildcard, len(wildcard)) != 0:
            return w.errno_from_winerror(w.get_last_error())
        return 0

    # -- readiness ----------------------------------------------------------------------

    def poll(self, op: IocpOp, events: int, multishot: bool = False) -> None:
        """AFD poll: ``res`` is the poll(2) mask that fired."""
        self._check(op)
        base = op._poll_base
        if base < 0:
            if op.fd < 0:
                self.post(op, -errno.EBADF)
                return
            base = op._poll_base = base_handle(op.fd)  # refuses non-sockets (ENOTSOCK)
        afd = self._afd
        if afd is None:
            afd = self._afd = AfdPoller(self._iocp, KEY_AFD)
        op._kind = _POLL
        op._events = events
        op._multishot = bool(multishot)
        op.cancelling = False
        op._done = False
        op.active = True
        self.inflight += 1
        afd.add(op, base)

    # -- processes -----------------------------------------------------------------------

    def wait_process(self, op: IocpOp, pid: int) -> None:
        """Complete ``op`` (res 0) once process ``pid`` has exited; no reaping."""
        self._check(op)
        op._kind = _WAIT
        op.cancelling = False
        op._multishot = False
        handle = w.OpenProcess(w.SYNCHRONIZE, False, pid)
        if not handle:
            err = w.get_last_error()
            # ERROR_INVALID_PARAMETER: no such process any more, so it has exited.
            self._fail_now(op, 0 if err == w.ERROR_INVALID_PARAMETER else -w.errno_from_winerror(err))
            return
        self._clean_overlapped(op)
        try:
            wait = _overlapped_module().RegisterWaitWithQueue(handle, self._iocp, op._ovaddr, w.INFINITE)
        except OSError as exc:
            w.CloseHandle(handle)
            self._fail_now(op, -(exc.errno or errno.EINVAL))
            return
        op._proc = [handle, wait]
        self._track(op)

    @staticmethod
    def _unregister_process_wait(op: IocpOp, blocking: bool) -> None:
        proc = op._proc
        if proc is None or not proc[1]:
            return
        wait, proc[1] = proc[1], 0
        ov = _overlapped_module()
        try:
            if blocking:  # returns once the callback has finished or can no longer run
                ov.UnregisterWaitEx(wait, ov.INVALID_HANDLE_VALUE)
            else:
                ov.UnregisterWait(wait)
        except OSError as exc:
            if getattr(exc, "winerror", None) != w.ERROR_IO_PENDING:  # the callback is still returning
                log.debug("iocp: UnregisterWait failed: %s", exc)

    # -- results known now ---------------------------------------------------------------

    def post(self, op: IocpOp, res: int) -> None:
        self._check(op)
        op._kind = _POST
        op.cancelling = False
        op.active = True
        op._done = True
        self.inflight += 1
        self._backlog.append((op, res, True))

    # -- cancellation --------------------------------------------------------------------

    def cancel(self, op: IocpOp) -> bool:
        if not op.active or op.cancelling or op._done or self._closed or op._internal:
            return False
        op.cancelling = True
        if op._kind == _POLL:
            # Waiting on a shared AFD poll: the op owns no kernel memory, so
            # it leaves at once; the poll is narrowed at the next run().
            if self._afd is not None:
                self._afd.remove(op)
            op._done = True
            self._backlog.append((op, -ECANCELED, True))
            return True
        self._cancel_io(op)
        return True

    def _cancel_io(self, op: IocpOp) -> None:
        if op._kind == _WAIT:
            # No kernel I/O: stop the wait, then let the probe decide whether
            # the exit packet was already posted.
            self._unregister_process_wait(op, blocking=True)
            self._late_cancel(op)
            return
        if not w.CancelIoEx(op.fd, op._ovaddr):
            # ERROR_NOT_FOUND: completed, packet queued -- or a packet that
            # will never come.  ERROR_INVALID_HANDLE: the handle was closed,
            # which cancels by itself.  Either way: the late-cancel probe.
            self._stats["late_cancels"] += 1
            self._late_cancel(op)

    def _late_cancel(self, op: IocpOp) -> None:
        if not w.PostQueuedCompletionStatus(self._iocp, op._seq & 0xFFFFFFFF, KEY_LATE_CANCEL, op._ovaddr):
            log.error("iocp: PostQueuedCompletionStatus failed (%s); %r may never complete",
                      w.winerror(w.get_last_error(), "PostQueuedCompletionStatus"), op)

    # -- completions ----------------------------------------------------------------------

    def run(self, timeout: float | None) -> None:
        if self._closed:
            raise RuntimeError("the completion port is closed")
        if self._dispatching:
            raise RuntimeError("completion port run() is not reentrant")
        self._dispatching = True
        try:
            afd = self._afd
            if afd is not None and afd.dirty:
                self._refresh_afd(afd)
            self._wait(0 if (self._backlog or self._raw) else _ms(timeout))
            self._dispatch()
        finally:
            self._dispatching = False

    def _refresh_afd(self, afd: AfdPoller) -> None:
        failed: list[tuple[Any, int]] = []
        afd.refresh(failed)
        for op, res in failed:
            op._done = True
            self._backlog.append((op, res, True))

    def _wait(self, ms: int) -> None:
        """One GetQueuedCompletionStatusEx; translate what it returns."""
        nremoved = self._nremoved
        if not nremoved.value:  # else: a batch interrupted before it was copied
            ok = w.GetQueuedCompletionStatusEx(self._iocp, self._entries_addr, MAX_EVENTS,
                                               byref(nremoved), ms, False)
            if not ok:
                err = w.get_last_error()
                nremoved.value = 0
                if err != w.WAIT_TIMEOUT:
                    raise w.winerror(err, "GetQueuedCompletionStatusEx")
        count = nremoved.value
        if count:
            batch = [(e.lpCompletionKey, e.lpOverlapped or 0, e.dwNumberOfBytesTransferred)
                     for e in self._entries[:count]]
            nremoved.value = 0
            self._raw.extend(batch)
            self._stats["packets"] += count
        raw = self._raw
        while raw:
            key, address, nbytes = raw.popleft()
            if key == KEY_IO:
                self._on_io(address, nbytes)
            elif key == KEY_AFD:
                self._on_afd(address)
            elif key == KEY_WAKEUP:
                self._wake_pending = False
            elif key == KEY_LATE_CANCEL:
                self._on_late_cancel(address, nbytes)
            else:
                log.debug("iocp: packet with unknown completion key %r", key)

    def _on_io(self, address: int, nbytes: int) -> None:
        op = self._pending.pop(address, None)
        if op is None:
            if self._tombstones.pop(address, None) is None:
                log.debug("iocp: packet for unknown lpOverlapped 0x%x", address)
            return
        mem = op._mem
        assert mem is not None
        self._complete(op, mem, mem.ov.Internal & 0xFFFFFFFF, nbytes)

    def _on_afd(self, address: int) -> None:
        afd = self._afd
        if afd is None:
            return
        out: list[tuple[Any, int, bool]] = []
        if not afd.complete(address, out):
            log.debug("iocp: AFD packet for unknown lpOverlapped 0x%x", address)
        if self._closing:
            return
        backlog = self._backlog
        for op, res, final in out:
            if final:
                op._done = True
            backlog.append((op, res, final))

    def _on_late_cancel(self, address: int, seq: int) -> None:
        op = self._pending.get(address)
        if op is None or (op._seq & 0xFFFFFFFF) != seq:
            return  # the real packet came first: the normal case
        if op._kind == _WAIT:  # the wait was unregistered before the process exited
            del self._pending[address]
            self._deliver(op, -ECANCELED)
            return
        mem = op._mem
        assert mem is not None
        status = mem.ov.Internal & 0xFFFFFFFF
        if status == w.STATUS_PENDING:
            # The kernel still runs it although CancelIoEx did not find it
            # (a closed and reused handle value).  close() will bury it.
            log.debug("iocp: %r is still pending after a late cancel", op)
            return
        # Finished, but its packet is not coming (handle not associated with
        # this port, or skipping the port on success).  Finish it from the
        # OVERLAPPED; keep that OVERLAPPED forever in case a packet straggles in.
        self._stats["finished_without_packet"] += 1
        del self._pending[address]
        self._tombstones[address] = mem
        op._mem = None
        op._ovaddr = 0
        self._complete(op, mem, status, mem.ov.InternalHigh)

    def _complete(self, op: IocpOp, mem: _OpMem, status: int, nbytes: int) -> None:
        """Turn a finished kernel operation into its result."""
        kind = op._kind
        if kind == _WAIT:
            res = 0  # only the exit callback posts this packet
        elif status == w.STATUS_SUCCESS or status == w.STATUS_BUFFER_OVERFLOW:
            res = nbytes
            if status:
                op.msg_flags = w.MSG_TRUNC  # datagram (or pipe message) truncated
            if kind in _BYTES_KINDS:
                assert op._rbuf is not None
                op._data = string_at(op._rbuf, nbytes)
            if kind == _RECVFROM or kind == _RECVFROM_INTO:
                op.address = w.decode_sockaddr(string_at(addressof(mem) + _ADDR_OFF, mem.addrlen))
            elif kind == _ACCEPT:
                res = self._accepted(op, mem)
            elif kind == _CONNECT:
                if w.ws_setsockopt(op.fd, w.SOL_SOCKET, w.SO_UPDATE_CONNECT_CONTEXT, None, 0) != 0:
                    res = -w.errno_from_winerror(w.get_last_error())
        elif kind in _READ_KINDS and status in _EOF_STATUSES:
            res = 0  # the writer closed the pipe: end of stream
            if kind == _READ:
                op._data = b""
        else:
            res = -w.errno_from_ntstatus(status)
        self._deliver(op, res)

    def _deliver(self, op: IocpOp, res: int) -> None:
        """Queue the result of an operation the kernel is done with."""
        kind = op._kind
        self._release(op)
        if self._closing:
            op.active = False
            if kind == _ACCEPT and res >= 0:
                socket.close(res)  # nobody will ever see this connection
            return
        if op._internal:
            op.active = False
            op.callback(res)
            return
        if kind == _ACCEPT and (op._multishot or (res < 0 and -res in _PER_CONNECTION)):
            self._accept_result(op, res)
            return
        op._done = True
        self._backlog.append((op, res, True))

    def _accepted(self, op: IocpOp, mem: _OpMem) -> int:
        conn = op._conn
        assert conn is not None
        op._conn = None
        try:
            conn.setsockopt(socket.SOL_SOCKET, w.SO_UPDATE_ACCEPT_CONTEXT, struct.pack("P", op.fd))
        except OSError as exc:
            conn.close()
            return -(exc.errno or errno.ECONNABORTED)
        if not op._multishot:
            op.address = self._peer_of_accept(op, mem)
        return int(conn.detach())

    @staticmethod
    def _peer_of_accept(op: IocpOp, mem: _OpMem) -> Any:
        local, remote = ctypes.c_void_p(), ctypes.c_void_p()
        llen, rlen = c_int(0), c_int(0)
        w.GetAcceptExSockaddrs(addressof(mem) + _ACCEPTBUF_OFF, 0, w.ACCEPT_ADDRESS_LENGTH,
                               w.ACCEPT_ADDRESS_LENGTH, byref(local), byref(llen), byref(remote), byref(rlen))
        if not remote.value or rlen.value <= 0:
            return None
        return w.decode_sockaddr(string_at(remote.value, rlen.value))

    def _accept_result(self, op: IocpOp, res: int) -> None:
        """Multishot accept, and per-connection failures of any accept:
        deliver, then issue AcceptEx again unless cancelled or failed."""
        if res >= 0:
            if not op._multishot:
                op._done = True
                self._backlog.append((op, res, True))
                return
            self._backlog.append((op, res, False))
            if op.cancelling:  # the cancel lost the race to this connection
                op._done = True
                self._backlog.append((op, -ECANCELED, True))
                return
        elif -res in _PER_CONNECTION and not op.cancelling:
            # The client reset before we accepted it (WinError 64): its
            # problem, not the listener's.
            self._stats["accept_errors_survived"] += 1
            log.debug("iocp: accept on handle %d lost a connection (errno %d); accepting again", op.fd, -res)
        else:
            op._done = True
            self._backlog.append((op, res, True))
            return
        self._clean_overlapped(op)
        self._acceptex(op)

    def _dispatch(self) -> None:
        backlog = self._backlog
        handler = self.error_handler
        for _ in range(len(backlog)):
            op, res, final = backlog.popleft()
            if final:
                op.active = False
                op.cancelling = False
                op._done = False
                self.inflight -= 1
            try:
                op.callback(res)
            except Exception as exc:
                if handler is None:
                    raise
                handler(op, exc)

    # -- wakeups ------------------------------------------------------------------------------

    def wakeup(self) -> None:
        """Make a run() blocked in another thread return (thread-safe, coalesced)."""
        if self._wake_pending or self._closed:
            return
        self._wake_pending = True
        if not w.PostQueuedCompletionStatus(self._iocp, 0, KEY_WAKEUP, None):
            self._wake_pending = False

    def prepare_thread(self) -> None:
        """Nothing to do: an IOCP may be waited on from any thread."""

    def wakeup_fd(self) -> int:
        """A socket for ``signal.set_wakeup_fd``: bytes written to it wake
        ``run()`` (a WSARecv on its peer is always outstanding on the port)."""
        if self._closed or self._closing:
            raise RuntimeError("the completion port is closed")
        socks = self._wake_socks
        if socks is None:
            rsock, wsock = socket.socketpair()
            rsock.setblocking(False)
            wsock.setblocking(False)
            socks = self._wake_socks = (rsock, wsock)
            self._arm_wake_socket(rsock)
        return socks[1].fileno()

    def _arm_wake_socket(self, rsock: socket.socket) -> None:
        op = self.op(rsock, self._on_wake_bytes)
        op._internal = True
        self.recv(op, 64)

    def _on_wake_bytes(self, res: int) -> None:
        socks = self._wake_socks
        if res < 0 or socks is None or self._closing or self._closed:
            return
        try:
            while socks[0].recv(4096):  # signal numbers: the interpreter keeps its own record
                pass
        except OSError:
            pass
        self._arm_wake_socket(socks[0])

    # -- shutdown -------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> int:
        if self._closed:
            return 0
        if self._dispatching:
            raise RuntimeError("cannot close the port from a completion callback")
        self._closing = True
        for op in list(self._pending.values()):
            if not op.cancelling:
                op.cancelling = True
                self._cancel_io(op)
        afd = self._afd
        waiting = afd.cancel_all() if afd is not None else []
        deadline = time.monotonic() + max(timeout, 0.0)
        while self._pending or (afd is not None and afd.records):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                self._wait(_ms(min(left, 0.1)))
            except OSError as exc:
                log.error("iocp: close() could not reap: %s", exc)
                break
        abandoned: list[Any] = list(self._pending.values())
        if afd is not None:
            abandoned.extend(afd.records.values())
        if abandoned:
            graveyard.extend(abandoned)
            log.error(
                "iocp: %d operation(s) were still owned by the kernel %.1f s after close() cancelled "
                "them; their OVERLAPPED and buffers are kept alive forever instead of being freed: %s",
                len(abandoned), timeout, ", ".join(repr(x) for x in abandoned[:10]),
            )
        for op, _, _ in self._backlog:
            op.active = False
            op._done = False
        for op in waiting:
            op.active = False
        self._backlog.clear()
        self._raw.clear()
        self._pending.clear()
        self._tombstones.clear()
        self.inflight = 0
        if afd is not None:
            afd.close()
        self._closed = True
        self._closing = False
        w.CloseHandle(self._iocp)
        if self._wake_socks is not None:
            for sock in self._wake_socks:
                sock.close()
            self._wake_socks = None
        return len(abandoned)

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                self.close(1.0)
            except Exception:
                pass

    def info(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "backend": self.name,
            "windows": ".".join(str(x) for x in getattr(sys, "getwindowsversion", tuple)()[:3]),
            "wine": w.wine_version,
            "inflight": self.inflight,
            "dequeue": f"GetQueuedCompletionStatusEx, up to {MAX_EVENTS} packets per wait",
            "wakeup": "PostQueuedCompletionStatus",
            "wakeup_fd": "socketpair with a WSARecv on the port",
            "operations": ["WSARecv", "WSASend", "WSARecvFrom", "AcceptEx", "ConnectEx", "TransmitFile",
                           "ReadFile", "WriteFile", "IOCTL_AFD_POLL", "RegisterWaitWithQueue"],
            "multishot_accept": "AcceptEx re-issued per connection",
            "completions": self._stats["packets"],
        }
        if self._afd is not None:
            d.update(self._afd.info())
        for key in ("late_cancels", "finished_without_packet", "accept_errors_survived"):
            d[key] = self._stats[key]
        return d
