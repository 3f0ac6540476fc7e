"""Write flow control shared by every transport: asyncio's contract, exactly.

``pause_writing()`` is called once when the buffered size rises *above* the
high-water mark, ``resume_writing()`` once when it falls to the low-water mark
or below.  Defaults: high 64 KiB, low = high // 4 = 16 KiB (uvloop's low
default of 16 *bytes* is a known divergence we do not copy).

On a completion port "buffered" includes bytes already handed to the kernel
in a send that has not completed: they still occupy memory we own.
"""

from __future__ import annotations

from typing import Any

_HIGH_WATER = 64 * 1024


class FlowControl:
    _loop: Any
    _protocol: Any
    _protocol_paused = False
    _high_water = _HIGH_WATER
    _low_water = _HIGH_WATER // 4

    def get_write_buffer_size(self) -> int:
        raise NotImplementedError  # pragma: no cover - every transport defines it

    def _maybe_pause_protocol(self) -> None:
        if self.get_write_buffer_size() <= self._high_water or self._protocol_paused:
            return
        self._protocol_paused = True
        try:
            self._protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": "protocol.pause_writing() failed",
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            })

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and self.get_write_buffer_size() <= self._low_water:
            self._protocol_paused = False
            try:
                self._protocol.resume_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._loop.call_exception_handler({
                    "message": "protocol.resume_writing() failed",
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                })

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low_water, self._high_water)

    def _set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = _HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water = high
        self._low_water = low

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._set_write_buffer_limits(high=high, low=low)
        self._maybe_pause_protocol()
