"""Cross-check the C load generator against wrk on the same HTTP server.

    python bench/crosscheck_wrk.py [--loops asyncio,uvloop,io_uring] [--duration 5] [--conns 100]

Starts the httptools server of ``python -m iocp_policy bench`` on each loop
(pinned to one core, as the benchmark does), then drives it for the same
time with wrk (``apt-get install wrk``) and with our load generator, both
pinned to the other cores, and prints requests/s and the server's CPU time
for each.  The two clients differ (wrk pipelines nothing either, but parses
differently and counts the requests of the whole window), so expect
agreement within the machine's noise, not to the digit.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

from iocp_policy._bench import _loadgen
from iocp_policy._bench._runner import choose_cpus, serving

Client = Callable[[int, int, int, float, tuple[int, ...]], tuple[float, float]]  # -> (req/s, server busy)


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pinned(cpus: tuple[int, ...]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []


def run_wrk(port: int, pid: int, conns: int, duration: float, cpus: tuple[int, ...]) -> tuple[float, float]:
    threads = max(1, len(cpus))
    cpu0 = proc_cpu(pid)
    out = subprocess.run([*pinned(cpus), "wrk", f"-t{threads}", f"-c{conns}", f"-d{duration:g}s",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    cpu = proc_cpu(pid) - cpu0  # includes wrk's connection setup, which is short
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return float(match.group(1)), cpu / duration


def run_ours(exe: str, port: int, pid: int, conns: int, duration: float,
             cpus: tuple[int, ...]) -> tuple[float, float]:
    args = _loadgen.LoadgenArgs(mode="http", port=port, conns=conns, threads=max(1, len(cpus)), size=1,
                                warmup=0.5, duration=duration, server_pid=pid)
    out = _loadgen.parse_output(subprocess.run([*pinned(cpus), *_loadgen.command(exe, args)],
                                               capture_output=True, text=True, check=True).stdout)
    return out["requests"] / out["seconds"], out["server_cpu_s"] / out["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", default="asyncio,uvloop,io_uring")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--conns", type=int, default=100)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 1
    server_cpu, client_cpus, note = choose_cpus()
    if note:
        print(note)
    with tempfile.TemporaryDirectory() as tmp:
        exe = _loadgen.build(tmp)
        print(f"{'loop':<10} {'client':<8} {'req/s':>10} {'server CPU':>11} {'req/CPU-s':>10}")
        clients: dict[str, Client] = {"wrk": run_wrk, "loadgen": functools.partial(run_ours, exe)}
        for loop in args.loops.split(","):
            for name, client in clients.items():
                with serving(loop, "httptools", server_cpu) as server:
                    rps, busy = client(server.port, server.proc.pid, args.conns, args.duration, client_cpus)
                per_cpu = f"{rps / busy:>10.0f}" if busy > 0 else f"{'-':>10}"
                print(f"{loop:<10} {name:<8} {rps:>10.0f} {busy:>11.0%} {per_cpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
