"""The time the gateway itself spends on a request, excluding waits on peers."""

from __future__ import annotations

import time


class Stopwatch:
    __slots__ = ("total", "_since")

    def __init__(self) -> None:
        self.total = 0.0
        self._since: float | None = None

    def start(self) -> None:
        self._since = time.perf_counter()

    def stop(self) -> None:
        if self._since is not None:
            self.total += time.perf_counter() - self._since
            self._since = None
