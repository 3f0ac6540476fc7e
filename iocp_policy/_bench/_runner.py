"""Running the measurements: child processes, pinning, rounds, interleaving.

Every measurement starts fresh processes: the server (or the microbenchmark)
on one core, the load generator on another.  Within a round every workload
runs on every loop before the next workload starts, and the order of the
loops rotates, so slow drifts of a shared machine spread over all loops.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from . import _loadgen
from ._results import Run
from ._workloads import MicroWorkload, NetWorkload, Workload

CHILD = [sys.executable, "-m", "iocp_policy._bench._child"]
# Children run from the directory that holds the iocp_policy this process
# imported, so that ``-m`` finds the same package (not a checkout in the cwd).
CHILD_CWD = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    rounds: int
    warmup: float  # seconds of load before the measured window
    duration: float  # seconds in the measured window
    full: bool  # microbenchmark sizes: full or quick
    server_cpu: int | None  # the core of the server / microbenchmark process
    client_cpus: tuple[int, ...]  # the cores of the load generator (one thread each); () = unpinned
    micro_timeout: float  # seconds before a microbenchmark counts as hung
    micro_ops: int | None = None  # overrides each microbenchmark's preset size
    startup_timeout: float = 30.0


def choose_cpus() -> tuple[int | None, tuple[int, ...], str | None]:
    """(server core, load generator cores, note): the server gets one core to
    itself and the load generator all the others."""
    if not hasattr(os, "sched_getaffinity"):
        return None, (), "no CPU pinning on this platform"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, (), "only one CPU: server and load generator share it"
    return cpus[-1], tuple(cpus[:-1]), None


def _pin(cpus: set[int]) -> Callable[[], None] | None:
    if not cpus or sys.platform == "win32":  # no sched_setaffinity there (nor cores picked)
        return None

    def pin() -> None:  # runs in the child between fork and exec, like taskset
        os.sched_setaffinity(0, cpus)

    return pin


def _cpuset(cpu: int | None) -> set[int]:
    return set() if cpu is None else {cpu}


def _tail(stream: IO[bytes], limit: int = 4096) -> str:
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(max(0, size - limit))
    lines = [ln for ln in stream.read().decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def _read_line(stream: IO[bytes], timeout: float) -> bytes | None:
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Close the server's stdin (its signal to stop), then make sure it is gone."""
    if proc.returncode is not None:
        return
    try:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ServerFailed(Exception):
    """The server child did not come up; the message says why (its last stderr line)."""


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    loop_class: str
    stderr: IO[bytes]

    def stderr_tail(self) -> str:
        return _tail(self.stderr)


@contextlib.contextmanager
def serving(loop: str, style: str, cpu: int | None, startup_timeout: float = 30.0) -> Iterator[Server]:
    """A server child (``_child server``) on ``loop`` pinned to ``cpu``, accepting
    on 127.0.0.1:<port> when this yields; stopped when the block exits."""
    cmd = [*CHILD, "server", "--loop", loop, "--server", style]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                cwd=CHILD_CWD, preexec_fn=_pin(_cpuset(cpu)))
        try:
            assert proc.stdout is not None
            hello = _read_line(proc.stdout, startup_timeout)
            if not hello:
                proc.kill()
                proc.wait()
                raise ServerFailed(_tail(err) or "the server did not start")
            info = json.loads(hello)
            yield Server(proc, info["port"], info["loop"], err)
        finally:
            _stop(proc)


def run_net(w: NetWorkload, loop: str, rnd: int, st: Settings, loadgen_exe: str) -> Run:
    run = Run(workload=w.name, loop=loop, round=rnd)
    try:
        with serving(loop, w.server, st.server_cpu, st.startup_timeout) as server:
            run.loop_class = server.loop_class
            args = _loadgen.LoadgenArgs(mode=w.client, port=server.port, conns=w.conns,
                                        threads=max(1, len(st.client_cpus)), size=w.size,
                                        warmup=st.warmup, duration=st.duration, server_pid=server.proc.pid)
            client = subprocess.run(_loadgen.command(loadgen_exe, args), capture_output=True, text=True,
                                    timeout=st.warmup + st.duration + 60, preexec_fn=_pin(set(st.client_cpus)))
            _stop(server.proc)  # so that its last words are in the stderr file
            tail = server.stderr_tail()
    except ServerFailed as exc:
        return _failed(run, str(exc))
    except subprocess.TimeoutExpired:
        return _failed(run, "the load generator timed out")
    try:
        out = _loadgen.parse_output(client.stdout)
    except ValueError as exc:
        return _failed(run, f"load generator: {exc}; {client.stderr.strip()}")
    return _fill_net(run, out, tail or None)


def _fill_net(run: Run, out: dict[str, Any], server_note: str | None) -> Run:
    run.note = server_note
    if "error" in out:
        return _failed(run, out["error"])
    run.seconds = out["seconds"]
    requests = out["requests"]
    run.value = requests / run.seconds
    run.mib_s = out["bytes"] / MIB / run.seconds
    run.p50_us, run.p99_us = out["p50_us"], out["p99_us"]
    run.client_cpu_s = out["client_cpu_s"]
    if out["server_cpu_s"] >= 0:
        run.cpu_s = out["server_cpu_s"]
        run.per_cpu = requests / run.cpu_s if run.cpu_s > 0 else None
    if out["errors"] or not requests:
        reason = out["last_error"] or "no request completed"
        detail = f"; server said: {server_note}" if server_note else ""
        return _failed(run, f"{out['errors']} failed requests ({reason}){detail}")
    return run


def run_micro(w: MicroWorkload, loop: str, rnd: int, st: Settings) -> Run:
    run = Run(workload=w.name, loop=loop, round=rnd)
    ops = st.micro_ops or (w.ops_full if st.full else w.ops_quick)
    cmd = [*CHILD, "micro", "--loop", loop, "--name", w.name, "--ops", str(ops)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=st.micro_timeout,
                              cwd=CHILD_CWD, preexec_fn=_pin(_cpuset(st.server_cpu)))
    except subprocess.TimeoutExpired:
        return _failed(run, f"hung: no result after {st.micro_timeout:g} s")
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = proc.stderr.strip().splitlines()
        return _failed(run, last[-1] if last else f"exit status {proc.returncode}")
    out = json.loads(lines[-1])
    run.loop_class = out["loop"]
    run.seconds = out["seconds"]
    run.value = out["ops"] / run.seconds
    run.cpu_s = out["cpu_s"]
    run.per_cpu = out["ops"] / run.cpu_s if run.cpu_s else None
    return run


def _failed(run: Run, error: str) -> Run:
    run.ok = False
    run.error = error
    return run


Job = tuple[int, Workload, str]  # (round, workload, loop)


def schedule(workloads: list[Workload], loops: list[str], rounds: int) -> list[Job]:
    """Rounds, then workloads, then loops in an order that rotates every step."""
    jobs: list[Job] = []
    if not loops:
        return jobs
    step = 0
    for rnd in range(rounds):
        for w in workloads:
            k = step % len(loops)
            jobs.extend((rnd, w, loop) for loop in loops[k:] + loops[:k])
            step += 1
    return jobs


def run_job(job: Job, st: Settings, loadgen_exe: str | None) -> Run:
    rnd, w, loop = job
    if isinstance(w, MicroWorkload):
        return run_micro(w, loop, rnd, st)
    if loadgen_exe is None:
        return _failed(Run(workload=w.name, loop=loop, round=rnd), "no load generator")
    return run_net(w, loop, rnd, st, loadgen_exe)
