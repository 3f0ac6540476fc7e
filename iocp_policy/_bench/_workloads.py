"""The workloads: what each one measures, and which of them the quick run keeps."""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
HTTP_BODY = 1024  # bytes in every HTTP response body
CHURN_SIZE = 1024  # bytes of the one request of a churn connection


@dataclass(frozen=True)
class NetWorkload:
    """A server (in its own process, on the loop under test) driven by the C load generator."""

    name: str
    group: str  # echo | http | churn
    server: str  # sock | streams | protocol | httptools | uvicorn  (see _servers.py)
    client: str  # echo | http | churn  (load generator mode)
    size: int  # bytes per request (echo, churn); 0 for http
    conns: int  # concurrent connections, each with one request in flight
    quick: bool
    description: str
    unit: str = "req/s"
    requires: tuple[str, ...] = ()  # modules the server imports (optional dependencies)


@dataclass(frozen=True)
class MicroWorkload:
    """A loop-core microbenchmark run in its own process (see _micro.py)."""

    name: str
    ops_full: int
    ops_quick: int
    quick: bool
    description: str
    group: str = "micro"
    unit: str = "ops/s"


Workload = NetWorkload | MicroWorkload

_SERVER_TEXT = {
    "sock": "loop.sock_accept/sock_recv/sock_sendall coroutines",
    "streams": "asyncio.start_server, StreamReader.read + StreamWriter.write/drain",
    "protocol": "loop.create_server with an asyncio.Protocol that writes back in data_received",
}


def _size_label(size: int) -> str:
    return f"{size // KIB}k"


def _echo() -> list[NetWorkload]:
    out = []
    for server in ("sock", "streams", "protocol"):
        for size in (1 * KIB, 16 * KIB, 100 * KIB):
            for conns in (10, 100):
                out.append(NetWorkload(
                    name=f"echo-{server}-{_size_label(size)}-c{conns}", group="echo", server=server,
                    client="echo", size=size, conns=conns,
                    quick=conns == 10 and (size == 1 * KIB or (server == "sock" and size == 100 * KIB)),
                    description=f"echo of {size // KIB} KiB messages over {conns} connections; "
                                f"server: {_SERVER_TEXT[server]}",
                ))
    return out


def _http() -> list[NetWorkload]:
    servers = {
        "httptools": "a minimal asyncio.Protocol server parsing with httptools",
        "uvicorn": "an ASGI app under uvicorn (http=httptools, no access log)",
    }
    requires = {"httptools": ("httptools",), "uvicorn": ("uvicorn", "httptools")}
    return [
        NetWorkload(
            name=f"http-{server}-c{conns}", group="http", server=server, client="http", size=0,
            conns=conns, quick=conns == 100, requires=requires[server],
            description=f"HTTP/1.1 keep-alive GET, {HTTP_BODY}-byte body, {conns} connections; "
                        f"server: {text}",
        )
        for server, text in servers.items()
        for conns in (10, 100)
    ]


def _churn() -> list[NetWorkload]:
    return [
        NetWorkload(
            name=f"churn-{server}-c10", group="churn", server=server, client="churn", size=CHURN_SIZE,
            conns=10, quick=server == "sock", unit="conn/s",
            description=f"connect, one {CHURN_SIZE}-byte echo, close; 10 at a time; "
                        f"server: {_SERVER_TEXT[server]}",
        )
        for server in ("sock", "streams", "protocol")
    ]


def _micro() -> list[MicroWorkload]:
    return [
        MicroWorkload("call_soon-chained", 1_000_000, 200_000, True,
                      "a callback that schedules the next one with call_soon; callbacks/s"),
        MicroWorkload("call_soon-batched", 1_000_000, 200_000, True,
                      "10,000 call_soon at a time, then let the loop run them; callbacks/s"),
        MicroWorkload("call_later-half-cancelled", 200_000, 50_000, True,
                      "timers 0-10 ms ahead, every other one cancelled, wait for the last; timers/s"),
        MicroWorkload("tasks-sleep0", 1_000_000, 200_000, True,
                      "1,000 tasks each awaiting asyncio.sleep(0) in a loop (1,000 times in the full "
                      "run); task steps/s"),
        MicroWorkload("future-roundtrip", 500_000, 100_000, True,
                      "create_future, resolve it from a call_soon callback, await it; round trips/s"),
        MicroWorkload("call_soon_threadsafe", 500_000, 100_000, True,
                      "another thread calls call_soon_threadsafe as fast as it can; callbacks/s"),
    ]


ALL: tuple[Workload, ...] = (*_echo(), *_http(), *_churn(), *_micro())
BY_NAME: dict[str, Workload] = {w.name: w for w in ALL}


def select(patterns: list[str] | None, quick: bool) -> list[Workload]:
    """Workloads whose name matches any of the patterns (fnmatch), or the quick/full set."""
    import fnmatch

    if patterns:
        return [w for w in ALL if any(fnmatch.fnmatchcase(w.name, p) for p in patterns)]
    return [w for w in ALL if w.quick or not quick]
