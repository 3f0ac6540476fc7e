"""``python -m iocp_policy info``: what this install will do on this machine."""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from typing import Any

from ._port import BackendUnavailableError, open_port


def native_status() -> dict[str, Any]:
    """Which compiled parts are present."""
    spec = importlib.util.find_spec("iocp_policy._uring")
    return {"_uring (io_uring ring)": "compiled" if spec is not None else "not built"}


def gather(backend: str | None = None) -> dict[str, Any]:
    from . import __version__

    report: dict[str, Any] = {
        "iocp_policy": __version__,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "native": native_status(),
        "IOCP_POLICY_BACKEND": os.environ.get("IOCP_POLICY_BACKEND") or "(auto)",
    }
    try:
        port, reason = open_port(backend)
    except BackendUnavailableError as exc:
        report["backend"] = None
        report["error"] = str(exc)
        return report
    try:
        report["backend"] = port.name
        report["fallback_reason"] = reason
        port.run(0)  # the first run enables the ring and registers its fd
        report["port"] = port.info()
    finally:
        port.close()
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = []
    for key, value in report.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            for k, v in value.items():
                if isinstance(v, list):
                    v = " ".join(v) if v else "-"
                lines.append(f"  {k:<22} {v}")
        elif value is not None or key == "backend":
            lines.append(f"{key:<24} {value}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import json

    report = gather()
    if "--json" in argv:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_report(report))
    return 0 if report.get("backend") else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
