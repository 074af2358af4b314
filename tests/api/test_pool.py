"""The inference pool runs at most `workers` calls at once; the rest queue."""

from __future__ import annotations

import threading

import anyio
import pytest

from api.metrics import Metrics
from api.pool import InferencePool


@pytest.mark.parametrize("workers", [1, 2])
def test_calls_beyond_the_workers_wait_their_turn(workers: int) -> None:
    lock = threading.Lock()
    release = threading.Event()
    running = peak = 0

    def work() -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(10)
        with lock:
            running -= 1
        return 7

    metrics = Metrics()
    results: list[tuple[int, float]] = []

    async def main() -> None:
        pool = InferencePool(workers, metrics)

        async def call() -> None:
            results.append(await pool.run(work))

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(call)
            with anyio.fail_after(10):
                while pool.waiting < 5 - workers or pool.running < workers:
                    await anyio.sleep(0.01)
            assert metrics.registry.get_sample_value("roomlens_inference_waiting") == 5 - workers
            assert metrics.registry.get_sample_value("roomlens_inference_running") == workers
            release.set()
        assert pool.waiting == pool.running == 0
        assert pool.peak_running == workers and pool.peak_waiting == 5 - workers

    anyio.run(main)
    assert peak == workers
    assert [r for r, _ in results] == [7] * 5
    assert max(wait for _, wait in results) > 0


def test_a_pool_needs_a_worker() -> None:
    with pytest.raises(ValueError):
        InferencePool(0)
