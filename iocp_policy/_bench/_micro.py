"""Loop-core microbenchmarks.  Each coroutine performs about ``n`` operations
on the running loop and returns how many it performed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

BATCH = 10_000
TASKS = 1_000
TIMER_SPREAD = 1_000  # timers are spread over this many deadlines, 10 us apart


async def call_soon_chained(n: int) -> int:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = n

    def step() -> None:
        nonlocal left
        left -= 1
        if left:
            loop.call_soon(step)
        else:
            done.set_result(None)

    loop.call_soon(step)
    await done
    return n


async def call_soon_batched(n: int) -> int:
    loop = asyncio.get_running_loop()
    count = 0

    def tick() -> None:
        nonlocal count
        count += 1

    batches = max(1, n // BATCH)
    for _ in range(batches):
        for _ in range(BATCH):
            loop.call_soon(tick)
        await asyncio.sleep(0)
    while count < batches * BATCH:
        await asyncio.sleep(0)
    return count


async def call_later_half_cancelled(n: int) -> int:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    target = n // 2  # handles[::2] are cancelled, the other half fire
    fired = 0

    def fire() -> None:
        nonlocal fired
        fired += 1
        if fired == target:
            done.set_result(None)

    handles = [loop.call_later((i % TIMER_SPREAD) * 1e-5, fire) for i in range(n)]
    for handle in handles[::2]:
        handle.cancel()
    if target:
        await done
    return n


async def tasks_sleep0(n: int) -> int:
    rounds = max(1, n // TASKS)

    async def worker() -> None:
        for _ in range(rounds):
            await asyncio.sleep(0)

    await asyncio.gather(*(worker() for _ in range(TASKS)))
    return rounds * TASKS


async def future_roundtrip(n: int) -> int:
    loop = asyncio.get_running_loop()
    for _ in range(n):
        fut: asyncio.Future[None] = loop.create_future()
        loop.call_soon(fut.set_result, None)
        await fut
    return n


async def call_soon_threadsafe(n: int) -> int:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set_result(None)

    def producer() -> None:
        for _ in range(n):
            loop.call_soon_threadsafe(tick)

    thread = threading.Thread(target=producer, name="bench-producer")
    thread.start()
    await done
    thread.join()
    return n


MICRO: dict[str, Callable[[int], Coroutine[Any, Any, int]]] = {
    "call_soon-chained": call_soon_chained,
    "call_soon-batched": call_soon_batched,
    "call_later-half-cancelled": call_later_half_cancelled,
    "tasks-sleep0": tasks_sleep0,
    "future-roundtrip": future_roundtrip,
    "call_soon_threadsafe": call_soon_threadsafe,
}
