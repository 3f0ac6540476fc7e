"""A progress bar on stderr (one line per job when stderr is not a terminal)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()

    def _eta(self) -> str:
        if not self.done:
            return "--:--"
        left = (time.monotonic() - self.t0) / self.done * (self.total - self.done)
        return f"{int(left) // 60}:{int(left) % 60:02d}"

    def start(self, label: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            width = 30
            filled = width * self.done // max(self.total, 1)
            bar = "#" * filled + "." * (width - filled)
            line = f"[{bar}] {self.done}/{self.total} {self._eta()} left  {label}"
            self.stream.write("\r\x1b[K" + line[:150])
        else:
            self.stream.write(f"[{self.done + 1}/{self.total}] {label}\n")
        self.stream.flush()

    def finish_job(self, ok: bool) -> None:
        self.done += 1
        self.failed += not ok

    def close(self) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.t0
        prefix = "\r\x1b[K" if self.tty else ""
        failed = f", {self.failed} failed" if self.failed else ""
        self.stream.write(f"{prefix}{self.done} measurements in {elapsed:.0f} s{failed}\n")
        self.stream.flush()
