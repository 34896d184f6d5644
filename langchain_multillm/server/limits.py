"""Per-model concurrency: ``max_concurrency`` calls in flight, ``max_queue`` waiting, past that a
429 with ``Retry-After``. One limiter per model and worker process, on the process's event loop
(a limit across processes or hosts needs shared state, which this is not)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from langchain_multillm.server.http_errors import QueueFullError

__all__ = ["ModelLimiter"]

# Weight of the newest call in the running mean of call durations (for Retry-After).
_EWMA = 0.2


class ModelLimiter:
    """A semaphore with a bounded queue and the numbers ``/metrics`` shows.

    ``await acquire()`` takes a slot (waiting in line if all are taken) or raises
    :class:`QueueFullError` at once when the line is full; ``release()`` gives the slot back
    (the next in line gets it). A waiter that is cancelled (its client went away) leaves the
    line without taking a slot.
    """

    def __init__(
        self,
        name: str,
        max_concurrency: int,
        max_queue: int,
        *,
        on_change: Callable[[int, int], None] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if max_queue < 0:
            raise ValueError("max_queue must be 0 or more")
        self.name = name
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self._sem = asyncio.Semaphore(max_concurrency)
        self.in_flight = 0
        self.waiting = 0
        self.mean_s = 1.0  # running mean of a call's duration, seconds
        self._on_change = on_change

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.in_flight, self.waiting)

    def retry_after_s(self) -> int:
        """Seconds until a slot is likely free: the queue ahead, served ``max_concurrency`` at
        a time, at the mean call duration (at least 1)."""
        rounds = (self.waiting + self.in_flight) / self.max_concurrency
        return max(1, math.ceil(rounds * self.mean_s))

    async def acquire(self) -> float:
        """Take a slot; returns the time taken (``time.perf_counter()``) to time the call."""
        if self._sem.locked():
            if self.waiting >= self.max_queue:
                raise QueueFullError(
                    f"model {self.name!r} is busy: {self.in_flight} calls in flight and "
                    f"{self.waiting} waiting (max_concurrency={self.max_concurrency}, "
                    f"max_queue={self.max_queue}); retry later",
                    retry_after=self.retry_after_s(),
                )
            self.waiting += 1
            self._changed()
            try:
                await self._sem.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._sem.acquire()
        self.in_flight += 1
        self._changed()
        return time.perf_counter()

    def release(self, started: float | None = None) -> None:
        """Give the slot back; ``started`` (from :meth:`acquire`) updates the mean duration."""
        if started is not None:
            took = time.perf_counter() - started
            self.mean_s = (1 - _EWMA) * self.mean_s + _EWMA * took
        self.in_flight -= 1
        self._sem.release()
        self._changed()
