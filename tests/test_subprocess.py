"""Subprocesses (asyncio.create_subprocess_* and loop.subprocess_*), differential:
our backends and the stdlib loop; plus port.wait_process on its own."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from port_helpers import fd_count, pump

import iocp_policy
from iocp_policy import _port as port_module
from iocp_policy._port import open_port

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX children (signals, sh, pidfd, /proc)")
NEWLINE = os.linesep.encode()  # what print() ends a line with in the child


@pytest.fixture(autouse=True)
def _windows_emulated_has_no_pipes(request: pytest.FixtureRequest) -> None:
    callspec = getattr(request.node, "callspec", None)
    params = callspec.params if callspec is not None else {}
    name = params.get("loop_name") or params.get("our_loop_name") or params.get("port_name")
    if sys.platform == "win32" and name == "emulated":
        pytest.skip("the emulated backend on Windows uses select(), which cannot wait on pipes "
                    "(it refuses subprocess pipes, as the stdlib's Windows SelectorEventLoop does)")

PY = sys.executable
PIPE = asyncio.subprocess.PIPE

ECHO = "import sys\nwhile b := sys.stdin.buffer.read1(65536):\n    sys.stdout.buffer.write(b)\n    sys.stdout.flush()\n"


@pytest.mark.parametrize("size", [0, 1, 1 << 20, 16 << 20])
def test_echo_through_pipes(run: Any, size: int) -> None:
    """Both directions in flight at once: the child echoes as it reads."""

    async def main() -> tuple[bool, int | None]:
        proc = await asyncio.create_subprocess_exec(PY, "-c", ECHO, stdin=PIPE, stdout=PIPE)
        payload = os.urandom(size)
        out, err = await proc.communicate(payload)
        return out == payload and err is None, proc.returncode

    assert run(main()) == (True, 0)


def test_64mib_on_stdout_and_stderr_does_not_deadlock(run: Any) -> None:
    code = ("import sys\nchunk = b'o' * (1 << 20)\nfor _ in range(64):\n"
            "    sys.stdout.buffer.write(chunk)\n    sys.stderr.buffer.write(chunk.replace(b'o', b'e'))\n")

    async def main() -> tuple[int, int, str, str, int | None]:
        proc = await asyncio.create_subprocess_exec(PY, "-c", code, stdout=PIPE, stderr=PIPE)
        out, err = await proc.communicate()
        return (len(out), len(err), hashlib.md5(out).hexdigest(), hashlib.md5(err).hexdigest(),
                proc.returncode)

    n_out, n_err, h_out, h_err, rc = run(main())
    assert (n_out, n_err, rc) == (64 << 20, 64 << 20, 0)
    assert h_out == hashlib.md5(b"o" * (64 << 20)).hexdigest()
    assert h_err == hashlib.md5(b"e" * (64 << 20)).hexdigest()


def test_streaming_readline_and_write(run: Any) -> None:
    async def main() -> list[bytes]:
        proc = await asyncio.create_subprocess_exec(PY, "-u", "-c", ECHO, stdin=PIPE, stdout=PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        lines = []
        for i in range(50):
            proc.stdin.write(b"line %d\n" % i)
            await proc.stdin.drain()
            lines.append(await proc.stdout.readline())
        proc.stdin.close()
        await proc.stdin.wait_closed()
        assert await proc.stdout.read() == b""
        assert await proc.wait() == 0
        return lines

    assert run(main()) == [b"line %d\n" % i for i in range(50)]


@pytest.mark.parametrize("code", [0, 1, 3, 255])
def test_exit_codes(run: Any, code: int) -> None:
    async def main() -> tuple[int, int | None, int]:
        proc = await asyncio.create_subprocess_exec(PY, "-c", f"raise SystemExit({code})")
        rc = await proc.wait()
        shell = await asyncio.create_subprocess_shell(f"exit {code}")
        return rc, proc.returncode, await shell.wait()

    assert run(main()) == (code, code, code)


@posix_only
def test_shell_and_stderr_to_stdout(run: Any) -> None:
    async def main() -> tuple[bytes, bytes | None, int | None]:
        proc = await asyncio.create_subprocess_shell(
            "echo out; echo err 1>&2; exit 4", stdout=PIPE, stderr=subprocess.STDOUT)
        out, err = await proc.communicate()
        return out, err, proc.returncode

    out, err, rc = run(main())
    assert sorted(out.split()) == [b"err", b"out"] and err is None and rc == 4


def test_devnull_and_inherited(run: Any) -> None:
    async def main() -> tuple[bytes, int]:
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; print(len(sys.stdin.read()))",
            stdin=subprocess.DEVNULL, stdout=PIPE, stderr=subprocess.DEVNULL)
        out, _ = await proc.communicate()
        return out, await proc.wait()

    assert run(main()) == (b"0" + NEWLINE, 0)


@posix_only
def test_signals_to_children(run: Any) -> None:
    child = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGUSR1, lambda *a: (print('usr1', flush=True), sys.exit(7)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )

    async def main() -> tuple[bytes, int, int, int]:
        proc = await asyncio.create_subprocess_exec(PY, "-c", child, stdout=PIPE)
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGUSR1)
        out = await proc.stdout.read()
        rc_usr1 = await proc.wait()
        sleeper = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(60)")
        sleeper.terminate()
        rc_term = await sleeper.wait()
        sleeper2 = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(60)")
        sleeper2.kill()
        return out, rc_usr1, rc_term, await sleeper2.wait()

    assert run(main()) == (b"usr1\n", 7, -signal.SIGTERM, -signal.SIGKILL)


@posix_only
def test_child_ignoring_sigterm_is_then_killed(run: Any) -> None:
    child = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
             "print('ready', flush=True)\ntime.sleep(60)\n")

    async def main() -> tuple[bool, int | None, int]:
        proc = await asyncio.create_subprocess_exec(PY, "-c", child, stdout=PIPE)
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
        proc.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), 0.5)
            survived = False
        except TimeoutError:
            survived = True  # it ignores SIGTERM and sleeps for a minute
        rc_before = proc.returncode
        proc.kill()
        return survived, rc_before, await proc.wait()

    assert run(main()) == (True, None, -signal.SIGKILL)


def test_100_concurrent_subprocesses(run: Any) -> None:
    async def one(i: int) -> tuple[bytes, int]:
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; print(sys.argv[1]); sys.exit(int(sys.argv[2]))", f"child {i}", str(i % 7),
            stdout=PIPE)
        out, _ = await proc.communicate()
        return out, await proc.wait()

    async def main() -> list[tuple[bytes, int]]:
        return await asyncio.gather(*(one(i) for i in range(100)))

    assert run(main()) == [(b"child %d" % i + NEWLINE, i % 7) for i in range(100)]


def test_communicate_with_child_closing_stdin_early(run: Any) -> None:
    """The child closes stdin at once: feeding it must not raise (the stdlib
    swallows BrokenPipeError/ConnectionResetError there)."""
    child = "import os, sys, time\nos.close(0)\ntime.sleep(0.2)\nprint('done')\n"

    async def main() -> tuple[bytes, int | None]:
        proc = await asyncio.create_subprocess_exec(PY, "-c", child, stdin=PIPE, stdout=PIPE)
        out, _ = await proc.communicate(b"x" * (8 << 20))
        return out, proc.returncode

    assert run(main()) == (b"done" + NEWLINE, 0)


@posix_only
def test_stdin_write_after_child_exit_reports_like_stdlib(run: Any) -> None:
    async def main() -> str:
        proc = await asyncio.create_subprocess_exec(PY, "-c", "pass", stdin=PIPE)
        assert proc.stdin is not None
        await proc.wait()
        await asyncio.sleep(0.05)  # the pipe's watch notices the reader is gone
        proc.stdin.write(b"x" * 100_000)
        try:
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            return type(exc).__name__
        return "no error"

    assert run(main()) in ("BrokenPipeError", "ConnectionResetError")


@posix_only
def test_pass_fds_and_start_new_session(run: Any) -> None:
    async def main() -> tuple[bytes, bool, bool]:
        r, w = os.pipe()
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", f"import os; os.write({w}, b'via pass_fds'); print(os.getsid(0) == os.getpid())",
            stdout=PIPE, pass_fds=(w,), start_new_session=True)
        out, _ = await proc.communicate()
        os.close(w)
        got = os.read(r, 100)
        # Without pass_fds the same descriptor is not inherited (close_fds).
        closed_fds = await asyncio.create_subprocess_exec(
            PY, "-c", f"import os\ntry:\n    os.fstat({r})\nexcept OSError:\n    print('closed')", stdout=PIPE)
        out2, _ = await closed_fds.communicate()
        os.close(r)
        return got, out == b"True\n", out2 == b"closed\n"

    assert run(main()) == (b"via pass_fds", True, True)


@posix_only
def test_protocol_callback_order(run: Any) -> None:
    class Proto(asyncio.SubprocessProtocol):
        def __init__(self) -> None:
            self.events: list[str] = []
            self.out = bytearray()
            self.done = asyncio.get_running_loop().create_future()

        def connection_made(self, transport: Any) -> None:
            self.events.append("made")

        def pipe_data_received(self, fd: int, data: bytes) -> None:
            if self.events[-1] != f"data{fd}":
                self.events.append(f"data{fd}")
            self.out += data

        def pipe_connection_lost(self, fd: int, exc: BaseException | None) -> None:
            self.events.append(f"pipe_lost{fd}")

        def process_exited(self) -> None:
            self.events.append("exited")

        def connection_lost(self, exc: BaseException | None) -> None:
            self.events.append("lost")
            self.done.set_result(exc)

    async def main() -> tuple[list[str], bytes, Any, int | None, Any]:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.subprocess_exec(
            Proto, PY, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())")
        assert transport.get_pid() > 0 and transport.get_returncode() is None
        stdin = transport.get_pipe_transport(0)
        stdin.write(b"shout")
        stdin.close()
        exc = await proto.done
        rc = transport.get_returncode()
        assert await transport._wait() == 0
        transport.close()
        return proto.events, bytes(proto.out), exc, rc, transport.get_pipe_transport(3)

    events, out, exc, rc, none = run(main())
    assert out == b"SHOUT" and exc is None and rc == 0 and none is None
    assert events[0] == "made" and events[-1] == "lost"
    assert sorted(events[1:-1]) == sorted(["data1", "pipe_lost0", "pipe_lost1", "pipe_lost2", "exited"])
    assert events.index("data1") < events.index("pipe_lost1")


def test_transport_close_kills_running_child(run: Any) -> None:
    async def main() -> tuple[int, bool]:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, PY, "-c", "import time; time.sleep(60)")
        transport.close()
        assert transport.is_closing()
        rc = await transport._wait()
        return rc, transport.is_closing()

    # POSIX: SIGKILL; Windows: TerminateProcess(handle, 1), as the stdlib.
    assert run(main()) == (-signal.SIGKILL if sys.platform != "win32" else 1, True)


@posix_only
def test_send_signal_after_exit(run: Any) -> None:
    async def main() -> str:
        proc = await asyncio.create_subprocess_exec(PY, "-c", "pass")
        await proc.wait()
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return "ProcessLookupError"
        return "ignored"

    # wait() returned: the transport has let go of the process on every version.
    assert run(main()) == "ProcessLookupError"


def test_argument_errors(run: Any) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        msgs = []
        for kwargs in ({"universal_newlines": True}, {"shell": True}, {"bufsize": 1}, {"text": True},
                       {"encoding": "utf-8"}, {"errors": "strict"}):
            with pytest.raises(ValueError) as exc:
                await loop.subprocess_exec(asyncio.SubprocessProtocol, "true", **kwargs)
            msgs.append(str(exc.value))
        for kwargs in ({"shell": False}, {"universal_newlines": True}):
            with pytest.raises(ValueError) as exc:
                await loop.subprocess_shell(asyncio.SubprocessProtocol, "true", **kwargs)
            msgs.append(str(exc.value))
        with pytest.raises(ValueError) as exc:
            await loop.subprocess_shell(asyncio.SubprocessProtocol, ["true"])
        msgs.append(str(exc.value))
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/nonexistent/program")
        return msgs

    assert run(main()) == [
        "universal_newlines must be False", "shell must be False", "bufsize must be 0",
        "text must be False", "encoding must be None", "errors must be None",
        "shell must be True", "universal_newlines must be False", "cmd must be a string",
    ]


def test_subprocess_from_loop_in_thread(loop_factory: Any) -> None:
    """Works outside the main thread too (no SIGCHLD handler involved)."""
    import threading

    out: list[Any] = []

    def target() -> None:
        async def main() -> tuple[bytes, int | None]:
            proc = await asyncio.create_subprocess_exec(PY, "-c", "print('hi')", stdout=PIPE)
            o, _ = await proc.communicate()
            return o, proc.returncode

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            out.append(runner.run(main()))

    t = threading.Thread(target=target)
    t.start()
    t.join(60)
    assert out == [(b"hi" + NEWLINE, 0)]


# -- ours: how the exit is observed ----------------------------------------------------


@posix_only
def test_no_sigchld_handler_and_no_thread(port_name: str) -> None:
    """pidfd on Linux: exit arrives as a completion; nothing process-wide changes."""
    import threading

    async def main() -> tuple[set[str], Any]:
        before = set(threading.enumerate())
        proc = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(0.2)")
        started = {t.name for t in set(threading.enumerate()) - before}
        await proc.wait()
        return started, signal.getsignal(signal.SIGCHLD)

    with asyncio.Runner(loop_factory=lambda: iocp_policy.new_event_loop(backend=port_name)) as runner:
        started, handler = runner.run(main())
    if hasattr(os, "pidfd_open"):
        assert started == set()
    assert handler == signal.SIG_DFL


@posix_only
def test_without_pidfd_a_waiter_thread_stands_in(port_name: str, monkeypatch: Any) -> None:
    def refused(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "pidfd_open blocked (test)")

    monkeypatch.setattr(os, "pidfd_open", refused, raising=False)

    async def main() -> tuple[list[int | None], int]:
        import threading

        procs = [await asyncio.create_subprocess_exec(PY, "-c", f"import time; time.sleep(0.3); raise SystemExit({i})")
                 for i in range(5)]
        waiters = sum(t.name.startswith("iocp_policy-waitpid-") for t in threading.enumerate())
        return [await p.wait() for p in procs], waiters

    with asyncio.Runner(loop_factory=lambda: iocp_policy.new_event_loop(backend=port_name)) as runner:
        assert runner.run(main()) == ([0, 1, 2, 3, 4], 5)


@pytest.fixture
def port(port_name: str) -> Any:
    p, _ = open_port(port_name)
    yield p
    p.close()


@posix_only
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds in /proc/self/fd")
def test_port_wait_process_contract(port: Any) -> None:
    """Completes once, after exit, without reaping; owns its descriptor."""
    fds = fd_count()
    child = subprocess.Popen([PY, "-c", "import time; time.sleep(0.2)"])
    got: list[int] = []
    op = port.op(child.pid, got.append)
    port.wait_process(op, child.pid)
    assert op.active
    port.run(0)
    assert got == []
    pump(port, lambda: got)
    assert got[0] >= 0 and len(got) == 1 and not op.active
    assert child.returncode is None  # the port did not reap it...
    assert child.poll() == 0  # ...the Popen does
    assert fd_count() == fds  # the pidfd went with the final completion
    # cancellation
    sleeper = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])
    op2 = port.op(sleeper.pid, got.append)
    port.wait_process(op2, sleeper.pid)
    port.run(0)
    assert port.cancel(op2)
    pump(port, lambda: len(got) == 2)
    assert got[1] == -errno.ECANCELED and fd_count() == fds
    sleeper.kill()
    sleeper.wait()
    # a child that is already gone (reaped) completes at once
    gone = subprocess.Popen(["true"])
    gone.wait()
    op3 = port.op(gone.pid, got.append)
    port.wait_process(op3, gone.pid)
    pump(port, lambda: len(got) == 3)
    assert got[2] >= 0 and fd_count() == fds


@posix_only
def test_process_exit_fd_fallback_does_not_reap(monkeypatch: Any) -> None:
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    child = subprocess.Popen([PY, "-c", "import time; time.sleep(0.1)"])
    fd = port_module.process_exit_fd(child.pid)
    try:
        assert os.read(fd, 1) == b""  # blocks until the waiter thread closes the write end
    finally:
        os.close(fd)
    assert child.returncode is None and child.poll() == 0


@posix_only
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds in /proc/self/fd")
def test_loop_closed_with_child_running_leaks_nothing(port_name: str) -> None:
    fds = fd_count()
    loop = iocp_policy.new_event_loop(backend=port_name)
    transport, _ = loop.run_until_complete(loop.subprocess_exec(
        asyncio.SubprocessProtocol, PY, "-c", "import time; time.sleep(60)", stdin=None, stdout=None,
        stderr=None))
    pid = transport.get_pid()
    assert loop._port.inflight >= 1  # the exit wait
    transport.close()  # kills it; the exit has not been observed yet
    loop.close()  # cancels the wait, closes the pidfd
    os.waitpid(pid, 0)
    assert fd_count() == fds
