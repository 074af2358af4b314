"""POST /v1/search on the small real catalog: filters, regions, image URLs, input hygiene,
the inference queue and the metrics it leaves."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.main import create_app
from api.state import AppState
from search.config import ApiSettings
from search.fetch import Fetcher
from search.masks import decode_rle

if TYPE_CHECKING:
    from tests.api.conftest import SmallCatalog

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(app_state: AppState) -> Iterator[TestClient]:
    with TestClient(create_app(app_state.settings, state=app_state)) as client:
        yield client


@pytest.fixture(scope="module")
def room(small_catalog: SmallCatalog, sample_dir: Path) -> bytes:
    return small_catalog.room_photo(sample_dir).read_bytes()


def _png(image: Image.Image, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def _jpeg(image: Image.Image, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def _search(client: TestClient, data: bytes, **form: Any) -> Any:
    return client.post("/v1/search", files={"image": ("photo", data)}, data=form)


def _products(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for inst in body["instances"] for p in inst["products"]]


def _feed(small_catalog: SmallCatalog) -> dict[str, dict[str, Any]]:
    return {p["sku"]: p for p in small_catalog.products}


def _problem(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = resp.json()
    assert body["status"] == status and body["detail"]
    if code is not None:
        assert body["code"] == code, body
    return body


# --- results and filters --------------------------------------------------------------------


def test_search_returns_instances_with_masks_and_linked_products(
    client: TestClient, app_state: AppState, room: bytes, small_catalog: SmallCatalog
) -> None:
    assert app_state.service.photo_cache is not None
    app_state.service.photo_cache.clear()  # a photo seen before skips segment and embed
    resp = _search(client, room, k=3)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    width, height = body["image"]["width"], body["image"]["height"]
    assert body["instances"]
    feed = _feed(small_catalog)
    for inst in body["instances"]:
        assert decode_rle(inst["mask"]["rle"]).shape == (height, width)
        assert inst["mask"]["polygons"] and 1 <= len(inst["products"]) <= 3
        for p in inst["products"]:
            assert p["title"] == feed[p["sku"]]["title"]
            assert p["price"] == feed[p["sku"]]["price"] and p["currency"] == "EUR"
            assert p["category"] == feed[p["sku"]]["category"]
            assert client.get(p["image_url"]).status_code == 200
            assert client.get(p["url"]).json()["sku"] == p["sku"]
    assert {"decode", "queue", "segment", "embed", "search", "catalog", "encode"} <= set(
        body["timings_ms"]
    )


def test_the_same_photo_with_other_filters_is_not_segmented_again(
    client: TestClient, app_state: AppState, room: bytes
) -> None:
    cache = app_state.service.photo_cache
    assert cache is not None
    cache.clear()
    first = _search(client, room, k=5).json()
    filtered = _search(client, room, k=2, category="sofa").json()
    assert {"segment", "embed"} <= set(first["timings_ms"])
    assert not {"segment", "embed"} & set(filtered["timings_ms"])  # from the cache
    assert [i["box"] for i in filtered["instances"]] == [i["box"] for i in first["instances"]]
    assert [i["mask"] for i in filtered["instances"]] == [i["mask"] for i in first["instances"]]
    cache.clear()
    fresh = _search(client, room, k=2, category="sofa").json()
    assert "segment" in fresh["timings_ms"]
    assert _products(fresh) == _products(filtered)  # the same answer as without the cache
    region = _search(client, room, k=2, region="0,0,200,150").json()
    assert "segment" in region["timings_ms"]  # another region is another entry
    assert len(cache) == 2


@pytest.mark.parametrize(
    ("masks", "rle", "polygons"),
    [("both", True, True), ("rle", True, False), ("polygons", False, True)],
)
def test_masks_are_encoded_as_asked(
    client: TestClient, room: bytes, masks: str, rle: bool, polygons: bool
) -> None:
    body = _search(client, room, k=1, masks=masks).json()
    assert body["instances"]
    for inst in body["instances"]:
        assert (inst["mask"]["rle"] is not None) == rle
        assert (inst["mask"]["polygons"] is not None) == polygons


def test_masks_none_sends_no_masks_and_a_bad_choice_is_422(client: TestClient, room: bytes) -> None:
    body = _search(client, room, k=1, masks="none").json()
    assert body["instances"] and all(inst["mask"] is None for inst in body["instances"])
    assert _search(client, room, masks="bitmap").status_code == 422


def test_filters_hold_for_every_product(
    client: TestClient, room: bytes, small_catalog: SmallCatalog
) -> None:
    feed = _feed(small_catalog)
    resp = client.post(
        "/v1/search",
        files={"image": ("room.jpg", room)},
        data={"category": ["sofa", "Table"], "max_price": "300", "in_stock": "true", "k": "5"},
    )
    assert resp.status_code == 200, resp.text
    products = _products(resp.json())
    assert products, "some sofas and tables under 300 are in stock"
    for p in products:
        item = feed[p["sku"]]
        assert item["category"] in {"sofa", "table"} and item["price"] <= 300 and item["in_stock"]
    wanted = {
        sku
        for sku, item in feed.items()
        if item["category"] in {"sofa", "table"} and item["price"] <= 300 and item["in_stock"]
    }
    # k = 5 per instance and fewer products pass than that: an instance whose compatible
    # categories (the category policy) are not narrower gets all of them, the others a subset
    if len(wanted) <= 5:
        got = [{p["sku"] for p in inst["products"]} for inst in resp.json()["instances"]]
        assert all(skus <= wanted for skus in got)
        assert set().union(*got) == wanted


def test_merchant_and_attribute_filters(
    client: TestClient, room: bytes, small_catalog: SmallCatalog
) -> None:
    feed = _feed(small_catalog)
    resp = _search(client, room, merchant="SHOP-B", k=20)
    assert resp.status_code == 200
    assert {feed[p["sku"]]["merchant"] for p in _products(resp.json())} == {"shop-b"}
    product_type = next(p["product_type"] for p in small_catalog.products if "product_type" in p)
    resp = _search(client, room, attribute=f"product_type={product_type}", k=20)
    assert resp.status_code == 200
    found = {feed[p["sku"]]["product_type"] for p in _products(resp.json())}
    assert found == {product_type}


def test_min_score_and_k(client: TestClient, room: bytes) -> None:
    body = _search(client, room, k=2, min_score=0.3).json()
    for inst in body["instances"]:
        assert len(inst["products"]) <= 2
        assert all(p["score"] >= 0.3 for p in inst["products"])


def test_region_searches_only_that_box(client: TestClient, room: bytes) -> None:
    resp = _search(client, room, region="[100, 50, 400.5, 300]")
    assert resp.status_code == 200, resp.text
    (inst,) = resp.json()["instances"]
    assert inst["label"] == "region" and inst["box"] == [100.0, 50.0, 400.5, 300.0]
    mask = decode_rle(inst["mask"]["rle"])
    ys, xs = np.nonzero(mask)
    # the object inside the drawn box, not the box's own rectangle
    assert xs.min() >= 100 and xs.max() <= 400 and ys.min() >= 50 and ys.max() <= 299
    assert mask.sum() != 301 * 250
    assert inst["products"]
    assert "segment" in resp.json()["timings_ms"]


@pytest.mark.parametrize(
    ("region", "status"),
    [("1,2,3", 422), ("10,10,5,20", 422), ("a,b,c,d", 422), ("5000,5000,6000,6000", 400)],
)
def test_bad_regions(client: TestClient, room: bytes, region: str, status: int) -> None:
    _problem(_search(client, room, region=region), status)


@pytest.mark.parametrize(
    "form",
    [{"min_price": "10", "max_price": "5"}, {"k": "0"}, {"min_score": "2"}, {"attribute": "x"}],
)
def test_bad_filters_are_422(client: TestClient, room: bytes, form: dict[str, str]) -> None:
    _problem(_search(client, room, **form), 422, "validation_error")


# --- image URLs -------------------------------------------------------------------------------


class _Photos(BaseHTTPRequestHandler):
    room = b""
    slow = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        routes = {
            "/room.jpg": (200, "image/jpeg", self.room),
            "/page.html": (200, "text/html", b"<html></html>"),
            "/missing.jpg": (404, "text/plain", b"no"),
            "/big.jpg": (200, "image/jpeg", b"\xff\xd8" + b"\0" * 5000),
        }
        if self.path == "/to-private":  # nothing listens there, and nothing may try
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.2:9/room.jpg")
            self.end_headers()
            return
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/room.jpg")
            self.end_headers()
            return
        if self.path == "/slow.jpg":
            self.slow.wait(5)
            return
        status, ctype, body = routes.get(self.path, (404, "text/plain", b"no"))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def photo_server(room: bytes) -> Iterator[str]:
    """A local HTTP server (127.0.0.1, free port) serving test photos and failures."""
    _Photos.room = room
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Photos)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Photos.slow.set()
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def url_client(app_state: AppState) -> Iterator[TestClient]:
    """A client whose server may fetch from 127.0.0.1, gives up after 1 s, takes 4 kB."""
    policy = replace(
        app_state.fetcher.policy,
        max_bytes=4000,
        deadline_s=1.0,
        read_timeout_s=1.0,
        allow_hosts=frozenset({"127.0.0.1"}),
    )
    state = replace(app_state, fetcher=Fetcher(policy))
    with TestClient(create_app(state.settings, state=state)) as client:
        yield client


def test_image_url_is_fetched_and_searched(
    client: TestClient, url_client: TestClient, photo_server: str, room: bytes
) -> None:
    small = url_client.app.state.roomlens  # type: ignore[attr-defined]
    state = replace(small, fetcher=Fetcher(replace(small.fetcher.policy, max_bytes=len(room))))
    with TestClient(create_app(state.settings, state=state)) as c:
        for path in ("/room.jpg", "/moved"):
            resp = c.post("/v1/search", data={"image_url": photo_server + path, "k": "2"})
            assert resp.status_code == 200, resp.text
            assert resp.json()["instances"] and "fetch" in resp.json()["timings_ms"]
    by_upload = _search(client, room, k=2).json()
    assert by_upload["image"] == resp.json()["image"]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/page.html", 415, "unsupported_image_type"),
        ("/missing.jpg", 400, "image_fetch_failed"),
        ("/big.jpg", 413, "image_too_large"),
        ("/slow.jpg", 400, "image_fetch_failed"),
    ],
)
def test_image_url_failures(
    url_client: TestClient, photo_server: str, path: str, status: int, code: str
) -> None:
    _problem(url_client.post("/v1/search", data={"image_url": photo_server + path}), status, code)


@pytest.mark.parametrize(
    "url", ["ftp://example.com/a.jpg", "file:///etc/passwd", "javascript:alert(1)", "http://"]
)
def test_image_url_schemes_other_than_http_are_refused(url_client: TestClient, url: str) -> None:
    _problem(url_client.post("/v1/search", data={"image_url": url}), 400, "url_refused")


def test_private_addresses_are_refused_by_default(client: TestClient, photo_server: str) -> None:
    resp = client.post("/v1/search", data={"image_url": photo_server + "/room.jpg"})
    detail = _problem(resp, 400, "url_refused")["detail"]
    assert detail.startswith("refused: loopback address 127.0.0.1"), detail


def test_a_redirect_to_a_private_address_is_refused(
    url_client: TestClient, photo_server: str
) -> None:
    resp = url_client.post("/v1/search", data={"image_url": photo_server + "/to-private"})
    detail = _problem(resp, 400, "url_refused")["detail"]
    assert detail.startswith("refused: loopback address 127.0.0.2"), detail


def test_image_and_image_url_together_or_neither_are_422(
    client: TestClient, room: bytes, photo_server: str
) -> None:
    _problem(client.post("/v1/search", data={"k": "3"}), 422, "validation_error")
    both = client.post(
        "/v1/search",
        files={"image": ("r.jpg", room)},
        data={"image_url": photo_server + "/room.jpg"},
    )
    _problem(both, 422, "validation_error")


# --- input hygiene ----------------------------------------------------------------------------


def _png16_rgb(width: int, height: int) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    raw = b"".join(b"\0" + struct.pack(">HHH", 65535, 32768, 0) * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    return _jpeg(Image.new("RGB", (120, 60), (200, 180, 160)), exif=exif.tobytes())


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (_jpeg(Image.new("CMYK", (90, 70), (0, 50, 100, 0))), (90, 70)),
        (_png(Image.new("RGB", (90, 70), (10, 20, 30)).convert("P")), (90, 70)),
        (_png(Image.new("RGBA", (90, 70), (10, 20, 30, 0))), (90, 70)),
        (_png(Image.fromarray(np.full((70, 90), 40000, dtype=np.uint16))), (90, 70)),
        (_png16_rgb(90, 70), (90, 70)),
        (_rotated_jpeg(), (60, 120)),  # EXIF orientation applied: portrait
    ],
    ids=["cmyk-jpeg", "palette-png", "alpha-png", "16bit-grey-png", "16bit-rgb-png", "exif"],
)
def test_unusual_images_are_searched(
    client: TestClient, data: bytes, size: tuple[int, int]
) -> None:
    resp = _search(client, data, k=1)
    assert resp.status_code == 200, resp.text
    assert (resp.json()["image"]["width"], resp.json()["image"]["height"]) == size


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", 415, "unsupported_image_type"),
        (b"BM" + b"\0" * 60, 415, "unsupported_image_type"),
        (b"%PDF-1.4 not an image", 415, "unsupported_image_type"),
        (b"", 400, "invalid_image"),
    ],
)
def test_refused_images(client: TestClient, data: bytes, status: int, code: str) -> None:
    _problem(_search(client, data), status, code)


def test_truncated_png_and_jpeg_are_400(client: TestClient, room: bytes) -> None:
    png = _png(Image.effect_noise((200, 200), 64).convert("RGB"))
    for data in (room[: len(room) // 2], png[: len(png) // 2]):
        _problem(_search(client, data), 400, "invalid_image")


def test_upload_and_pixel_caps_are_413(app_state: AppState, room: bytes) -> None:
    api = ApiSettings(max_upload_bytes=len(room) - 1, max_pixels=100 * 100)
    state = replace(app_state, settings=app_state.settings.model_copy(update={"api": api}))
    with TestClient(create_app(state.settings, state=state)) as c:
        _problem(_search(c, room), 413, "image_too_large")
        big = _png(Image.new("RGB", (101, 100)))
        _problem(_search(c, big), 413, "image_too_large")
        assert _search(c, _png(Image.new("RGB", (100, 100)))).status_code == 200
        # a body far over the cap is refused from its Content-Length, before it is read
        huge = b"\0" * (len(room) + 2 * 1024 * 1024)
        _problem(_search(c, huge), 413, "request_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: cut off while streaming
            yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="x"\r\n\r\n'
            for _ in range(64):
                yield b"\0" * 65536
            yield b"\r\n--b--\r\n"

        resp = c.post(
            "/v1/search",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        _problem(resp, 413, "request_too_large")


# --- the inference queue and metrics ---------------------------------------------------------


def test_concurrent_searches_queue_for_one_worker(client: TestClient) -> None:
    pool = client.app.state.pool  # type: ignore[attr-defined]
    assert pool.workers == 1
    blank = _png(Image.new("RGB", (160, 120), (230, 230, 230)))
    with ThreadPoolExecutor(max_workers=4) as ex:
        responses = list(ex.map(lambda _: _search(client, blank, k=1), range(4)))
    assert [r.status_code for r in responses] == [200] * 4
    assert pool.peak_running == 1
    assert all("queue" in r.json()["timings_ms"] for r in responses)


def test_metrics_count_requests_and_time_stages(client: TestClient, room: bytes) -> None:
    assert _search(client, room, k=1).status_code == 200
    assert _search(client, b"not an image").status_code == 415
    text = client.get("/metrics").text
    assert 'roomlens_http_requests_total{method="POST",route="/v1/search",status="200"}' in text
    assert 'roomlens_http_requests_total{method="POST",route="/v1/search",status="415"}' in text
    for stage in ("queue", "decode", "segment", "embed", "search", "catalog", "encode"):
        assert (
            f'roomlens_search_stage_duration_seconds_count{{endpoint="search",stage="{stage}"}}'
            in text
        )
    assert (
        'roomlens_http_request_duration_seconds_bucket{le="+Inf",method="POST",route="/v1/search"}'
        in text
    )
    assert "roomlens_inference_workers 1.0" in text


def test_text_search_needs_a_text_tower(client: TestClient) -> None:
    resp = client.post("/v1/search/text", json={"text": "green velvet armchair"})
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["code"] == "invalid_input" and "text tower" in body["detail"]
    assert client.post("/v1/search/text", json={"text": ""}).status_code == 422
    assert client.post("/v1/search/text", json={}).status_code == 422


def test_text_refinement_needs_a_text_tower(client: TestClient, room: bytes) -> None:
    resp = client.post("/v1/search", files={"image": ("room.jpg", room)}, data={"text": "in green"})
    assert resp.status_code == 400, resp.text
    assert "text tower" in resp.json()["detail"]
