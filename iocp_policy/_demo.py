"""``python -m iocp_policy demo``: an echo server written with ``loop.sock_*``,
run with ``asyncio.Runner(loop_factory=iocp_policy.new_event_loop)``, and a
client that checks every reply.  It is a smoke test a person can read, not a
benchmark (``bench/`` measures)."""

from __future__ import annotations

import argparse
import asyncio
import socket
import time

from ._policy import new_event_loop


async def _handle(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    with conn:
        while data := await loop.sock_recv(conn, 65536):
            await loop.sock_sendall(conn, data)


async def _echo_demo(clients: int, messages: int, size: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    handlers: set[asyncio.Task[None]] = set()

    async def serve() -> None:
        while True:
            conn, _ = await loop.sock_accept(listener)
            task = loop.create_task(_handle(loop, conn))
            handlers.add(task)
            task.add_done_callback(handlers.discard)

    server = loop.create_task(serve())
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]

    async def client() -> None:
        s = socket.socket()
        s.setblocking(False)
        await loop.sock_connect(s, listener.getsockname())
        with s:
            for _ in range(messages):
                await loop.sock_sendall(s, payload)
                got = bytearray()
                while len(got) < size:
                    chunk = await loop.sock_recv(s, 65536)
                    if not chunk:
                        raise ConnectionError("server closed early")
                    got += chunk
                if got != payload:
                    raise AssertionError("echo mismatch")

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    server.cancel()
    for t in list(handlers):
        t.cancel()
    listener.close()
    total = clients * messages
    return {"round_trips": total, "seconds": elapsed, "per_second": total / elapsed}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m iocp_policy demo")
    parser.add_argument("--backend", default=None, help="io_uring, iocp or emulated (default: auto)")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args(argv)

    def factory() -> asyncio.AbstractEventLoop:
        return new_event_loop(backend=args.backend)

    with asyncio.Runner(loop_factory=factory) as runner:
        backend = runner.get_loop().backend  # type: ignore[attr-defined]
        result = runner.run(_echo_demo(args.clients, args.messages, args.size))
    print(
        f"echo demo on backend={backend}: {args.clients} clients x {args.messages} messages of "
        f"{args.size} bytes, all verified: {result['round_trips']:.0f} round trips in "
        f"{result['seconds']:.2f}s ({result['per_second']:.0f}/s)"
    )
    return 0
