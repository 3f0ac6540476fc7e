"""Entry points: run(), loop_factory, Runner, policy, install, and Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings

import pytest

import iocp_policy


async def which_loop() -> type:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


def test_run() -> None:
    assert iocp_policy.run(which_loop()) is iocp_policy.Loop


def test_run_debug_flag() -> None:
    async def debug() -> bool:
        return asyncio.get_running_loop().get_debug()

    assert iocp_policy.run(debug(), debug=True) is True


def test_run_inside_running_loop_is_refused() -> None:
    async def nested() -> None:
        coro = which_loop()
        try:
            with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
                iocp_policy.run(coro)
        finally:
            coro.close()

    iocp_policy.run(nested())


def test_runner_loop_factory() -> None:
    with asyncio.Runner(loop_factory=iocp_policy.new_event_loop) as runner:
        assert runner.run(which_loop()) is iocp_policy.Loop
        assert runner.run(which_loop()) is iocp_policy.Loop  # the loop is reused


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.run(loop_factory=) is 3.12+")
def test_asyncio_run_loop_factory() -> None:
    assert asyncio.run(which_loop(), loop_factory=iocp_policy.new_event_loop) is iocp_policy.Loop  # type: ignore[call-arg]


def test_policy_and_install() -> None:
    old = asyncio.get_event_loop_policy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(iocp_policy.EventLoopPolicy())
            lp = asyncio.new_event_loop()
            assert isinstance(lp, iocp_policy.Loop)
            lp.close()
            assert asyncio.run(which_loop()) is iocp_policy.Loop
            asyncio.set_event_loop_policy(None)
            iocp_policy.install()
            assert isinstance(asyncio.get_event_loop_policy(), iocp_policy.EventLoopPolicy)
            assert asyncio.run(which_loop()) is iocp_policy.Loop
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(old)


@pytest.mark.skipif(sys.version_info < (3, 14), reason="policies are deprecated from 3.14")
def test_policy_deprecated_on_314() -> None:
    with pytest.warns(DeprecationWarning):
        iocp_policy.EventLoopPolicy()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signal delivery to a child")
@pytest.mark.parametrize("backend", ["io_uring", "emulated"])
def test_ctrl_c_cancels_main_task(backend: str) -> None:
    """SIGINT while the loop waits in the kernel: asyncio.Runner's handler
    cancels the main task promptly and run() raises KeyboardInterrupt."""
    if backend == "io_uring":
        from iocp_policy import _port_uring

        if _port_uring._uring is None:
            pytest.skip("native extension not built")
    code = (
        "import asyncio, iocp_policy, sys\n"
        "async def main():\n"
        "    print('ready', flush=True)\n"
        "    try:\n"
        "        await asyncio.sleep(3600)\n"
        "    except asyncio.CancelledError:\n"
        "        print('cancelled', flush=True)\n"
        "        raise\n"
        "try:\n"
        "    iocp_policy.run(main())\n"
        "except KeyboardInterrupt:\n"
        "    print('KeyboardInterrupt', flush=True)\n"
        "    sys.exit(42)\n"
    )
    env = {**os.environ, "IOCP_POLICY_BACKEND": backend}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env,
                            cwd=tempfile.gettempdir())  # import the installed package
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.1)  # let it block in the kernel
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 42
    assert out.split() == ["cancelled", "KeyboardInterrupt"]
