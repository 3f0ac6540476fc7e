"""What the numbers were measured on: CPU, cores, kernel, Python, tool versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from typing import Any


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def compiler_version(cc: str | None) -> str | None:
    if cc is None:
        return None
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions of the packages the workloads use (None: not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def loadavg() -> list[float] | None:
    getloadavg = getattr(os, "getloadavg", None)  # none on Windows
    if getloadavg is None:
        return None
    try:
        return list(getloadavg())
    except OSError:
        return None


def describe(cc: str | None = None) -> dict[str, Any]:
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cpus": usable,
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "compiler": compiler_version(cc or shutil.which("cc") or shutil.which("gcc")),
        "packages": package_versions(("httptools", "uvicorn", "matplotlib")),
        "loadavg_at_start": loadavg(),
    }
