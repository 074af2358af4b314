"""Products, look-alikes, categories, health and the OpenAPI document, on the small catalog."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.state import AppState

if TYPE_CHECKING:
    from tests.api.conftest import SmallCatalog

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(app_state: AppState) -> Iterator[TestClient]:
    with TestClient(create_app(app_state.settings, state=app_state)) as client:
        yield client


def test_product_detail_has_every_feed_field(
    client: TestClient, small_catalog: SmallCatalog
) -> None:
    item = small_catalog.products[3]
    body = client.get(f"/v1/products/{item['sku']}").json()
    for name in ("sku", "title", "category", "price", "currency", "merchant", "in_stock", "color"):
        assert body[name] == item[name], name
    assert body["extra"] == {k: item[k] for k in ("product_type", "size") if item.get(k)}
    (image,) = body["images"]
    assert image["status"] == "ok" and image["position"] == 0
    assert client.get(image["url"]).headers["content-type"] == "image/jpeg"
    assert body["similar_url"] == f"/v1/products/{item['sku']}/similar"


def test_unknown_product_is_a_404_problem(client: TestClient) -> None:
    for path in ("/v1/products/no-such-sku", "/v1/products/no-such-sku/similar"):
        resp = client.get(path)
        assert resp.status_code == 404
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert resp.json()["code"] == "product_not_found"


def test_similar_products_leave_the_product_out_and_apply_filters(
    client: TestClient, small_catalog: SmallCatalog
) -> None:
    sku = small_catalog.products[0]["sku"]
    body = client.get(f"/v1/products/{sku}/similar", params={"k": 5}).json()
    assert body["sku"] == sku and body["query_vectors"] >= 1
    skus = [p["sku"] for p in body["products"]]
    assert len(skus) == 5 and sku not in skus and len(set(skus)) == 5
    scores = [p["score"] for p in body["products"]]
    assert scores == sorted(scores, reverse=True)
    feed = {p["sku"]: p for p in small_catalog.products}
    filtered = client.get(
        f"/v1/products/{sku}/similar", params={"k": 20, "category": "table", "in_stock": "false"}
    ).json()
    assert filtered["products"]
    for p in filtered["products"]:
        assert feed[p["sku"]]["category"] == "table" and not feed[p["sku"]]["in_stock"]


def test_categories_count_the_catalog(client: TestClient, small_catalog: SmallCatalog) -> None:
    expected = Counter(p["category"] for p in small_catalog.products)
    body = client.get("/v1/categories").json()
    assert {c["name"]: c["count"] for c in body} == dict(expected)
    counts = [c["count"] for c in body]
    assert counts == sorted(counts, reverse=True)


def test_health_and_readiness(client: TestClient, small_catalog: SmallCatalog) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "index": None, "detail": {}}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert ready["index"]["vector_count"] == small_catalog.report.vector_count


def test_page_and_its_assets_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'id="canvas"' in page.text
    for asset in ("/app.js", "/app.css"):
        assert client.get(asset).status_code == 200


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, op in item.items():
            yield path, method, op


def test_openapi_documents_problem_bodies_and_every_search_field(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path, method, op in _operations(schema):
        for status, response in op["responses"].items():
            if status[0] in "45" and path != "/readyz":
                assert list(response["content"]) == ["application/problem+json"], (path, status)
        if op.get("parameters") or op.get("requestBody"):
            assert "422" in op["responses"], (method, path)
    body_ref = schema["paths"]["/v1/search"]["post"]["requestBody"]["content"][
        "multipart/form-data"
    ]["schema"]["$ref"]
    body = schema["components"]["schemas"][body_ref.rsplit("/", 1)[1]]
    form = schema["components"]["schemas"]["SearchForm"]["properties"]
    assert "image" in body["properties"]
    assert {"image_url", "region", "k", "min_score", "category", "min_price", "max_price"} <= set(
        form
    )
    assert {"in_stock", "merchant", "attribute"} <= set(form)
    assert set(schema["paths"]) >= {
        "/v1/search",
        "/v1/products/{sku}",
        "/v1/products/{sku}/similar",
        "/v1/categories",
        "/v1/images/{image_id}",
        "/healthz",
        "/readyz",
        "/metrics",
    }
