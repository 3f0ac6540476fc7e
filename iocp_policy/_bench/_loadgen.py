"""The C load generator (loadgen.c beside this file): built once per run with
the system C compiler, then started once per measurement."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from typing import Any

SOURCE = "loadgen.c"


@dataclass(frozen=True)
class LoadgenArgs:
    mode: str  # echo | http | churn
    port: int
    conns: int
    threads: int  # one per core the load generator may use
    size: int
    warmup: float
    duration: float
    server_pid: int


def find_compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (path := shutil.which(name)):
            return path
    return None


def unavailable_reason() -> str | None:
    """None if the load generator can be built and run here, else why not."""
    if not os.path.isdir("/proc/self") or not hasattr(os, "sched_setaffinity"):
        return "the load generator needs Linux (epoll, /proc)"
    if find_compiler() is None:
        return "no C compiler (cc/gcc/clang) to build the load generator; install gcc"
    if not resources.files(__package__).joinpath(SOURCE).is_file():
        return f"{SOURCE} is missing from this install of iocp_policy._bench (package data)"
    return None


def build(directory: str | None = None) -> str:
    """Compile the load generator; return the executable's path.  Raises on failure."""
    cc = find_compiler()
    if cc is None:
        raise RuntimeError(unavailable_reason() or "no compiler")
    source = resources.files(__package__).joinpath(SOURCE).read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:12]
    directory = directory or tempfile.mkdtemp(prefix="iocp-bench-")
    os.makedirs(directory, exist_ok=True)
    src_path = os.path.join(directory, SOURCE)
    exe = os.path.join(directory, f"loadgen-{digest}")
    with open(src_path, "wb") as f:
        f.write(source)
    proc = subprocess.run([cc, "-O2", "-std=gnu11", "-pthread", "-o", exe, src_path], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"building the load generator failed:\n{proc.stderr.strip()}")
    return exe


def command(exe: str, args: LoadgenArgs) -> list[str]:
    return [exe, "-m", args.mode, "-p", str(args.port), "-c", str(args.conns), "-t", str(args.threads),
            "-s", str(max(args.size, 1)),
            "-w", f"{args.warmup:g}", "-d", f"{args.duration:g}", "-S", str(args.server_pid)]


def parse_output(stdout: str) -> dict[str, Any]:
    """The load generator's JSON line (the last non-empty line of its output)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ValueError("the load generator printed nothing")
    result: dict[str, Any] = json.loads(lines[-1])
    return result
