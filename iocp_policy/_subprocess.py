"""Child processes: ``subprocess_exec`` and ``subprocess_shell``.

How a child's life reaches the loop (what this module relies on)
=================================================================

``subprocess.Popen`` starts the child (``posix_spawn``/``vfork`` where it
can, with ``pass_fds``, ``start_new_session``, ``cwd``, ``env``... as the
caller asked).  Its stdin/stdout/stderr pipes become the completion-driven
pipe transports of ``_pipes.py``.  The remaining question is how to learn
that the child exited without a ``SIGCHLD`` handler (process-wide, fights
with every other library) or a thread per child (the stdlib's
``ThreadedChildWatcher``):

* The port waits for it: ``port.wait_process(op, pid)`` completes once the
  child has exited.  On Linux that is a pidfd (``pidfd_open``, 5.3+) polled
  like any descriptor: io_uring posts a CQE, the emulated port's selector
  reports it readable, and on Windows the IOCP port registers a wait on the
  process handle.  Where no pidfd can be had (seccomp, old kernels, other
  POSIX systems) the port falls back to a waiter thread, as the stdlib does.
* The port never reaps.  A pidfd turns readable when the child becomes a
  zombie and stays readable after it is reaped, so whoever reaps first
  wins without a race.  We reap with ``Popen.poll()``: the ``Popen`` that
  owns the pid records the status, so ``proc.returncode``, ``Popen.wait()``
  and its ``ResourceWarning`` bookkeeping stay right (``transport.close()``
  may already have reaped through ``Popen.poll()``; that is fine).
* Exit and pipe EOFs arrive in any order.  ``process_exited()`` is called
  from the loop, one callback after the exit completion (as the stdlib's
  watchers do with ``call_soon_threadsafe``); ``connection_lost()`` comes
  once the process has exited *and* every pipe is closed.

The transport class is asyncio's own ``base_subprocess.BaseSubprocessTransport``
with ``_start`` supplied here: its constructor and ``_start`` contract, and
its protocol bookkeeping (``_connect_pipes``, ``_process_exited``,
``_try_finish``, ``_wait``), are the same from 3.11 to 3.13, so callback
order, ``wait()``, ``send_signal()``/``terminate()``/``kill()`` (including
their ``ProcessLookupError`` rules, which changed in 3.12) are exactly the
running Python's.
"""

from __future__ import annotations

import errno
import logging
import subprocess
import sys
from asyncio import base_subprocess
from collections.abc import Callable
from typing import Any

from ._pipes import PipeMixin
from ._port import in_current_context, require_pipes

logger = logging.getLogger("asyncio")

if sys.platform == "win32":  # pragma: no cover - overlapped pipes for the iocp port
    from asyncio.windows_utils import Popen as _Popen
else:
    _Popen = subprocess.Popen

_ECANCELED = -errno.ECANCELED


class SubprocessTransport(base_subprocess.BaseSubprocessTransport):
    """``asyncio.SubprocessTransport``; exit observed through ``port.wait_process``."""

    _loop: Any
    _proc: Any

    def _start(self, args: Any, shell: bool, stdin: Any, stdout: Any, stderr: Any, bufsize: int,
               **kwargs: Any) -> None:
        self._proc = _Popen(args, shell=shell, stdin=stdin, stdout=stdout, stderr=stderr,
                            universal_newlines=False, bufsize=bufsize, **kwargs)
        # Watch for the exit before anything else can fail: if this raises,
        # the base class kills the child.
        port = self._loop._port
        pid = self._proc.pid
        # In the creating task's context, as the stdlib's child watcher callback.
        self._exit_op = port.op(pid, in_current_context(self._on_exit))
        port.wait_process(self._exit_op, pid)

    def _on_exit(self, res: int) -> None:
        """The port says the child has exited (not reaped yet)."""
        proc = self._proc
        if res == _ECANCELED or proc is None or self._returncode is not None:
            return
        returncode = proc.poll()
        if returncode is None:
            # Another thread holds Popen's waitpid lock (it is in wait()):
            # the child is a zombie already, so this returns at once.
            returncode = proc.wait()
        self._loop.call_soon(self._process_exited, returncode)


def _check_popen_args(*, universal_newlines: Any, shell: Any, shell_wanted: bool, bufsize: Any,
                      text: Any, encoding: Any, errors: Any) -> None:
    """The stdlib's checks, with its messages: streams are bytes, unbuffered."""
    if universal_newlines:
        raise ValueError("universal_newlines must be False")
    if shell_wanted and not shell:
        raise ValueError("shell must be True")
    if not shell_wanted and shell:
        raise ValueError("shell must be False")
    if bufsize != 0:
        raise ValueError("bufsize must be 0")
    if text:
        raise ValueError("text must be False")
    if encoding is not None:
        raise ValueError("encoding must be None")
    if errors is not None:
        raise ValueError("errors must be None")


class SubprocessMixin(PipeMixin):
    """``subprocess_exec`` / ``subprocess_shell`` (``asyncio.create_subprocess_*`` use them)."""

    async def subprocess_shell(  # type: ignore[override]
        self, protocol_factory: Callable[[], Any], cmd: Any, *,
        stdin: Any = subprocess.PIPE, stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE,
        universal_newlines: bool = False, shell: bool = True, bufsize: int = 0,
        encoding: Any = None, errors: Any = None, text: Any = None, **kwargs: Any,
    ) -> tuple[Any, Any]:
        if not isinstance(cmd, (bytes, str)):
            raise ValueError("cmd must be a string")
        _check_popen_args(universal_newlines=universal_newlines, shell=shell, shell_wanted=True,
                          bufsize=bufsize, text=text, encoding=encoding, errors=errors)
        return await self._spawn(protocol_factory, cmd, True, (stdin, stdout, stderr), kwargs)

    async def subprocess_exec(  # type: ignore[override]
        self, protocol_factory: Callable[[], Any], program: Any, *args: Any,
        stdin: Any = subprocess.PIPE, stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE,
        universal_newlines: bool = False, shell: bool = False, bufsize: int = 0,
        encoding: Any = None, errors: Any = None, text: Any = None, **kwargs: Any,
    ) -> tuple[Any, Any]:
        _check_popen_args(universal_newlines=universal_newlines, shell=shell, shell_wanted=False,
                          bufsize=bufsize, text=text, encoding=encoding, errors=errors)
        return await self._spawn(protocol_factory, (program, *args), False, (stdin, stdout, stderr), kwargs)

    async def _spawn(self, protocol_factory: Callable[[], Any], args: Any, shell: bool,
                     stdio: tuple[Any, Any, Any], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        require_pipes(self._port, "subprocess_exec/subprocess_shell")
        protocol = protocol_factory()
        if self._debug:  # the command line itself may hold secrets: only its stdio is logged
            logger.debug("start %s (stdin=%r, stdout=%r, stderr=%r)", "shell command" if shell else "program",
                         *stdio)
        transport = await self._make_subprocess_transport(protocol, args, shell, *stdio, 0, **kwargs)
        return transport, protocol

    async def _make_subprocess_transport(self, protocol: Any, args: Any, shell: bool, stdin: Any, stdout: Any,
                                         stderr: Any, bufsize: int, extra: dict[str, Any] | None = None,
                                         **kwargs: Any) -> SubprocessTransport:
        waiter = self.create_future()
        transport = SubprocessTransport(self, protocol, args, shell, stdin, stdout, stderr, bufsize,
                                        waiter=waiter, extra=extra, **kwargs)
        try:
            await waiter  # the pipes are connected and connection_made is scheduled
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transport.close()  # kills the child if it still runs
            await transport._wait()
            raise
        return transport
