"""Zero downtime: the API answers searches from the old index version throughout a reindex
(even a --full one, which replaces every vector) and serves the new version once it is
published, without a restart; on the FAISS files and on Milvus (the alias moves)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from api.state import AppState, build_state
from indexer.pipeline import IndexOptions, IndexReport, run_index
from indexer.stages import IndexModels
from search.config import Settings
from tests.app_states import state_for
from tests.indexer.conftest import FeedDir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_state() -> AppState:
    """The app's models, loaded once for the module."""
    return build_state(Settings())


class _PausingEmbedder:
    """The real embedder, pausing before its second batch until the test lets it go on."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.calls = 0
        self.paused, self.resume = threading.Event(), threading.Event()

    def embed(self, images: Sequence[Image.Image]) -> Any:
        self.calls += 1
        if self.calls == 2:
            self.paused.set()
            assert self.resume.wait(60)
        return self.inner.embed(images)


@pytest.fixture
def app_state(base_state: AppState, settings: Settings) -> Iterator[AppState]:
    state = state_for(base_state, settings)  # the live index on the configured store
    yield state
    state.engine.dispose()


def _search(client: TestClient, photo: Path) -> tuple[str, list[str]]:
    with photo.open("rb") as fh:
        response = client.post("/v1/search", files={"image": (photo.name, fh, "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    skus = [p["sku"] for inst in body["instances"] for p in inst["products"]]
    return body["index"]["version"], skus


@pytest.mark.parametrize("settings", ["faiss", "milvus"], indirect=True)
def test_searches_are_answered_throughout_a_reindex_then_the_new_version_is_served(
    app_state: AppState,
    feed: FeedDir,
    catalog_rows: list[dict[str, Any]],
) -> None:
    skus = [row["sku"] for row in catalog_rows[:5]]
    path = feed.write(skus)
    service = app_state.service
    models = IndexModels(service.segmenter, service.embedder)
    options = IndexOptions(progress=False, batch_size=1)
    first = run_index(path, settings=app_state.settings, options=options, models=models)
    photo = feed.image_path(skus[0])

    pausing = _PausingEmbedder(service.embedder)
    done: list[IndexReport] = []

    def reindex() -> None:
        again = replace(options, full=True)  # every vector is replaced
        models = IndexModels(service.segmenter, pausing)
        done.append(run_index(path, settings=app_state.settings, options=again, models=models))

    with TestClient(create_app(app_state.settings, state=app_state)) as client:
        version, found = _search(client, photo)
        assert version == first.version and skus[0] in found
        worker = threading.Thread(target=reindex)
        worker.start()
        try:
            assert pausing.paused.wait(60), "the reindex reached its second batch"
            # one batch of new vectors is committed; the old version still answers fully
            assert client.get("/readyz").status_code == 200
            during = _search(client, photo)
            assert during == (version, found)
        finally:
            pausing.resume.set()
            worker.join(120)
        [second] = done
        assert second.status == "succeeded" and second.images_processed == 5
        assert second.version != first.version
        after, found_after = _search(client, photo)
        assert after == second.version and skus[0] in found_after
