"""The child processes of the benchmark: one loop, one job, then exit.

    python -m iocp_policy._bench._child server --loop NAME --server STYLE
        serve on 127.0.0.1:<free port>; print {"port": ..., "loop": ...} once
        accepting; stop when stdin reaches EOF
    python -m iocp_policy._bench._child micro --loop NAME --name BENCH --ops N
        run one microbenchmark; print {"ops", "seconds", "cpu_s", "loop"}

A failure prints a traceback on stderr and exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time

from . import _loops


def _loop_label(loop: asyncio.AbstractEventLoop) -> str:
    cls = type(loop)
    backend = getattr(loop, "backend", None)
    label = f"{cls.__module__}.{cls.__qualname__}"
    return f"{label}[{backend}]" if backend else label


def _emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _serve(style: str) -> None:
    from ._servers import SERVERS, listening_socket

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    listener = listening_socket()
    port = listener.getsockname()[1]

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the parent closed our stdin
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    try:
        await SERVERS[style](listener, stop, lambda: _emit({"port": port, "loop": _loop_label(loop)}))
    finally:
        listener.close()


def _micro(loop_name: str, name: str, ops: int) -> dict[str, object]:
    from ._micro import MICRO

    with asyncio.Runner(loop_factory=_loops.factory(loop_name)) as runner:
        label = _loop_label(runner.get_loop())
        t0, c0 = time.perf_counter(), time.process_time()
        done = runner.run(MICRO[name](ops))
        t1, c1 = time.perf_counter(), time.process_time()
    return {"ops": done, "seconds": t1 - t0, "cpu_s": c1 - c0, "loop": label}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m iocp_policy._bench._child")
    sub = parser.add_subparsers(dest="cmd", required=True)
    server = sub.add_parser("server")
    server.add_argument("--loop", required=True, choices=_loops.ALL)
    server.add_argument("--server", required=True)
    micro = sub.add_parser("micro")
    micro.add_argument("--loop", required=True, choices=_loops.ALL)
    micro.add_argument("--name", required=True)
    micro.add_argument("--ops", type=int, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "server":
        with asyncio.Runner(loop_factory=_loops.factory(args.loop)) as runner:
            runner.run(_serve(args.server))
    else:
        _emit(_micro(args.loop, args.name, args.ops))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
