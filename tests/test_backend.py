"""Backend choice and fallback, the way users meet it."""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

import iocp_policy
from iocp_policy import _port, _port_uring

HERE = Path(__file__).parent
LINUX = sys.platform.startswith("linux")
needs_uring = pytest.mark.skipif(
    not LINUX or _port_uring._uring is None, reason="needs Linux with the native extension built"
)


def run_child(code: str, *, seccomp: bool = False,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(HERE / "seccomp_child.py"), code] if seccomp else [sys.executable, "-c", code]
    full_env = {**os.environ, **(env or {})}
    full_env.pop("IOCP_POLICY_BACKEND", None)
    # cwd outside the checkout: the child must import the installed package, not the source tree
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=full_env,
                          cwd=tempfile.gettempdir())


CHILD_ECHO = """
import asyncio, socket, iocp_policy
async def main():
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair(); a.setblocking(False); b.setblocking(False)
    await loop.sock_sendall(a, b"ping")
    assert await loop.sock_recv(b, 10) == b"ping"
    return loop.backend, loop.backend_fallback_reason
for _ in range(2):  # two loops: the reason must be logged once per process
    print(iocp_policy.run(main()))
"""


@needs_uring
@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="BPF filter written for x86_64/aarch64")
def test_seccomp_blocked_io_uring_falls_back_and_says_so() -> None:
    probe = run_child("import os; os.sched_yield()", seccomp=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot install a seccomp filter here: {probe.stderr.strip()[-200:]}")
    proc = run_child(CHILD_ECHO, seccomp=True)
    assert proc.returncode == 0, proc.stderr
    results = [ast.literal_eval(line) for line in proc.stdout.strip().splitlines()]
    assert len(results) == 2
    for backend, reason in results:
        assert backend == "emulated"
        assert reason.startswith("io_uring_setup() failed with EPERM") and "seccomp" in reason
    warnings = [line for line in proc.stderr.splitlines() if "backend unavailable" in line]
    assert len(warnings) == 1, proc.stderr  # reported once, not per loop
    assert "using the emulated backend" in warnings[0]


@needs_uring
def test_seccomp_blocked_forced_io_uring_is_a_clear_error() -> None:
    probe = run_child("import os", seccomp=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot install a seccomp filter here: {probe.stderr.strip()[-200:]}")
    proc = run_child(
        "import iocp_policy\n"
        "try:\n    iocp_policy.new_event_loop(backend='io_uring')\n"
        "except iocp_policy.BackendUnavailableError as e:\n    print('ERR', e)\n",
        seccomp=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ERR io_uring_setup() failed with EPERM")


@needs_uring
def test_unfiltered_child_uses_io_uring() -> None:
    proc = run_child(CHILD_ECHO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == ["('io_uring', None)"] * 2


def test_injected_failure_falls_back_and_logs_once(monkeypatch: Any, caplog: Any) -> None:
    monkeypatch.setattr(_port_uring, "inject_errno", "ENOSYS")
    monkeypatch.setattr(_port, "_reported", set())
    monkeypatch.delenv("IOCP_POLICY_BACKEND", raising=False)
    if sys.platform == "win32":
        pytest.skip("io_uring injection is a Linux path")
    with caplog.at_level(logging.WARNING, logger="iocp_policy"):
        loops = [iocp_policy.new_event_loop() for _ in range(3)]
    try:
        assert [lp.backend for lp in loops] == ["emulated"] * 3
        assert "ENOSYS" in (loops[0].backend_fallback_reason or "")
        assert loops[0].run_until_complete(asyncio.sleep(0, "works")) == "works"
    finally:
        for lp in loops:
            lp.close()
    msgs = [r.getMessage() for r in caplog.records if "backend unavailable" in r.getMessage()]
    assert len(msgs) == 1 and "ENOSYS" in msgs[0]


def test_explanations_name_the_cause() -> None:
    import errno

    assert "seccomp" in _port_uring.explain_setup_error(errno.EPERM) or "io_uring_disabled" in \
        _port_uring.explain_setup_error(errno.EPERM)
    assert "ENOSYS" in _port_uring.explain_setup_error(errno.ENOSYS)
    assert "RLIMIT_MEMLOCK" in _port_uring.explain_setup_error(errno.ENOMEM)


@pytest.mark.parametrize("name", ["iocp" if sys.platform != "win32" else "io_uring", "nonsense"])
def test_forcing_unavailable_backend_is_an_error(name: str, monkeypatch: Any) -> None:
    with pytest.raises(iocp_policy.BackendUnavailableError):
        iocp_policy.new_event_loop(backend=name)
    monkeypatch.setenv("IOCP_POLICY_BACKEND", name)
    with pytest.raises(iocp_policy.BackendUnavailableError):
        iocp_policy.new_event_loop()


def test_env_var_forces_emulated(monkeypatch: Any) -> None:
    monkeypatch.setenv("IOCP_POLICY_BACKEND", "emulated")
    lp = iocp_policy.new_event_loop()
    try:
        assert lp.backend == "emulated" and lp.backend_fallback_reason is None
    finally:
        lp.close()


def test_info_cli_reports_backend_and_flags() -> None:
    proc = subprocess.run([sys.executable, "-m", "iocp_policy", "info", "--json"],
                          capture_output=True, text=True, timeout=60, cwd=tempfile.gettempdir(),
                          env={k: v for k, v in os.environ.items() if k != "IOCP_POLICY_BACKEND"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["python"].endswith(platform.python_version())
    if LINUX and _port_uring._uring is not None and _port_uring.open_uring_port:
        assert report["backend"] == "io_uring"
        assert "EXT_ARG" in report["port"]["features"]
        assert report["port"]["setup_flags"]  # the flags actually in use
        assert report["native"]["_uring (io_uring ring)"] == "compiled"


def test_info_cli_text_and_demo() -> None:
    env = {k: v for k, v in os.environ.items() if k != "IOCP_POLICY_BACKEND"}
    info = subprocess.run([sys.executable, "-m", "iocp_policy", "info"], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tempfile.gettempdir())
    assert info.returncode == 0 and "backend" in info.stdout
    demo = subprocess.run([sys.executable, "-m", "iocp_policy", "demo", "--messages", "50"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tempfile.gettempdir())
    assert demo.returncode == 0, demo.stderr
    assert "all verified" in demo.stdout
