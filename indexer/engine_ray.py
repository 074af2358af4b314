"""The Ray engine: the load and analyse stages as a Ray Data pipeline on a Ray cluster.

`roomlens index FEED --engine ray --ray-address ray://head:10001` (or a local Ray without an
address). The driver scans the catalog and writes every result to the database, exactly as
with the local engine; the workers run the same `load_stage` and `analyse_stage` functions
in actors that build the configured models once each. Workers need roomlens installed (the
same version) and must reach the images: URLs, or paths on storage they share.

Jobs go to Ray in windows of `WINDOW` images (one Dataset each) so the driver never holds
the whole catalog; results stream back batch by batch and are committed as they come.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.engines import Batching
from indexer.stages import (
    ImageJob,
    ImageResult,
    IndexModels,
    StageConfig,
    analyse_stage,
    load_stage,
)
from search.config import ModelSettings
from search.errors import RoomlensError
from search.fetch import Fetcher, FetchPolicy

if TYPE_CHECKING:
    from indexer.pipeline import IndexOptions

log = logging.getLogger(__name__)

LOCAL_START_ATTEMPTS = 2  # a local Ray gets a second start if the first does not come up

WINDOW = 10_000  # images per Ray Dataset


class RayUnavailable(RoomlensError):
    """`--engine ray` without Ray installed, or no cluster at the address."""

    code = "ray_unavailable"


class Analyser:
    """A Ray Data actor: builds the models once, then loads and analyses batches of jobs."""

    def __init__(self, models: ModelSettings, config: StageConfig, fetch: FetchPolicy) -> None:
        self.models = IndexModels.build(models)
        self.config = config
        self.fetcher = Fetcher(fetch)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        jobs = [ImageJob(**pickle.loads(raw)) for raw in batch["job"]]
        results = [load_stage(job, self.fetcher, self.config) for job in jobs]
        analyse_stage(self.models, self.config, results)
        return {"result": np.array([pickle.dumps(r) for r in results], dtype=object)}


class RayEngine:
    """Runs the stages on Ray; yields result batches in the order they finish."""

    def __init__(
        self,
        models: ModelSettings,
        config: StageConfig,
        options: IndexOptions,
        batching: Batching,
    ) -> None:
        self.models = models
        self.config = config
        self.options = options
        self.batching = batching

    def results(self, jobs: Iterable[ImageJob]) -> Iterator[list[ImageResult]]:
        ray = _ray()
        started = not ray.is_initialized()
        if started:
            _connect(ray, self.options.ray_address)
        try:
            window: list[ImageJob] = []
            for job in jobs:
                window.append(job)
                if len(window) >= WINDOW:
                    yield from self._run(window)
                    window = []
            if window:
                yield from self._run(window)
        finally:
            if started:
                ray.shutdown()

    def _run(self, jobs: list[ImageJob]) -> Iterator[list[ImageResult]]:
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        rows = [{"job": pickle.dumps(asdict(job))} for job in jobs]
        dataset = ray.data.from_items(rows).map_batches(
            Analyser,
            fn_constructor_kwargs={
                "models": self.models,
                "config": self.config,
                "fetch": self.options.fetch,
            },
            batch_size=self.batching.size,
            concurrency=self.options.ray_actors,
            num_cpus=self.options.ray_cpus_per_actor,
        )
        for batch in dataset.iter_batches(batch_size=self.batching.size, batch_format="numpy"):
            yield [pickle.loads(raw) for raw in batch["result"]]


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable("--engine ray needs Ray: pip install 'ray[data]'") from exc
    return ray


def _connect(ray: Any, address: str | None) -> None:
    """Join the cluster at `address`, or start a local Ray on this machine's cores.

    A local Ray that does not come up within Ray's own wait (30 s, fixed; seen on a 2-core
    machine the first time Ray starts after it was installed) is started once more."""
    attempts = 1 if address else LOCAL_START_ATTEMPTS
    for attempt in range(1, attempts + 1):
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            break
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = address or "a local Ray"
            raise RayUnavailable(f"cannot connect to Ray at {where}: {exc}") from exc
        except Exception as exc:  # a node that does not start in time is a bare Exception
            ray.shutdown()
            if attempt == attempts:
                raise RayUnavailable(f"Ray did not start: {exc}") from exc
            log.warning("a local Ray did not start (%s); starting it once more", exc)
    log.info("Ray: %s", ray.cluster_resources())
