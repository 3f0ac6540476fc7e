"""Signal handlers and Ctrl-C, differential (our backends and the stdlib loop),
plus the signal wakeup fd that only our loops install while they run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import pytest

import iocp_policy

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture(autouse=True)
def _restore_signal_state() -> Any:
    """A failing test must not leave handlers or a wakeup fd behind."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    assert signal.set_wakeup_fd(-1) == -1, "a wakeup fd was left installed"


def kill_from_thread(sig: int, delay: float = 0.05, thread_id: int | None = None) -> threading.Thread:
    """Send ``sig`` from another thread, while the loop waits in the kernel."""

    def fire() -> None:
        if thread_id is None:
            os.kill(os.getpid(), sig)
        else:
            signal.pthread_kill(thread_id, sig)

    t = threading.Timer(delay, fire)
    t.start()
    return t


def test_handler_runs_as_loop_callback(run: Any) -> None:
    async def main() -> tuple[Any, ...]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Any, ...]] = loop.create_future()

        def handler(*args: Any) -> None:
            # A loop callback: in the loop's thread, with the loop running.
            fut.set_result((args, asyncio.get_running_loop() is loop, threading.current_thread().name))

        loop.add_signal_handler(signal.SIGUSR1, handler, "a", 2)
        t = kill_from_thread(signal.SIGUSR1)
        try:
            return await asyncio.wait_for(fut, 10)  # nothing else to do: the loop sleeps in the kernel
        finally:
            t.join()
            assert loop.remove_signal_handler(signal.SIGUSR1)

    assert run(main()) == (("a", 2), True, "MainThread")


def test_every_delivery_is_handled(run: Any) -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        seen: list[int] = []
        more = asyncio.Event()

        def handler() -> None:
            seen.append(1)
            more.set()

        loop.add_signal_handler(signal.SIGUSR2, handler)
        for _ in range(20):
            more.clear()
            t = kill_from_thread(signal.SIGUSR2, delay=0.001)
            await asyncio.wait_for(more.wait(), 10)
            t.join()
        loop.remove_signal_handler(signal.SIGUSR2)
        return len(seen)

    assert run(main()) == 20


def test_handler_exception_goes_to_exception_handler(run: Any) -> None:
    async def main() -> tuple[str, bool]:
        loop = asyncio.get_running_loop()
        ctxs: list[dict[str, Any]] = []
        got = loop.create_future()

        def exc_handler(lp: Any, ctx: dict[str, Any]) -> None:
            ctxs.append(ctx)
            got.set_result(None)

        def boom() -> None:
            raise ZeroDivisionError("in a signal handler")

        loop.set_exception_handler(exc_handler)
        loop.add_signal_handler(signal.SIGUSR1, boom)
        t = kill_from_thread(signal.SIGUSR1)
        await asyncio.wait_for(got, 10)
        t.join()
        loop.remove_signal_handler(signal.SIGUSR1)
        ctx = ctxs[0]
        return ctx["message"].split(" ")[0:3], isinstance(ctx["exception"], ZeroDivisionError) and \
            isinstance(ctx["handle"], asyncio.Handle)

    words, ok = run(main())
    assert words == ["Exception", "in", "callback"] and ok


def test_replace_and_remove(run: Any) -> None:
    async def main() -> tuple[list[str], bool, bool, Any, Any]:
        loop = asyncio.get_running_loop()
        calls: list[str] = []
        got = asyncio.Event()

        def cb(name: str) -> None:
            calls.append(name)
            got.set()

        loop.add_signal_handler(signal.SIGUSR1, cb, "first")
        loop.add_signal_handler(signal.SIGUSR1, cb, "second")  # replaces
        t = kill_from_thread(signal.SIGUSR1)
        await asyncio.wait_for(got.wait(), 10)
        t.join()
        removed = loop.remove_signal_handler(signal.SIGUSR1)
        again = loop.remove_signal_handler(signal.SIGUSR1)
        loop.add_signal_handler(signal.SIGINT, cb, "int")
        assert loop.remove_signal_handler(signal.SIGINT)
        return calls, removed, again, signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGINT)

    calls, removed, again, usr1, sigint = run(main())
    assert calls == ["second"] and removed is True and again is False
    assert usr1 == signal.SIG_DFL
    assert sigint is signal.default_int_handler


def test_errors(run: Any) -> None:
    async def coro() -> None:
        pass

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        out = []
        for bad, args in ((signal.SIGUSR1, (coro,)), ("SIGUSR1", (print,)), (1000, (print,)),
                          (signal.SIGKILL, (print,)), (signal.SIGSTOP, (print,))):
            try:
                loop.add_signal_handler(bad, *args)  # type: ignore[arg-type]
            except Exception as exc:
                out.append(f"{type(exc).__name__}: {exc}")
        for bad in ("x", 1000):
            try:
                loop.remove_signal_handler(bad)  # type: ignore[arg-type]
            except Exception as exc:
                out.append(f"{type(exc).__name__}: {exc}")
        out.append(str(loop.remove_signal_handler(signal.SIGKILL)))
        return out

    assert run(main()) == [
        "TypeError: coroutines cannot be used with add_signal_handler()",
        "TypeError: sig must be an int, not 'SIGUSR1'",
        "ValueError: invalid signal number 1000",
        "RuntimeError: sig 9 cannot be caught",
        f"RuntimeError: sig {int(signal.SIGSTOP)} cannot be caught",
        "TypeError: sig must be an int, not 'x'",
        "ValueError: invalid signal number 1000",
        "False",
    ]


def test_closed_loop_and_other_thread(loop_factory: Any) -> None:
    lp = loop_factory()
    lp.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        lp.add_signal_handler(signal.SIGUSR1, print)
    out: list[str] = []

    def in_thread() -> None:
        lp2 = loop_factory()
        try:
            lp2.add_signal_handler(signal.SIGUSR1, print)
        except RuntimeError as exc:
            out.append(str(exc))
        finally:
            lp2.close()

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert out == ["set_wakeup_fd only works in main thread of the main interpreter"]
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_close_removes_handlers_and_wakeup_fd(loop_factory: Any) -> None:
    lp = loop_factory()
    lp.add_signal_handler(signal.SIGUSR1, print)
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    lp.run_until_complete(asyncio.sleep(0))
    lp.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.set_wakeup_fd(-1) == -1


def test_signal_between_runs_is_handled_at_next_run(loop_factory: Any) -> None:
    lp = loop_factory()
    try:
        got: list[int] = []
        lp.add_signal_handler(signal.SIGUSR1, got.append, 1)
        os.kill(os.getpid(), signal.SIGUSR1)  # the loop is not running
        lp.run_until_complete(asyncio.sleep(0.01))
        assert got == [1]
    finally:
        lp.close()


# -- ours: the wakeup fd while running --------------------------------------------------


def test_wakeup_fd_installed_while_running_and_restored(port_name: str) -> None:
    """The stdlib selector loop installs none unless add_signal_handler was
    used; ours installs the port's one for each run in the main thread."""
    lp = iocp_policy.new_event_loop(backend=port_name)
    try:
        prev_r, prev_w = os.pipe()
        os.set_blocking(prev_w, False)
        assert signal.set_wakeup_fd(prev_w) == -1

        async def peek() -> int:
            fd = signal.set_wakeup_fd(-1)
            signal.set_wakeup_fd(fd)
            return fd

        during = lp.run_until_complete(peek())
        assert during == lp._port.wakeup_fd()  # type: ignore[attr-defined]
        assert signal.set_wakeup_fd(-1) == prev_w  # the previous one is back after the run
        os.close(prev_r)
        os.close(prev_w)
    finally:
        lp.close()


def test_signal_to_another_thread_still_wakes_the_loop(port_name: str) -> None:
    """The gap the wakeup fd closes: the signal interrupts some other thread,
    so the loop's kernel wait sees no EINTR; only the byte the interpreter
    writes to the wakeup fd can wake it, and then the Python-level handler
    (here one that only stops the loop, not a loop callback) runs.  The
    stdlib's selector loop sleeps through this until its next event."""
    lp = iocp_policy.new_event_loop(backend=port_name)
    stop_other = threading.Event()
    other = threading.Thread(target=stop_other.wait)
    other.start()
    stopped_by: list[str] = []

    def on_usr1(signum: int, frame: Any) -> None:
        stopped_by.append("signal")
        lp.stop()

    old = signal.signal(signal.SIGUSR1, on_usr1)
    try:
        assert other.ident is not None
        kill_from_thread(signal.SIGUSR1, delay=0.1, thread_id=other.ident)
        guard = lp.call_later(30, lambda: (stopped_by.append("guard"), lp.stop()))
        lp.run_forever()
        guard.cancel()
    finally:
        signal.signal(signal.SIGUSR1, old)
        stop_other.set()
        other.join()
        lp.close()
    assert stopped_by == ["signal"]


# -- Ctrl-C in a child process --------------------------------------------------------
#
# tests/test_entry.py covers the basic case (SIGINT while the main task
# sleeps).  These add: a second Ctrl-C while the first cancellation is being
# handled, Ctrl-C with a loop SIGINT handler, Ctrl-C during a subprocess
# wait, and (ours) SIGINT delivered to a non-main thread.

def run_child(loop_name: str, body: str, *, signals: int = 1, to_thread: bool = False) -> tuple[int, list[str]]:
    """Run ``main()`` of ``body`` in a child on ``loop_name``, Ctrl-C it."""
    runner = ("asyncio.run(main())" if loop_name == "stdlib" else "iocp_policy.run(main())")
    code = (
        "import asyncio, iocp_policy, os, signal, sys, threading\n"
        f"{body}\n"
        "try:\n"
        f"    {runner}\n"
        "except KeyboardInterrupt:\n"
        "    print('KeyboardInterrupt', flush=True)\n"
        "    sys.exit(42)\n"
        "print('returned', flush=True)\n"
    )
    env = {**os.environ, "IOCP_POLICY_BACKEND": "emulated" if loop_name == "emulated" else "io_uring"}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stdin=subprocess.PIPE,
                            text=True, env=env, cwd=tempfile.gettempdir())
    assert proc.stdout is not None and proc.stdin is not None
    lines = []
    for _ in range(signals):
        while True:  # up to the next "ready" line
            line = proc.stdout.readline().strip()
            assert line, "the child ended early"
            lines.append(line)
            if line.startswith("ready"):
                break
        if to_thread:
            proc.stdin.write("go\n")  # the child signals one of its own threads
            proc.stdin.flush()
        else:
            proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, lines + out.split()


def test_ctrl_c_twice_when_the_task_ignores_the_first(loop_name: str) -> None:
    body = (
        "async def main():\n"
        "    try:\n"
        "        print('ready 1', flush=True)\n"
        "        await asyncio.sleep(3600)\n"
        "    except asyncio.CancelledError:\n"
        "        print('cancelled once', flush=True)\n"
        "    print('ready 2', flush=True)\n"
        "    await asyncio.sleep(3600)\n"
    )
    rc, out = run_child(loop_name, body, signals=2)
    # The second Ctrl-C finds the main task already cancelled once: Runner's
    # handler raises KeyboardInterrupt from inside the loop's kernel wait.
    assert (rc, out) == (42, ["ready 1", "cancelled once", "ready 2", "KeyboardInterrupt"])


def test_ctrl_c_with_a_loop_sigint_handler(loop_name: str) -> None:
    body = (
        "async def main():\n"
        "    loop = asyncio.get_running_loop()\n"
        "    got = loop.create_future()\n"
        "    loop.add_signal_handler(signal.SIGINT, got.set_result, 'handled')\n"
        "    print('ready', flush=True)\n"
        "    print(await got, flush=True)\n"
    )
    rc, out = run_child(loop_name, body)
    assert (rc, out) == (0, ["ready", "handled", "returned"])


def test_ctrl_c_while_awaiting_a_subprocess(loop_name: str) -> None:
    body = (
        "async def main():\n"
        "    proc = await asyncio.create_subprocess_exec(sys.executable, '-c', 'import time; time.sleep(60)')\n"
        "    try:\n"
        "        print('ready', flush=True)\n"
        "        await proc.wait()\n"
        "    except asyncio.CancelledError:\n"
        "        proc.kill()\n"
        "        print('child', await proc.wait(), flush=True)\n"
        "        raise\n"
    )
    rc, out = run_child(loop_name, body)
    assert (rc, out) == (42, ["ready", "child", str(-signal.SIGKILL), "KeyboardInterrupt"])


def test_ctrl_c_delivered_to_another_thread(port_name: str) -> None:
    """Ours only: SIGINT lands on a non-main thread (as it may for any
    process-directed signal), so only the wakeup fd can wake the loop for
    Runner's handler; the stdlib's selector loop would sleep through it."""
    body = (
        "async def main():\n"
        "    loop = asyncio.get_running_loop()\n"
        "    def helper():\n"
        "        sys.stdin.readline()\n"
        "        signal.pthread_kill(threading.get_ident(), signal.SIGINT)\n"
        "    threading.Thread(target=helper, daemon=True).start()\n"
        "    try:\n"
        "        print('ready', flush=True)\n"
        "        await asyncio.sleep(3600)\n"
        "    except asyncio.CancelledError:\n"
        "        print('cancelled', flush=True)\n"
        "        raise\n"
    )
    rc, out = run_child(port_name, body, to_thread=True)
    assert (rc, out) == (42, ["ready", "cancelled", "KeyboardInterrupt"])


# -- the port's side: wakeup_fd() ----------------------------------------------------------


def test_port_wakeup_fd_wakes_a_blocked_run(port_name: str) -> None:
    """A byte written to wakeup_fd() (what the interpreter does for a signal)
    ends a run() blocked in another thread, like wakeup(); the fd stays the
    same for the port's life (the signal module holds on to the number)."""
    from iocp_policy._port import open_port

    port, _ = open_port(port_name)
    try:
        fd = port.wakeup_fd()
        assert os.get_blocking(fd) is False  # set_wakeup_fd requires it
        for _ in range(3):
            t = threading.Timer(0.05, os.write, (fd, bytes([signal.SIGUSR1])))
            t.start()
            t0 = time.monotonic()
            port.run(30)
            woke_early = time.monotonic() - t0 < 29  # the byte ended the wait, not the timeout
            t.join()
            assert woke_early
            assert port.wakeup_fd() == fd
        if port_name == "io_uring":
            port.reset()  # a loop moving to another thread gets a fresh ring...
            assert port.wakeup_fd() == fd  # ...and keeps its wakeup fd
    finally:
        port.close()
    with pytest.raises(RuntimeError):
        port.wakeup_fd()
