"""Every image route answers a valid image of any shape, mode or encoding with a 200 or a
clear 4xx problem, never a 5xx; and the server is still healthy afterwards."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from PIL import Image

from api.main import create_app
from api.state import AppState
from search.datasets import check_coco
from search.masks import decode_rle
from tests.odd_images import odd_images, small_images

pytestmark = pytest.mark.slow

MAX_PIXELS = 120_000
CORPUS = list(odd_images(MAX_PIXELS))
# (name, route, extra form fields): every way /v1/search and /v1/segment take an image
VARIANTS: list[tuple[str, str, dict[str, str]]] = [
    ("plain", "/v1/search", {}),
    ("region", "/v1/search", {"region": "0,0,1,1"}),
    ("text", "/v1/search", {"text": "in green"}),
    ("segment", "/v1/segment", {}),
    ("segment-box", "/v1/segment", {"box": "0,0,1,1"}),
    ("segment-coco", "/v1/segment?format=coco", {}),
]
PLAIN = {"plain", "segment", "segment-coco"}  # a valid image under the cap gets a 200


@pytest.fixture(scope="module")
def client(app_state: AppState) -> Iterator[TestClient]:
    """The app with a pixel cap small enough that thin images reach it quickly."""
    settings = app_state.settings.model_copy(
        update={"api": app_state.settings.api.model_copy(update={"max_pixels": MAX_PIXELS})}
    )
    state = replace(app_state, settings=settings)
    with TestClient(create_app(settings, state=state), raise_server_exceptions=False) as c:
        yield c


def _post(client: TestClient, data: bytes, form: dict[str, str], route: str = "/v1/search") -> Any:
    if route == "/v1/search":
        form = {"k": "2", **form}
    return client.post(route, files={"image": ("photo", data)}, data=form)


def _check(resp: Any, data: bytes) -> None:
    assert resp.status_code < 500, resp.text
    if resp.status_code != 200:
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert resp.json()["detail"]
        return
    body = resp.json()
    width, height = Image.open(io.BytesIO(data)).size
    if "annotations" in body:  # ?format=coco
        (image,) = body["images"]
        assert {image["width"], image["height"]} == {width, height}
        assert check_coco(body) == []
        return
    assert {body["image"]["width"], body["image"]["height"]} == {width, height}  # EXIF may turn
    for inst in body["instances"]:
        mask = decode_rle(inst["mask"]["rle"])
        assert mask.shape == (body["image"]["height"], body["image"]["width"])
        x0, y0, x1, y1 = inst["box"]
        assert 0 <= x0 < x1 <= body["image"]["width"] and 0 <= y0 < y1 <= body["image"]["height"]


@pytest.mark.parametrize(("name", "data"), CORPUS, ids=[name for name, _ in CORPUS])
@pytest.mark.parametrize(("variant", "route", "form"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_odd_image_never_5xx(
    client: TestClient, name: str, data: bytes, variant: str, route: str, form: dict[str, str]
) -> None:
    resp = _post(client, data, form, route)
    _check(resp, data)
    if variant in PLAIN:
        assert resp.status_code == 200, f"{name}: a valid image under the cap is answered"


def test_over_the_pixel_cap_is_413(client: TestClient) -> None:
    data = next(d for name, d in odd_images(MAX_PIXELS + 1) if name == f"1x{MAX_PIXELS + 1}")
    resp = _post(client, data, {})
    assert resp.status_code == 413, resp.text
    assert resp.json()["code"] == "image_too_large"


def test_tiny_image_is_one_whole_image_group(client: TestClient) -> None:
    data = dict(CORPUS)["1x1"]
    body = _post(client, data, {}).json()
    (inst,) = body["instances"]
    assert inst["label"] == "image" and inst["box"] == [0.0, 0.0, 1.0, 1.0]
    assert inst["products"], "the whole-image group still finds products"


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=small_images())
def test_random_small_images_never_5xx(client: TestClient, data: bytes) -> None:
    for route in ("/v1/search", "/v1/segment"):
        resp = _post(client, data, {}, route)
        _check(resp, data)
        assert resp.status_code == 200, resp.text


def test_server_still_healthy_after_the_corpus(client: TestClient) -> None:
    for name, data in CORPUS:
        assert _post(client, data, {}).status_code < 500, name
        assert _post(client, data, {}, "/v1/segment").status_code < 500, name
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    room = dict(CORPUS)["progressive-jpeg"]
    assert _post(client, room, {}).status_code == 200
