"""Run Python code in this process after installing a seccomp filter that
makes io_uring_setup(2) fail with EPERM, as Docker's default profile does.

usage: python seccomp_child.py CODE

Built from raw classic-BPF instructions with ctypes (no libseccomp needed);
only this process and its children are affected.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
BPF_RET_K = 0x06  # BPF_RET | BPF_K
ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
NR_IO_URING_SETUP = 425  # same number on every architecture
OFF_NR, OFF_ARCH = 0, 4  # struct seccomp_data


def insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def install() -> None:
    prog = b"".join([
        insn(BPF_LD_W_ABS, OFF_ARCH),
        insn(BPF_JEQ_K, ARCH[platform.machine()], 0, 3),  # foreign arch: allow
        insn(BPF_LD_W_ABS, OFF_NR),
        insn(BPF_JEQ_K, NR_IO_URING_SETUP, 0, 1),
        insn(BPF_RET_K, SECCOMP_RET_ERRNO | errno.EPERM),
        insn(BPF_RET_K, SECCOMP_RET_ALLOW),
    ])

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    fprog = SockFprog(len(prog) // 8, prog)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


if __name__ == "__main__":
    install()
    exec(compile(sys.argv[1], "<seccomp-child>", "exec"), {"__name__": "__main__"})
