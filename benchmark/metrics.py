"""What a run measures beyond its loss. For now: the pausable training clock."""

from __future__ import annotations

import time


class Clock:
    """Wall time spent training, with evaluation paused out of it (AlgoPerf's training clock)."""

    def __init__(self) -> None:
        self._elapsed = 0.0
        self._started: float | None = None

    def start(self) -> None:
        if self._started is None:
            self._started = time.perf_counter()

    def pause(self) -> None:
        if self._started is not None:
            self._elapsed += time.perf_counter() - self._started
            self._started = None

    @property
    def seconds(self) -> float:
        running = time.perf_counter() - self._started if self._started is not None else 0.0
        return self._elapsed + running
