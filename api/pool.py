"""The inference pool: blocking model work runs in threads, a bounded number at once.

The models use every core for one request, so running more requests at once only makes
each slower; the rest wait their turn (first come, first served) instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import anyio

from api.metrics import Metrics

T = TypeVar("T")


class InferencePool:
    """At most `workers` calls run at once; the others queue. Create it inside the event
    loop that uses it (the app's lifespan)."""

    def __init__(self, workers: int, metrics: Metrics | None = None) -> None:
        if workers < 1:
            raise ValueError(f"an inference pool needs at least one worker, got {workers}")
        self.workers = workers
        self._limiter = anyio.CapacityLimiter(workers)
        self._metrics = metrics
        self.waiting = 0
        self.running = 0
        self.peak_running = 0
        self.peak_waiting = 0
        if metrics is not None:
            metrics.workers.set(workers)

    async def run(self, func: Callable[[], T]) -> tuple[T, float]:
        """`func()` in a worker thread once a worker is free: (its result, ms spent queued)."""
        queued = time.perf_counter()
        try:
            self._limiter.acquire_nowait()  # refused while others wait: first come, first served
        except anyio.WouldBlock:
            self._set(waiting=+1)
            try:
                await self._limiter.acquire()
            finally:
                self._set(waiting=-1)
        wait_ms = (time.perf_counter() - queued) * 1000.0
        self._set(running=+1)
        try:
            return await anyio.to_thread.run_sync(func), wait_ms
        finally:
            self._set(running=-1)
            self._limiter.release()

    def _set(self, *, waiting: int = 0, running: int = 0) -> None:
        self.waiting += waiting
        self.running += running
        self.peak_waiting = max(self.peak_waiting, self.waiting)
        self.peak_running = max(self.peak_running, self.running)
        if self._metrics is not None:
            self._metrics.waiting.set(self.waiting)
            self._metrics.running.set(self.running)
