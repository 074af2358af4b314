"""End to end on real weights and data: index ~50 IKEA products, search 3 real rooms over HTTP."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from api.state import build_state
from indexer.pipeline import IndexOptions, IndexReport, run_index
from search.config import IndexSettings, Settings
from search.db import make_engine, make_session_factory, migrate
from search.live import LiveIndex
from search.masks import decode_rle
from search.service import SearchService

pytestmark = pytest.mark.slow

ROOM_CATEGORIES = {"sofa", "armchair", "chair_stool_bench", "table"}


def _rooms(sample_dir: Path, n: int = 3) -> list[dict]:
    queries = [json.loads(line) for line in (sample_dir / "queries-dev.jsonl").open()]
    chosen = [q for q in queries if {e["category"] for e in q["expected"]} >= {"sofa", "table"}]
    return chosen[:n]


def _write_feed(sample_dir: Path, rooms: list[dict], path: Path, size: int = 50) -> list[str]:
    catalog = [json.loads(line) for line in (sample_dir / "catalog.jsonl").open()]
    by_sku = {p["sku"]: p for p in catalog}
    wanted = [
        e["sku"]
        for room in rooms
        for e in room["expected"]
        if e["category"] in ROOM_CATEGORIES and e["sku"] in by_sku
    ]
    skus = list(dict.fromkeys(wanted))[:size]
    skus += [p["sku"] for p in catalog if p["sku"] not in skus][: size - len(skus)]
    with path.open("w") as feed:
        for sku in skus:
            product = dict(by_sku[sku])
            product["image"] = str(sample_dir / product["image"])  # absolute path form
            feed.write(json.dumps(product) + "\n")
    return skus


@pytest.fixture(scope="module")
def indexed(
    tmp_path_factory: pytest.TempPathFactory, sample_dir: Path
) -> Iterator[tuple[Settings, IndexReport, list[dict], list[str]]]:
    tmp = tmp_path_factory.mktemp("e2e")
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'roomlens.db'}", index=IndexSettings(dir=tmp / "index")
    )
    rooms = _rooms(sample_dir)
    skus = _write_feed(sample_dir, rooms, tmp / "feed.jsonl")
    migrate(settings.database_url)
    report = run_index(tmp / "feed.jsonl", settings=settings, options=IndexOptions(progress=False))
    yield settings, report, rooms, skus


@pytest.fixture(scope="module")
def client(indexed: tuple[Settings, IndexReport, list[dict], list[str]]) -> Iterator[TestClient]:
    settings = indexed[0]
    with TestClient(create_app(settings, state=build_state(settings))) as client:
        yield client


def test_index_report(indexed: tuple[Settings, IndexReport, list[dict], list[str]]) -> None:
    _, report, _, skus = indexed
    assert len(skus) == 50
    assert report.products.inserted == 50
    assert report.images_processed == 50 and not report.image_failures
    assert report.vector_count == report.instances >= 50
    assert report.version is not None
    assert {"segment", "embed", "write"} <= set(report.timings_ms)


def test_rooms_return_instances_masks_and_products(
    client: TestClient,
    indexed: tuple[Settings, IndexReport, list[dict], list[str]],
    sample_dir: Path,
) -> None:
    _, report, rooms, skus = indexed
    found_expected = 0
    for room in rooms:
        path = sample_dir / room["image"]
        with path.open("rb") as fh:
            resp = client.post("/v1/search", files={"image": (path.name, fh, "image/jpeg")})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        width, height = Image.open(path).size
        assert body["image"] == {"width": width, "height": height}
        assert body["index"]["version"] == report.version
        assert body["instances"], "a furnished room gives at least one instance"
        assert {"segment", "embed", "search"} <= set(body["timings_ms"])
        for inst in body["instances"]:
            x0, y0, x1, y1 = inst["box"]
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            mask = decode_rle(inst["mask"]["rle"])
            assert mask.shape == (height, width) and mask.any()
            ys, xs = np.nonzero(mask)  # the mask lies inside its box
            assert xs.min() >= int(x0) - 1 and xs.max() <= x1 + 1
            assert inst["mask"]["polygons"]
            assert 1 <= len(inst["products"]) <= 10
            scores = [p["score"] for p in inst["products"]]
            assert scores == sorted(scores, reverse=True)
            assert len({p["sku"] for p in inst["products"]}) == len(scores)
            assert all(p["sku"] in skus for p in inst["products"])
        expected = {e["sku"] for e in room["expected"]}
        returned = {p["sku"] for inst in body["instances"] for p in inst["products"]}
        found_expected += len(expected & returned)
    assert found_expected >= 3, "products that are in the rooms come back"


def test_k_limits_products(client: TestClient, sample_dir: Path) -> None:
    room = sorted((sample_dir / "rooms").glob("*.jpg"))[0]
    resp = client.post("/v1/search", files={"image": ("r.jpg", room.read_bytes())}, data={"k": 2})
    assert resp.status_code == 200
    assert all(len(i["products"]) <= 2 for i in resp.json()["instances"])


def test_blank_photo_gives_one_whole_image_group(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (240, 240, 240)).save(buf, format="PNG")
    resp = client.post("/v1/search", files={"image": ("blank.png", buf.getvalue())})
    assert resp.status_code == 200, resp.text
    instances = resp.json()["instances"]
    assert len(instances) == 1
    assert instances[0]["label"] == "image"
    assert instances[0]["box"] == [0.0, 0.0, 320.0, 240.0]


@pytest.mark.parametrize(
    ("files", "data", "status", "code"),
    [
        ({"image": ("x.txt", b"hello, not an image")}, {}, 415, "unsupported_image_type"),
        ({"image": ("x.jpg", b"")}, {}, 400, "invalid_image"),
        ({"image": ("x.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")}, {}, 415, None),
        ({}, {}, 422, "validation_error"),
        ({"image": ("x.png", b"\x89PNG\r\n\x1a\n")}, {"k": 0}, 422, "validation_error"),
    ],
)
def test_bad_input_is_a_4xx_problem(
    client: TestClient, files: dict, data: dict, status: int, code: str | None
) -> None:
    resp = client.post("/v1/search", files=files, data=data)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status and body["detail"]
    if code is not None:
        assert body["code"] == code


def test_truncated_jpeg_is_400(client: TestClient, sample_dir: Path) -> None:
    room = sorted((sample_dir / "rooms").glob("*.jpg"))[0].read_bytes()
    resp = client.post("/v1/search", files={"image": ("t.jpg", room[: len(room) // 3])})
    assert resp.status_code == 400, resp.text


def test_health_ready_page_and_images(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["index"]["vector_count"] >= 50
    page = client.get("/")
    assert page.status_code == 200 and "roomlens" in page.text
    image = client.get("/v1/images/1")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert client.get("/v1/images/999999").status_code == 404


def test_unindexed_server_is_not_ready(tmp_path: Path, client: TestClient) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'empty.db'}", index=IndexSettings(dir=tmp_path / "ix")
    )
    migrate(settings.database_url)
    state = client.app.state.roomlens  # reuse the loaded models
    engine = make_engine(settings.database_url)
    empty = SearchService(
        segmenter=state.service.segmenter,
        embedder=state.service.embedder,
        live_index=LiveIndex(
            settings.index.dir, embedder=state.service.embedder.name, dim=state.service.embedder.dim
        ),
        session_factory=make_session_factory(engine),
        settings=settings.models,
    )
    other = replace(state, settings=settings, engine=engine, service=empty)
    with TestClient(create_app(settings, state=other)) as c:
        assert c.get("/readyz").status_code == 503
        buf = io.BytesIO()
        Image.new("RGB", (64, 64)).save(buf, format="JPEG")
        resp = c.post("/v1/search", files={"image": ("r.jpg", buf.getvalue())})
        assert resp.status_code == 503 and resp.json()["code"] == "index_not_ready"
