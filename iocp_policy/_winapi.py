"""The Win32/Winsock/NT layer of the IOCP backend, through :mod:`ctypes`.

Names are the Windows API's own (``lpOverlapped``, ``CancelIoEx``,
``IOCTL_AFD_POLL``, ``WSAID_CONNECTEX``) so they can be looked up on MSDN.
Nothing here has policy: it declares structures and prototypes, converts
error codes, encodes socket addresses and pins Python buffers.  The
backend that uses it is :mod:`iocp_policy._port_iocp`.

The module imports on every platform (mypy checks it on Linux); the DLLs
are only loaded on Windows, by :func:`load`, and every function attribute
below stays unbound elsewhere.

Why ctypes and not CPython's ``_overlapped``: ``_overlapped`` dequeues one
completion per call (no ``GetQueuedCompletionStatusEx``), sends one buffer
per ``WSASend`` (no gather), does not report ``MSG_TRUNC`` and has no
``DeviceIoControl``, which AFD polling needs.  One layer that speaks to the
OS directly is simpler than two half-layers.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import sys
import threading
from collections.abc import Callable
from ctypes import (
    POINTER,
    Structure,
    byref,
    c_char_p,
    c_int,
    c_size_t,
    c_ssize_t,
    c_uint8,
    c_uint16,
    c_uint32,
    c_void_p,
    sizeof,
)
from typing import Any

# --- types (explicit widths: the layout must be Windows' LLP64 one) ---------

DWORD = c_uint32
ULONG = c_uint32
BOOL = c_int
HANDLE = c_void_p
ULONG_PTR = c_size_t
SOCKET = c_size_t

INVALID_HANDLE_VALUE = (1 << (8 * sizeof(c_void_p))) - 1
INVALID_SOCKET = INVALID_HANDLE_VALUE
INFINITE = 0xFFFFFFFF
SOCKET_ERROR = -1

# --- Win32 / Winsock error codes -----------------------------------------------

ERROR_SUCCESS = 0
ERROR_INVALID_HANDLE = 6
ERROR_NOT_ENOUGH_MEMORY = 8
ERROR_HANDLE_EOF = 38
ERROR_NOT_SUPPORTED = 50
ERROR_NETNAME_DELETED = 64
ERROR_INVALID_PARAMETER = 87
ERROR_BROKEN_PIPE = 109
ERROR_SEM_TIMEOUT = 121
ERROR_NO_DATA = 232
ERROR_PIPE_NOT_CONNECTED = 233
ERROR_MORE_DATA = 234
WAIT_TIMEOUT = 258
ERROR_OPERATION_ABORTED = 995
ERROR_IO_PENDING = 997
ERROR_NOT_FOUND = 1168
ERROR_CONNECTION_REFUSED = 1225
ERROR_GRACEFUL_DISCONNECT = 1226
ERROR_ADDRESS_ALREADY_ASSOCIATED = 1227
ERROR_CONNECTION_INVALID = 1229
ERROR_NETWORK_UNREACHABLE = 1231
ERROR_HOST_UNREACHABLE = 1232
ERROR_PORT_UNREACHABLE = 1234
ERROR_REQUEST_ABORTED = 1235
ERROR_CONNECTION_ABORTED = 1236
ERROR_NO_SYSTEM_RESOURCES = 1450
WSAEINVAL = 10022
WSAEMFILE = 10024
WSAEWOULDBLOCK = 10035
WSAENOTSOCK = 10038
WSAEMSGSIZE = 10040
WSAEOPNOTSUPP = 10045
WSAECONNABORTED = 10053
WSAECONNRESET = 10054
WSAENOBUFS = 10055
WSAENOTCONN = 10057
WSAECONNREFUSED = 10061

# NTSTATUS values found in lpOverlapped->Internal.
STATUS_SUCCESS = 0x00000000
STATUS_PENDING = 0x00000103
STATUS_BUFFER_OVERFLOW = 0x80000005  # a warning: the data is there, truncated
STATUS_END_OF_FILE = 0xC0000011
STATUS_CANCELLED = 0xC0000120
STATUS_LOCAL_DISCONNECT = 0xC000013B
STATUS_REMOTE_DISCONNECT = 0xC000013C
STATUS_PIPE_BROKEN = 0xC000014B
STATUS_CONNECTION_RESET = 0xC000020D
STATUS_CONNECTION_REFUSED = 0xC0000236
STATUS_CONNECTION_ABORTED = 0xC0000241
STATUS_PORT_UNREACHABLE = 0xC000023F
STATUS_HOST_UNREACHABLE = 0xC000023D
STATUS_NETWORK_UNREACHABLE = 0xC000023C
STATUS_IO_TIMEOUT = 0xC00000B5
STATUS_INVALID_HANDLE = 0xC0000008
STATUS_INVALID_CONNECTION = 0xC0000140

# --- ioctls, socket options, AFD ------------------------------------------------

SIO_GET_EXTENSION_FUNCTION_POINTER = 0xC8000006
SIO_BASE_HANDLE = 0x48000022
SIO_BSP_HANDLE_POLL = 0x4800001D
SOL_SOCKET = 0xFFFF
SO_TYPE = 0x1008
SO_UPDATE_ACCEPT_CONTEXT = 0x700B
SO_UPDATE_CONNECT_CONTEXT = 0x7010
MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0x0100)

IOCTL_AFD_POLL = 0x00012024
AFD_POLL_RECEIVE = 0x0001
AFD_POLL_RECEIVE_EXPEDITED = 0x0002
AFD_POLL_SEND = 0x0004
AFD_POLL_DISCONNECT = 0x0008
AFD_POLL_ABORT = 0x0010
AFD_POLL_LOCAL_CLOSE = 0x0020
AFD_POLL_ACCEPT = 0x0080
AFD_POLL_CONNECT_FAIL = 0x0100

SYNCHRONIZE = 0x00100000
GENERIC_READ = 0x80000000
GENERIC_WRITE = 0x40000000
FILE_SHARE_READ = 0x1
FILE_SHARE_WRITE = 0x2
OPEN_EXISTING = 3
FILE_FLAG_OVERLAPPED = 0x40000000

# --- structures --------------------------------------------------------------------


class OVERLAPPED(Structure):
    _fields_ = [
        ("Internal", ULONG_PTR),  # the NTSTATUS of the operation (STATUS_PENDING while in flight)
        ("InternalHigh", ULONG_PTR),  # bytes transferred
        ("Offset", DWORD),
        ("OffsetHigh", DWORD),
        ("hEvent", HANDLE),
    ]


class OVERLAPPED_ENTRY(Structure):
    _fields_ = [
        ("lpCompletionKey", ULONG_PTR),
        ("lpOverlapped", c_void_p),
        ("Internal", ULONG_PTR),
        ("dwNumberOfBytesTransferred", DWORD),
    ]


class WSABUF(Structure):
    _fields_ = [("len", ULONG), ("buf", c_void_p)]


class GUID(Structure):
    _fields_ = [("Data1", c_uint32), ("Data2", c_uint16), ("Data3", c_uint16), ("Data4", c_uint8 * 8)]


def make_guid(d1: int, d2: int, d3: int, d4: bytes) -> GUID:
    g = GUID(d1, d2, d3)
    g.Data4[:] = list(d4)
    return g


class AFD_POLL_HANDLE_INFO(Structure):
    _fields_ = [("Handle", HANDLE), ("Events", ULONG), ("Status", c_int)]


class AFD_POLL_INFO(Structure):
    _fields_ = [
        ("Timeout", ctypes.c_int64),
        ("NumberOfHandles", ULONG),
        ("Exclusive", ULONG),
        ("Handles", AFD_POLL_HANDLE_INFO * 1),
    ]


SOCKADDR_STORAGE_SIZE = 128
# AcceptEx wants room for each address plus 16 bytes.
ACCEPT_ADDRESS_LENGTH = 28 + 16  # sizeof(SOCKADDR_IN6) + 16


class Py_buffer(Structure):
    """CPython's buffer view (Include/pybuffer.h), stable since 3.3."""

    _fields_ = [
        ("buf", c_void_p),
        ("obj", c_void_p),
        ("len", c_ssize_t),
        ("itemsize", c_ssize_t),
        ("readonly", c_int),
        ("ndim", c_int),
        ("format", c_char_p),
        ("shape", c_void_p),
        ("strides", c_void_p),
        ("suboffsets", c_void_p),
        ("internal", c_void_p),
    ]


PyBUF_SIMPLE = 0
PyBUF_WRITABLE = 1

# --- functions (bound by load() on Windows) ---------------------------------------

Fn = Callable[..., Any]

CreateIoCompletionPort: Fn
GetQueuedCompletionStatusEx: Fn
PostQueuedCompletionStatus: Fn
CancelIoEx: Fn
CloseHandle: Fn
ReadFile: Fn
WriteFile: Fn
CreateFileW: Fn
DeviceIoControl: Fn
GetProcessHandleCount: Fn
OpenProcess: Fn
GetCurrentProcess: Fn
RtlNtStatusToDosError: Fn
WSARecv: Fn
WSASend: Fn
WSARecvFrom: Fn
WSAIoctl: Fn
ws_setsockopt: Fn
ws_getsockopt: Fn
ws_getsockname: Fn
ws_bind: Fn
PyObject_GetBuffer: Fn
PyBuffer_Release: Fn
get_last_error: Callable[[], int]

# Winsock extension functions, looked up with SIO_GET_EXTENSION_FUNCTION_POINTER.
AcceptEx: Fn
ConnectEx: Fn
TransmitFile: Fn
GetAcceptExSockaddrs: Fn

wine_version: str | None = None
_loaded = False
_extensions_loaded = False
_lock = threading.Lock()


def _proto(dll: Any, name: str, restype: Any, *argtypes: Any) -> Fn:
    fn = getattr(dll, name)
    fn.restype = restype
    fn.argtypes = argtypes
    return fn  # type: ignore[no-any-return]


def load() -> None:
    """Bind the DLL functions.  Windows only; idempotent."""
    global _loaded, CreateIoCompletionPort, GetQueuedCompletionStatusEx, PostQueuedCompletionStatus
    global CancelIoEx, CloseHandle, ReadFile, WriteFile, CreateFileW, DeviceIoControl
    global GetProcessHandleCount, GetCurrentProcess, OpenProcess, RtlNtStatusToDosError
    global WSARecv, WSASend, WSARecvFrom, WSAIoctl, ws_setsockopt, ws_getsockopt, ws_getsockname, ws_bind
    global PyObject_GetBuffer, PyBuffer_Release, get_last_error, wine_version
    if _loaded:
        return
    if sys.platform != "win32":
        raise OSError(errno.ENOSYS, "the Win32 API is only available on Windows")
    # Through getattr: these names only exist in the Windows build of ctypes
    # (and in its type stubs), and this module is type-checked everywhere.
    windll: Any = getattr(ctypes, "WinDLL")  # noqa: B009
    k32 = windll("kernel32", use_last_error=True)
    ws2 = windll("ws2_32", use_last_error=True)
    ntdll = windll("ntdll")
    p = c_void_p
    CreateIoCompletionPort = _proto(k32, "CreateIoCompletionPort", HANDLE, HANDLE, HANDLE, ULONG_PTR, DWORD)
    GetQueuedCompletionStatusEx = _proto(
        k32, "GetQueuedCompletionStatusEx", BOOL, HANDLE, p, ULONG, POINTER(ULONG), DWORD, BOOL
    )
    PostQueuedCompletionStatus = _proto(k32, "PostQueuedCompletionStatus", BOOL, HANDLE, DWORD, ULONG_PTR, p)
    CancelIoEx = _proto(k32, "CancelIoEx", BOOL, HANDLE, p)
    CloseHandle = _proto(k32, "CloseHandle", BOOL, HANDLE)
    ReadFile = _proto(k32, "ReadFile", BOOL, HANDLE, p, DWORD, p, p)
    WriteFile = _proto(k32, "WriteFile", BOOL, HANDLE, p, DWORD, p, p)
    CreateFileW = _proto(k32, "CreateFileW", HANDLE, ctypes.c_wchar_p, DWORD, DWORD, p, DWORD, DWORD, HANDLE)
    DeviceIoControl = _proto(k32, "DeviceIoControl", BOOL, HANDLE, DWORD, p, DWORD, p, DWORD, p, p)
    GetProcessHandleCount = _proto(k32, "GetProcessHandleCount", BOOL, HANDLE, POINTER(DWORD))
    GetCurrentProcess = _proto(k32, "GetCurrentProcess", HANDLE)
    OpenProcess = _proto(k32, "OpenProcess", HANDLE, DWORD, BOOL, DWORD)
    RtlNtStatusToDosError = _proto(ntdll, "RtlNtStatusToDosError", ULONG, ULONG)
    # Pointer arguments are plain addresses (c_void_p): the backend passes
    # fields of its own per-operation structures, which must stay put.
    WSARecv = _proto(ws2, "WSARecv", c_int, SOCKET, p, DWORD, p, p, p, p)
    WSASend = _proto(ws2, "WSASend", c_int, SOCKET, p, DWORD, p, DWORD, p, p)
    WSARecvFrom = _proto(ws2, "WSARecvFrom", c_int, SOCKET, p, DWORD, p, p, p, p, p, p)
    WSAIoctl = _proto(ws2, "WSAIoctl", c_int, SOCKET, DWORD, p, DWORD, p, DWORD, POINTER(DWORD), p, p)
    ws_setsockopt = _proto(ws2, "setsockopt", c_int, SOCKET, c_int, c_int, p, c_int)
    ws_getsockopt = _proto(ws2, "getsockopt", c_int, SOCKET, c_int, c_int, p, p)
    ws_getsockname = _proto(ws2, "getsockname", c_int, SOCKET, p, p)
    ws_bind = _proto(ws2, "bind", c_int, SOCKET, p, c_int)
    api = ctypes.pythonapi
    PyObject_GetBuffer = _proto(api, "PyObject_GetBuffer", c_int, ctypes.py_object, POINTER(Py_buffer), c_int)
    PyBuffer_Release = _proto(api, "PyBuffer_Release", None, POINTER(Py_buffer))
    get_last_error = getattr(ctypes, "get_last_error")  # noqa: B009
    try:  # Wine exports its version from ntdll; Windows does not
        version = _proto(ntdll, "wine_get_version", c_char_p)()
    except AttributeError:
        wine_version = None
    else:
        wine_version = version.decode() if version else "unknown"
    _loaded = True


# --- Winsock extension functions --------------------------------------------------

WSAID_ACCEPTEX = (0xB5367DF1, 0xCBAC, 0x11CF, b"\x95\xca\x00\x80\x5f\x48\xa1\x92")
WSAID_GETACCEPTEXSOCKADDRS = (0xB5367DF2, 0xCBAC, 0x11CF, b"\x95\xca\x00\x80\x5f\x48\xa1\x92")
WSAID_TRANSMITFILE = (0xB5367DF0, 0xCBAC, 0x11CF, b"\x95\xca\x00\x80\x5f\x48\xa1\x92")
WSAID_CONNECTEX = (0x25A207B9, 0xDDF3, 0x4660, b"\x8e\xe9\x76\xe5\x8c\x74\x06\x3e")


def _extension(sock: socket.socket, guid: tuple[int, int, int, bytes], restype: Any, *argtypes: Any) -> Fn:
    g = make_guid(*guid)
    ptr = c_void_p()
    nbytes = DWORD()
    if WSAIoctl(sock.fileno(), SIO_GET_EXTENSION_FUNCTION_POINTER, byref(g), sizeof(g), byref(ptr),
                sizeof(ptr), byref(nbytes), None, None) == SOCKET_ERROR:
        raise winerror(get_last_error(), "WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER)")
    winfunctype: Any = getattr(ctypes, "WINFUNCTYPE")  # noqa: B009
    return winfunctype(restype, *argtypes, use_last_error=True)(ptr.value)  # type: ignore[no-any-return]


def load_extensions() -> None:
    """Look up AcceptEx, ConnectEx and TransmitFile (thread-safe, once)."""
    global _extensions_loaded, AcceptEx, ConnectEx, TransmitFile, GetAcceptExSockaddrs
    with _lock:
        if _extensions_loaded:
            return
        load()
        p = c_void_p
        with socket.socket() as s:
            AcceptEx = _extension(s, WSAID_ACCEPTEX, BOOL, SOCKET, SOCKET, p, DWORD, DWORD, DWORD, p, p)
            ConnectEx = _extension(s, WSAID_CONNECTEX, BOOL, SOCKET, p, c_int, p, DWORD, p, p)
            TransmitFile = _extension(s, WSAID_TRANSMITFILE, BOOL, SOCKET, HANDLE, DWORD, DWORD, p, p, DWORD)
            GetAcceptExSockaddrs = _extension(s, WSAID_GETACCEPTEXSOCKADDRS, None,
                                              p, DWORD, DWORD, DWORD, p, p, p, p)
        _extensions_loaded = True


# --- errors ---------------------------------------------------------------------------
#
# Completion results are -errno (see _port.py).  On Windows Python's errno
# module uses the WSA numbers for socket errors (errno.ECONNRESET == 10054),
# and OSError(errno, ...) picks the right subclass from them.

_WIN_TO_ERRNO: dict[int, int] = {
    ERROR_OPERATION_ABORTED: errno.ECANCELED,
    ERROR_NETNAME_DELETED: errno.ECONNRESET,
    WSAECONNRESET: errno.ECONNRESET,
    ERROR_PORT_UNREACHABLE: errno.ECONNRESET,  # UDP: ICMP port unreachable, as WSARecvFrom reports it
    ERROR_CONNECTION_REFUSED: errno.ECONNREFUSED,
    WSAECONNREFUSED: errno.ECONNREFUSED,
    ERROR_CONNECTION_ABORTED: errno.ECONNABORTED,
    ERROR_REQUEST_ABORTED: errno.ECONNABORTED,
    WSAECONNABORTED: errno.ECONNABORTED,
    ERROR_NETWORK_UNREACHABLE: errno.ENETUNREACH,
    ERROR_HOST_UNREACHABLE: errno.EHOSTUNREACH,
    ERROR_SEM_TIMEOUT: errno.ETIMEDOUT,
    WAIT_TIMEOUT: errno.ETIMEDOUT,
    ERROR_BROKEN_PIPE: errno.EPIPE,
    ERROR_NO_DATA: errno.EPIPE,
    ERROR_PIPE_NOT_CONNECTED: errno.EPIPE,
    ERROR_GRACEFUL_DISCONNECT: errno.EPIPE,
    ERROR_INVALID_HANDLE: errno.EBADF,
    WSAENOTSOCK: errno.ENOTSOCK,
    ERROR_NOT_ENOUGH_MEMORY: errno.ENOMEM,
    ERROR_NO_SYSTEM_RESOURCES: errno.ENOBUFS,
    WSAENOBUFS: errno.ENOBUFS,
    WSAEMFILE: errno.EMFILE,
    ERROR_INVALID_PARAMETER: errno.EINVAL,
    WSAEINVAL: errno.EINVAL,
    ERROR_MORE_DATA: errno.EMSGSIZE,
    WSAEMSGSIZE: errno.EMSGSIZE,
    ERROR_CONNECTION_INVALID: errno.ENOTCONN,
    WSAENOTCONN: errno.ENOTCONN,
    ERROR_ADDRESS_ALREADY_ASSOCIATED: errno.EADDRINUSE,
    ERROR_NOT_SUPPORTED: errno.EOPNOTSUPP,
    WSAEOPNOTSUPP: errno.EOPNOTSUPP,
    ERROR_HANDLE_EOF: errno.EPIPE,
    WSAEWOULDBLOCK: errno.EWOULDBLOCK,
}

# NTSTATUS codes translated directly, as WSAGetOverlappedResult would (the
# generic RtlNtStatusToDosError turns a reset into ERROR_NETNAME_DELETED,
# the notorious "WinError 64").
_NTSTATUS_TO_ERRNO: dict[int, int] = {
    STATUS_CANCELLED: errno.ECANCELED,
    STATUS_CONNECTION_RESET: errno.ECONNRESET,
    STATUS_REMOTE_DISCONNECT: errno.ECONNRESET,
    STATUS_PORT_UNREACHABLE: errno.ECONNRESET,
    STATUS_CONNECTION_REFUSED: errno.ECONNREFUSED,
    STATUS_CONNECTION_ABORTED: errno.ECONNABORTED,
    STATUS_LOCAL_DISCONNECT: errno.ECONNABORTED,
    STATUS_NETWORK_UNREACHABLE: errno.ENETUNREACH,
    STATUS_HOST_UNREACHABLE: errno.EHOSTUNREACH,
    STATUS_IO_TIMEOUT: errno.ETIMEDOUT,
    STATUS_PIPE_BROKEN: errno.EPIPE,
    STATUS_END_OF_FILE: errno.EPIPE,
    STATUS_INVALID_HANDLE: errno.EBADF,
    STATUS_INVALID_CONNECTION: errno.ENOTCONN,
}


def errno_from_winerror(code: int) -> int:
    """A Win32 or Winsock error code as an errno value of this Python."""
    e = _WIN_TO_ERRNO.get(code)
    if e is not None:
        return e
    if 10000 <= code < 12000:  # WSA codes are Python's errno values on Windows
        return code
    # CPython's own winerror_to_errno table (EINVAL for what it does not know).
    return OSError(0, "", None, code).errno or errno.EIO


def errno_from_ntstatus(status: int) -> int:
    e = _NTSTATUS_TO_ERRNO.get(status)
    if e is not None:
        return e
    return errno_from_winerror(RtlNtStatusToDosError(status))


def winerror(code: int, what: str) -> OSError:
    """An OSError for a failed call, with winerror set and a mapped errno."""
    err = OSError(errno_from_winerror(code), f"{what} failed", None, code)
    err.errno = errno_from_winerror(code)
    return err


# --- socket addresses ---------------------------------------------------------------

AF_INET = int(socket.AF_INET)
AF_INET6 = int(socket.AF_INET6)


def encode_sockaddr(family: int, address: Any) -> bytes:
    """A sockaddr_in / sockaddr_in6 for ``address``; resolves like connect() would."""
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError(f"{'AF_INET' if family == AF_INET else 'AF_INET6'} address must be a tuple, "
                        f"not {type(address).__name__}")
    host, port = address[0], address[1]
    if not isinstance(port, int):
        raise TypeError(f"'{type(port).__name__}' object cannot be interpreted as an integer")
    if not 0 <= port <= 0xFFFF:
        raise OverflowError("connect(): port must be 0-65535.")
    if isinstance(host, bytes):
        host = host.decode("idna")
    if host == "":
        host = "0.0.0.0" if family == AF_INET else "::"
    try:
        packed = socket.inet_pton(family, host)
    except OSError:
        # A name: resolve it the way socket.connect() does (blocking).
        info = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        packed = socket.inet_pton(family, str(info[0][4][0]))
    if family == AF_INET:
        return struct.pack("<H", AF_INET) + struct.pack("!H", port) + packed + bytes(8)
    flowinfo = address[2] if len(address) > 2 else 0
    scope_id = address[3] if len(address) > 3 else 0
    return (struct.pack("<H", AF_INET6) + struct.pack("!HI", port, flowinfo) + packed
            + struct.pack("<I", scope_id))


def decode_sockaddr(data: bytes) -> Any:
    """The Python address tuple for a sockaddr, as the socket module gives it."""
    if len(data) < 2:
        return None
    family = struct.unpack_from("<H", data)[0]
    if family == AF_INET and len(data) >= 8:
        port = struct.unpack_from("!H", data, 2)[0]
        return (socket.inet_ntop(AF_INET, data[4:8]), port)
    if family == AF_INET6 and len(data) >= 28:
        port, flowinfo = struct.unpack_from("!HI", data, 2)
        scope_id = struct.unpack_from("<I", data, 24)[0]
        return (socket.inet_ntop(AF_INET6, data[8:24]), port, flowinfo, scope_id)
    return data


# --- pinned buffers ---------------------------------------------------------------------


class Pin:
    """A Python buffer exported for the kernel: its memory cannot move or be
    freed (a bytearray refuses to resize with BufferError) until release()."""

    __slots__ = ("_view", "address", "length")

    def __init__(self, obj: Any, writable: bool) -> None:
        view = Py_buffer()
        PyObject_GetBuffer(obj, byref(view), PyBUF_WRITABLE if writable else PyBUF_SIMPLE)
        self._view: Py_buffer | None = view
        self.address: int = view.buf or 0
        self.length: int = view.len

    def release(self) -> None:
        view = self._view
        if view is not None:
            self._view = None
            PyBuffer_Release(byref(view))


def process_handle_count() -> int:
    """Handles open in this process (GetProcessHandleCount): the Windows fd count."""
    load()
    n = DWORD()
    if not GetProcessHandleCount(GetCurrentProcess(), byref(n)):
        raise winerror(get_last_error(), "GetProcessHandleCount")
    return n.value
