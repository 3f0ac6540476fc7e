"""The event loops compared: how to make each one and whether it is here."""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

NATIVE = "iocp" if sys.platform == "win32" else "io_uring"


@dataclass(frozen=True)
class LoopSpec:
    name: str
    ours: bool
    module: str  # imported to make the loop
    distribution: str  # whose version is reported


SPECS: dict[str, LoopSpec] = {
    spec.name: spec
    for spec in (
        LoopSpec("asyncio", False, "asyncio", "python"),
        LoopSpec("uvloop", False, "uvloop", "uvloop"),
        LoopSpec("rloop", False, "rloop", "rloop"),
        LoopSpec(NATIVE, True, "iocp_policy", "iocp-policy"),
        LoopSpec("emulated", True, "iocp_policy", "iocp-policy"),
    )
}
ALL = tuple(SPECS)
BASELINES = ("asyncio", "uvloop")  # the ratio columns


def factory(name: str) -> LoopFactory:
    """The loop_factory for a loop name (imports the module)."""
    if name == "asyncio":
        return asyncio.new_event_loop
    module = importlib.import_module(SPECS[name].module)
    if SPECS[name].ours:
        new_event_loop = module.new_event_loop

        def ours() -> asyncio.AbstractEventLoop:
            loop: asyncio.AbstractEventLoop = new_event_loop(backend=name)
            return loop

        return ours
    peer: LoopFactory = module.new_event_loop
    return peer


def unavailable_reason(name: str) -> str | None:
    """None if the loop can run here, else why not (not installed, backend unavailable)."""
    spec = SPECS.get(name)
    if spec is None:
        return f"unknown loop {name!r} (known: {', '.join(ALL)})"
    try:
        importlib.import_module(spec.module)
    except ImportError as exc:
        return f"not installed ({exc}); pip install 'iocp-policy[bench]'"
    if spec.ours:
        from .._port import BackendUnavailableError, open_port

        try:
            port, _ = open_port(name)
        except BackendUnavailableError as exc:
            return f"backend unavailable: {exc}"
        port.close()
    return None


def version(name: str) -> str:
    spec = SPECS[name]
    if spec.distribution == "python":
        return f"{platform.python_implementation()} {platform.python_version()}"
    try:
        found = importlib.metadata.version(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        found = "unknown"
    if spec.ours and (commit := _source_commit()):
        found += f" (git {commit})"
    return found


def _source_commit() -> str | None:
    """``git describe`` of the checkout our package is imported from, if it is one."""
    import os
    import subprocess

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        proc = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None
