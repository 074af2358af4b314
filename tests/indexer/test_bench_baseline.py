"""The indexing benchmark's plain loop does the pipeline's job: on the same feed it leaves the
same images, instances and vectors in its database as `run_index` does, so the two speeds it
prints compare like with like."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from indexer.pipeline import IndexOptions, run_index
from indexer.stages import IndexModels
from search.db import InstanceRow, Product, ProductImage, make_engine, make_session_factory
from tests.indexer.conftest import FeedDir, make_settings

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "bench" / "index_throughput.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("index_throughput", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _stored(db_url: str) -> dict[str, tuple[Any, ...]]:
    """Per sku: the image's status, hash and size, and its active instances with vectors."""
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            images = session.execute(
                select(Product.sku, ProductImage)
                .join(ProductImage, ProductImage.product_id == Product.id)
                .order_by(Product.sku)
            ).all()
            out = {}
            for sku, image in images:
                rows = session.scalars(
                    select(InstanceRow).where(
                        InstanceRow.image_id == image.id, InstanceRow.retired_in_run.is_(None)
                    )
                ).all()
                instances = [
                    (r.label, (r.x0, r.y0, r.x1, r.y1), r.mask_rle, r.mask_area, r.embedder)
                    for r in rows
                ]
                vectors = [np.frombuffer(r.vector or b"", dtype=np.float32) for r in rows]
                head = (image.status, image.content_hash, image.width, image.height)
                out[sku] = (head, instances, vectors)
            return out
    finally:
        engine.dispose()


def test_the_plain_loop_stores_what_the_pipeline_stores(
    feed: FeedDir, tmp_path: Path, index_models: IndexModels
) -> None:
    bench = _bench()
    path = feed.write(list(feed.rows)[:6])
    settings = make_settings(bench.fresh_database(tmp_path / "pipeline.db"), tmp_path)
    run_index(path, settings=settings, options=IndexOptions(progress=False), models=index_models)

    phase = bench.plain_loop(index_models, settings, path, tmp_path)

    plain, piped = _stored(f"sqlite:///{tmp_path / 'plain.db'}"), _stored(settings.database_url)
    assert sorted(plain) == sorted(piped) and len(plain) == 6
    for sku, (head, instances, vectors) in plain.items():
        assert head[0] == "ok" and head == piped[sku][0], sku
        assert instances and instances == piped[sku][1], sku
        assert np.allclose(np.stack(vectors), np.stack(piped[sku][2]), atol=1e-5), sku
    assert {"read", "decode", "segment", "embed", "write"} <= set(phase.stages_ms)
    assert phase.cpu_s > 0 and phase.wall_s > 0
