"""`--engine ray`: the same stages as a Ray Data pipeline on a local 2-CPU Ray give the same
database and index as the local engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from indexer.pipeline import IndexOptions, run_index
from indexer.stages import IndexModels
from search.db import migrate
from tests.indexer.conftest import FeedDir, make_settings, read_state

pytest.importorskip("ray.data")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # from inside ray.data
]


def test_ray_engine_gives_the_same_index_as_the_local_engine(
    tmp_path: Path,
    feed: FeedDir,
    catalog_rows: list[dict[str, Any]],
    index_models: IndexModels,
) -> None:
    skus = [row["sku"] for row in catalog_rows[:4]]
    path = feed.write(skus)
    local = make_settings(f"sqlite:///{tmp_path / 'local.db'}", tmp_path / "local")
    distributed = make_settings(f"sqlite:///{tmp_path / 'ray.db'}", tmp_path / "ray")
    for settings in (local, distributed):
        migrate(settings.database_url)
    options = IndexOptions(progress=False, batch_size=2)
    run_index(path, settings=local, options=options, models=index_models)
    ray_options = replace(options, engine="ray", ray_actors=1, ray_cpus_per_actor=2)
    report = run_index(path, settings=distributed, options=ray_options, models=index_models)
    assert (report.status, report.images_processed) == ("succeeded", 4)
    assert {"read", "decode", "segment", "embed", "write"} <= set(report.timings_ms)
    state = read_state(distributed)
    state.assert_consistent()
    state.assert_same_as(read_state(local))


class _SlowRay:
    """A `ray` module whose local node fails to start `fails` times, as Ray's own startup
    wait reports it (a bare Exception), then starts."""

    def __init__(self, fails: int) -> None:
        self.fails, self.inits, self.shutdowns = fails, 0, 0

    def init(self, **_: Any) -> None:
        self.inits += 1
        if self.inits <= self.fails:
            raise Exception("The current node timed out during startup.")

    def shutdown(self) -> None:
        self.shutdowns += 1

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 2.0}


def test_a_local_ray_that_does_not_come_up_is_started_once_more() -> None:
    from indexer.engine_ray import RayUnavailable, _connect

    slow = _SlowRay(fails=1)
    _connect(slow, None)
    assert (slow.inits, slow.shutdowns) == (2, 1)
    dead = _SlowRay(fails=5)
    with pytest.raises(RayUnavailable, match="Ray did not start"):
        _connect(dead, None)
    assert (dead.inits, dead.shutdowns) == (2, 2)
    remote = _SlowRay(fails=1)  # a cluster address is not restarted: it is not ours
    with pytest.raises(RayUnavailable):
        _connect(remote, "ray://cluster:10001")
    assert remote.inits == 1
