"""Where the load and analyse stages run. Every engine turns a stream of `ImageJob`s into a
stream of batches of finished `ImageResult`s, which the pipeline writes one batch per
transaction; they differ only in where the shared stage functions execute.

- `LocalEngine`: reading, hashing and decoding in one thread pool, prefetched ahead of the
  models; segmentation and embedding in a second pool of `model_workers` threads, each on
  small batches. On a few cores, N workers with one intra-op thread each keep every core busy,
  where one worker with N intra-op threads leaves them idle a third of the time
  (bench/index_throughput.py). Images whose content was already analysed in this run (the
  same photo under several skus) reuse that analysis.
- `indexer.engine_ray.RayEngine`: the same stages as a Ray Data pipeline on a Ray cluster.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

from indexer.stages import (
    ImageJob,
    ImageResult,
    IndexModels,
    StageConfig,
    analyse_stage,
    load_stage,
)
from search.catalog import NewInstance
from search.fetch import Fetcher

T = TypeVar("T")
R = TypeVar("R")


class ImageEngine(Protocol):
    """Runs the load and analyse stages over jobs; yields batches ready to be written."""

    def results(self, jobs: Iterable[ImageJob]) -> Iterator[list[ImageResult]]: ...


@dataclass(frozen=True)
class Batching:
    """How images are grouped and how many threads work on them.

    `size` images analysed per write transaction (a batch of only unchanged images is cut at
    `size * unchanged_factor`); `model_batch` images per model call; `model_workers` threads
    running the models; `read_workers` threads reading and decoding.
    """

    size: int = 16
    unchanged_factor: int = 8
    model_batch: int = 4
    model_workers: int = 1
    read_workers: int = 4
    prefetch_batches: int = 2


class LocalEngine:
    """The stages on this machine, in two thread pools (see the module docstring)."""

    def __init__(
        self, models: IndexModels, config: StageConfig, fetcher: Fetcher, batching: Batching
    ) -> None:
        self.models = models
        self.config = config
        self.fetcher = fetcher
        self.batching = batching
        self._seen: dict[str, list[NewInstance]] = {}  # content hash -> its analysis
        self._seen_lock = threading.Lock()

    def results(self, jobs: Iterable[ImageJob]) -> Iterator[list[ImageResult]]:
        b = self.batching
        with (
            ThreadPoolExecutor(b.read_workers, thread_name_prefix="read") as readers,
            ThreadPoolExecutor(b.model_workers, thread_name_prefix="model") as analysers,
        ):
            window = max(b.size * b.prefetch_batches, b.read_workers)
            loaded = _prefetched(readers, self._load, jobs, window)
            units = _units(loaded, b.model_batch, b.size * b.unchanged_factor)
            analysed = _prefetched(analysers, self._analyse, units, 2 * b.model_workers)
            batch: list[ImageResult] = []
            worked = 0
            for unit in analysed:
                batch.extend(unit)
                worked += sum(r.outcome != "unchanged" for r in unit)
                if worked >= b.size or len(batch) >= b.size * b.unchanged_factor:
                    yield batch
                    batch, worked = [], 0
            if batch:
                yield batch

    def _load(self, job: ImageJob) -> ImageResult:
        return load_stage(job, self.fetcher, self.config)

    def _analyse(self, unit: list[ImageResult]) -> list[ImageResult]:
        todo = [r for r in unit if r.image is not None and not self._reuse(r)]
        analyse_stage(self.models, self.config, todo)
        with self._seen_lock:
            for r in todo:
                if r.outcome in ("ok", "no_instance") and r.content_hash is not None:
                    self._seen.setdefault(r.content_hash, list(r.instances))
        return unit

    def _reuse(self, result: ImageResult) -> bool:
        """Give `result` the analysis of an identical image done earlier in this run."""
        with self._seen_lock:
            done = self._seen.get(result.content_hash or "")
        if done is None:
            return False
        result.instances = list(done)
        result.outcome = "ok" if done else "no_instance"
        result.image = None
        return True


def _units(loaded: Iterable[ImageResult], size: int, cap: int) -> Iterator[list[ImageResult]]:
    """Consecutive results grouped: `size` images to analyse, or `cap` results in all."""
    unit: list[ImageResult] = []
    images = 0
    for result in loaded:
        unit.append(result)
        images += result.image is not None
        if images >= size or len(unit) >= cap:
            yield unit
            unit, images = [], 0
    if unit:
        yield unit


def _prefetched(
    pool: ThreadPoolExecutor, work: Callable[[T], R], items: Iterable[T], window: int
) -> Iterator[R]:
    """`work(item)` for every item, in order, with up to `window` of them running ahead."""
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
