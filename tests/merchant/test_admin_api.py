"""The /v1/admin API over HTTP (SQLite), on a private copy of the indexed two-merchant catalog.

Every admin route is checked for 401 without a valid key and 403 outside a merchant key's
scope; the routes come from the app itself, so a new route without auth (or without an
out-of-scope example below) fails here. Read-only tests come first: later ones change the
catalog.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.admin_schemas import ProductIn
from api.main import create_app
from api.state import AppState
from indexer.lock import run_lock
from merchant.keys import create_key, revoke_key
from merchant.querylog import record_search
from search.config import IndexSettings, Settings
from search.db import IndexRun, migrate, utcnow
from search.masks import decode_rle
from tests.app_states import state_for
from tests.merchant.conftest import (
    BLANK,
    BROKEN,
    DUP_ACME,
    DUP_BIRCH,
    IndexedCatalog,
    Searched,
    copy_rows,
)

pytestmark = pytest.mark.slow

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}
ADMIN_ROUTES = sorted(  # every operation the app declares under /v1/admin
    (method.upper(), path)
    for path, operations in create_app(Settings()).openapi()["paths"].items()
    if path.startswith("/v1/admin")
    for method in operations
    if method in HTTP_METHODS
)


@dataclass
class Api:
    client: TestClient
    state: AppState
    catalog: IndexedCatalog
    keys: dict[str, str]  # "admin", "acme", "birch" -> key

    def get(self, path: str, who: str, **kw: Any) -> Any:
        return self.client.get(path, headers=self.auth(who), **kw)

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory,
    indexed_catalog: IndexedCatalog,
    loaded_state: AppState,
) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("admin-api")
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'roomlens.db'}", index=IndexSettings(dir=tmp / "index")
    )
    migrate(settings.database_url)
    copy_rows(indexed_catalog.db_url, settings.database_url)
    shutil.copytree(indexed_catalog.index_dir, settings.index.dir)
    state = state_for(loaded_state, settings)
    with state.session_factory() as session, session.begin():
        keys = {
            "admin": create_key(session=session, merchant=None, is_admin=True).key,
            "acme": create_key(session=session, merchant="acme").key,
            "birch": create_key(session=session, merchant="birch").key,
        }
    with TestClient(create_app(settings, state=state)) as client:
        yield Api(client, state, indexed_catalog, keys)
    state.engine.dispose()


def _birch_sku(catalog: IndexedCatalog) -> str:
    return sorted(catalog.skus("birch") - {DUP_BIRCH, BROKEN})[0]


def _product_body(catalog: IndexedCatalog, sku: str, **changes: Any) -> dict[str, Any]:
    """The product's feed line as a PUT body (unknown fields go to `extra`, as in a feed)."""
    line = next(p for p in catalog.products if p["sku"] == sku)
    known = {k: v for k, v in line.items() if k in ProductIn.model_fields}
    extra = {k: v for k, v in line.items() if k not in ProductIn.model_fields and k != "sku"}
    return {**known, "extra": extra, **changes}


def _out_of_scope(api: Api, method: str, path: str) -> dict[str, Any]:
    """A request to (method, path) that the `acme` merchant key may not make."""
    birch = _birch_sku(api.catalog)
    other = {"params": {"merchant": "birch"}}
    examples: dict[tuple[str, str], dict[str, Any]] = {
        ("GET", "/v1/admin/catalog"): other,
        ("GET", "/v1/admin/catalog/problems"): other,
        ("GET", "/v1/admin/products/{sku}"): {"sku": birch},
        ("PUT", "/v1/admin/products/{sku}"): {
            "sku": birch,
            "json": _product_body(api.catalog, birch, merchant="acme"),
        },
        ("DELETE", "/v1/admin/products/{sku}"): {"sku": birch},
        ("GET", "/v1/admin/index"): other,
        ("GET", "/v1/admin/index/runs"): {},  # admin keys only
        ("GET", "/v1/admin/index/runs/{run_id}"): {"run_id": 1},
        ("POST", "/v1/admin/index/jobs"): {"json": {"feed": str(api.catalog.feed)}},
        ("GET", "/v1/admin/index/jobs/{job_id}"): {"job_id": "0123456789ab"},
        ("GET", "/v1/admin/duplicates"): other,
        ("GET", "/v1/admin/searches"): other,
        ("GET", "/v1/admin/searches/stats"): other,
    }
    assert (method, path) in examples, f"add an out-of-scope example for {method} {path}"
    example = dict(examples[(method, path)])
    url = path.format(**{k: example.pop(k) for k in ("sku", "run_id", "job_id") if k in example})
    return {"method": method, "url": url, **example}


def test_the_admin_routes_are_all_here() -> None:
    paths = {path for _, path in ADMIN_ROUTES}
    assert {"/v1/admin/catalog", "/v1/admin/products/{sku}", "/v1/admin/duplicates"} <= paths
    assert len(ADMIN_ROUTES) >= 13


def _is_problem(resp: Any, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == code


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_every_admin_route_needs_a_valid_key(api: Api, method: str, path: str) -> None:
    request = _out_of_scope(api, method, path)
    prefix, _, _ = api.keys["acme"].rpartition("_")
    bad = [
        {},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Bearer {prefix}_{'A' * 43}"},  # right prefix, wrong secret
        {"X-API-Key": "rl_000000000000_" + "B" * 43},
        {"Authorization": f"Basic {api.keys['admin']}"},  # not a bearer token
    ]
    for headers in bad:
        _is_problem(api.client.request(headers=headers, **request), 401, "unauthorized")


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_every_admin_route_refuses_data_outside_the_scope(api: Api, method: str, path: str) -> None:
    request = _out_of_scope(api, method, path)
    _is_problem(api.client.request(headers=api.auth("acme"), **request), 403, "forbidden")
    with_header = {"X-API-Key": api.keys["acme"]}
    _is_problem(api.client.request(headers=with_header, **request), 403, "forbidden")
    if method == "GET":  # the same request is fine for an admin key
        resp = api.client.request(headers=api.auth("admin"), **request)
        assert resp.status_code not in (401, 403), resp.text


def test_catalog_per_scope(api: Api) -> None:
    acme = api.get("/v1/admin/catalog", "acme").json()
    assert {row["merchant"] for row in acme["rows"]} == {"acme"}
    assert acme["totals"]["products"] == len(api.catalog.skus("acme"))
    assert api.get("/v1/admin/catalog?merchant=acme", "acme").json() == acme
    every = api.get("/v1/admin/catalog", "admin").json()
    assert {row["merchant"] for row in every["rows"]} == {"acme", "birch"}
    assert every["totals"]["products"] == len(api.catalog.products)
    assert every["totals"]["images"]["failed"] == 1
    birch = api.get("/v1/admin/catalog", "admin", params={"merchant": "birch"}).json()
    assert birch["totals"]["products"] == len(api.catalog.skus("birch"))


def test_problems_per_scope(api: Api) -> None:
    birch = api.get("/v1/admin/catalog/problems", "birch").json()
    assert birch["count"] == 1 and birch["data"][0]["sku"] == BROKEN
    assert birch["data"][0]["status"] == "failed" and birch["data"][0]["reason"]
    acme = api.get("/v1/admin/catalog/problems", "acme").json()
    assert [p["sku"] for p in acme["data"]] == [BLANK]
    every = api.get("/v1/admin/catalog/problems?status=failed", "admin").json()
    assert [p["sku"] for p in every["data"]] == [BROKEN]


def test_product_instances_with_boxes_and_masks(api: Api) -> None:
    sku = api.catalog.first["sku"]
    body = api.get(f"/v1/admin/products/{sku}", "acme").json()
    assert body["sku"] == sku and body["merchant"] == "acme"
    image = body["images"][0]
    assert image["status"] == "ok" and image["instances"]
    for inst in image["instances"]:
        mask = decode_rle(inst["mask"])
        assert mask.shape == (image["height"], image["width"])
        assert int(mask.sum()) == inst["mask_area"] > 0
        x0, y0, x1, y1 = inst["box"]
        assert 0 <= x0 < x1 <= image["width"] and 0 <= y0 < y1 <= image["height"]
        assert inst["vector_id"] is not None
    assert api.client.get(image["url"]).status_code == 200
    _is_problem(api.get("/v1/admin/products/NOPE", "admin"), 404, "product_not_found")


def test_index_status_per_scope(api: Api) -> None:
    report = api.catalog.report
    admin = api.get("/v1/admin/index", "admin").json()
    assert admin["live"]["version"] == report.version and admin["live"]["factory"] == "Flat"
    assert admin["live"]["vector_count"] == report.vector_count == admin["vectors"]
    assert admin["live"]["indexed_at"] and admin["build"]["status"] == "committed"
    acme = api.get("/v1/admin/index", "acme").json()
    assert acme["live"]["version"] == report.version
    assert acme["live"]["vector_count"] is None and acme["build"] is None
    assert 0 < acme["vectors"] < admin["vectors"]


def test_run_history(api: Api) -> None:
    with api.state.session_factory() as session, session.begin():
        run = IndexRun(feed="/feeds/x.jsonl", status="partial", counts={"images_processed": 2})
        run.failures, run.timings_ms = {"images": [{"sku": "S", "reason": "gone"}]}, {"embed": 9}
        run.finished_at = utcnow()
        session.add(run)
    runs = api.get("/v1/admin/index/runs", "admin").json()
    assert runs["count"] >= 1 and runs["data"][0]["id"] == run.id
    one = api.get(f"/v1/admin/index/runs/{run.id}", "admin").json()
    assert one["status"] == "partial" and one["failures"]["images"][0]["reason"] == "gone"
    assert one["timings_ms"] == {"embed": 9} and one["counts"] == {"images_processed": 2}
    _is_problem(api.get("/v1/admin/index/runs/99999", "admin"), 404, "not_found")


def test_near_duplicates_per_scope(api: Api) -> None:
    first = api.catalog.first["sku"]
    admin = api.get("/v1/admin/duplicates", "admin").json()
    pairs = {(p["a"]["sku"], p["b"]["sku"]) for p in admin["data"]}
    assert tuple(sorted((first, DUP_BIRCH))) in pairs, "across merchants, for an admin"
    assert all(p["score"] >= 0.95 for p in admin["data"]) and admin["threshold"] == 0.95
    acme = api.get("/v1/admin/duplicates", "acme").json()
    assert tuple(sorted((first, DUP_ACME))) in {
        (p["a"]["sku"], p["b"]["sku"]) for p in acme["data"]
    }
    for who in ("acme", "birch"):
        data = api.get("/v1/admin/duplicates", who).json()["data"]
        assert all(p["a"]["merchant"] == p["b"]["merchant"] == who for p in data)
    same = api.get("/v1/admin/duplicates?cross_merchant=false", "admin").json()["data"]
    assert all(p["a"]["merchant"] == p["b"]["merchant"] for p in same)
    loose = api.get("/v1/admin/duplicates?threshold=0.5&limit=1000", "admin").json()
    assert loose["count"] > admin["count"]
    _is_problem(api.get("/v1/admin/duplicates?threshold=2", "admin"), 422, "validation_error")


def test_search_log_and_figures(api: Api, searches: list[Searched]) -> None:
    with api.state.session_factory() as session, session.begin():
        for n, merchant in enumerate(["acme", "acme", "birch", "acme"]):
            row = record_search(
                session=session,
                result=searches[n].result,
                latency_ms=100.0 * (n + 1),
                filters={"merchant": merchant},
            )
            row.created_at = utcnow() - timedelta(hours=n)
    acme = api.get("/v1/admin/searches", "acme").json()
    assert acme["count"] == 3 and {r["merchant"] for r in acme["data"]} == {"acme"}
    assert all(not r["photo_stored"] for r in acme["data"])
    every = api.get("/v1/admin/searches", "admin").json()
    assert every["count"] == 4
    today = utcnow().date().isoformat()
    stats = api.get(
        "/v1/admin/searches/stats", "acme", params={"to": today, "bucket": "hour"}
    ).json()
    assert stats["searches"] == 3 and stats["zero_results"] == 1
    assert stats["zero_result_rate"] == pytest.approx(1 / 3)
    assert stats["latency_ms"]["p50"] == pytest.approx(200.0)
    assert sum(v["searches"] for v in stats["volume"]) == 3
    assert all(p["key"] in api.catalog.skus("acme") and p["title"] for p in stats["top_products"])
    assert stats["top_labels"] and stats["until"]
    _is_problem(api.get("/v1/admin/searches?from=someday", "acme"), 400, "invalid_input")


def test_revoked_key_stops_at_once(api: Api) -> None:
    with api.state.session_factory() as session, session.begin():
        created = create_key(session=session, merchant="acme", label="temp")
    assert (
        api.client.get("/v1/admin/catalog", headers={"X-API-Key": created.key}).status_code == 200
    )
    with api.state.session_factory() as session, session.begin():
        revoke_key(session=session, prefix=created.info.prefix)
    resp = api.client.get("/v1/admin/catalog", headers={"X-API-Key": created.key})
    _is_problem(resp, 401, "unauthorized")
    assert "revoked" in resp.json()["detail"]


# --- changes (these tests change the catalog) -----------------------------------------------


def _wait_for_job(api: Api, job_id: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/v1/admin/index/jobs/{job_id}", "admin").json()
        if job["status"] != "running":
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still running after {timeout} s")


def test_reindex_in_the_background(api: Api) -> None:
    feed = str(api.catalog.feed)
    with run_lock(api.state.settings.index.dir / "indexer.lock"):
        busy = api.client.post(
            "/v1/admin/index/jobs", json={"feed": feed}, headers=api.auth("admin")
        )
        _is_problem(busy, 409, "indexer_busy")
    missing = {"feed": "/nowhere/feed.jsonl"}
    resp = api.client.post("/v1/admin/index/jobs", json=missing, headers=api.auth("admin"))
    _is_problem(resp, 400, "feed_error")
    resp = api.client.post("/v1/admin/index/jobs", json={}, headers=api.auth("admin"))
    _is_problem(resp, 400, "invalid_input")  # no feed given and none configured

    resp = api.client.post("/v1/admin/index/jobs", json={"feed": feed}, headers=api.auth("admin"))
    assert resp.status_code == 202, resp.text
    started = resp.json()
    assert started["status"] == "running" and started["feed"] == feed
    job = _wait_for_job(api, started["id"])
    assert job["status"] == "partial", job  # the broken image fails again
    assert job["summary"]["images_failed"] == 1 and job["summary"]["version"]
    assert job["finished_at"] and job["error"] is None
    assert job["run"] is not None and job["run"]["status"] == "partial"
    assert job["run"]["feed"] == feed and job["run"]["version"] == job["summary"]["version"]
    assert job["progress"] == job["run"]["progress"] and job["progress"]["total"] > 0
    runs = api.get("/v1/admin/index/runs", "admin").json()["data"]
    assert runs[0]["id"] == job["run"]["id"]
    live = api.get("/v1/admin/index", "admin").json()["live"]
    assert live["version"] == job["summary"]["version"]
    _is_problem(api.get("/v1/admin/index/jobs/nope", "admin"), 404, "not_found")


def test_upsert_then_reindex_now(api: Api) -> None:
    before = api.get("/v1/admin/index", "admin").json()["live"]
    image = api.catalog.products[2]["image"]  # a file under the sample folder: allowed
    body = {"title": "ACME lookalike", "category": "sofa", "image": image, "price": 10.0}
    put = api.client.put("/v1/admin/products/NEW-ACME", json=body, headers=api.auth("acme"))
    assert put.status_code == 200, put.text
    assert put.json()["action"] == "created" and put.json()["image_status"] == "pending"
    assert put.json()["index_version"] is None
    pending = api.get("/v1/admin/index", "acme").json()
    assert pending["pending_images"] == 1 and pending["live"]["version"] == before["version"]
    detail = api.get("/v1/admin/products/NEW-ACME", "acme").json()
    assert detail["merchant"] == "acme" and detail["images"][0]["instances"] == []

    now = api.client.put(
        "/v1/admin/products/NEW-ACME?reindex=now", json=body, headers=api.auth("acme")
    )
    assert now.status_code == 200, now.text
    assert now.json()["image_status"] == "ok" and now.json()["index_version"]
    after = api.get("/v1/admin/index", "admin").json()
    assert after["live"]["version"] == now.json()["index_version"] != before["version"]
    assert after["live"]["vector_count"] == before["vector_count"] + 1
    assert after["pending_images"] == 0
    detail = api.get("/v1/admin/products/NEW-ACME", "acme").json()
    vector_ids = [i["vector_id"] for i in detail["images"][0]["instances"]]
    live = api.state.service.live_index.get().index
    assert vector_ids and all(v in live for v in vector_ids)


def test_upsert_rules(api: Api, indexed_catalog: IndexedCatalog) -> None:
    body = _product_body(indexed_catalog, indexed_catalog.first["sku"])
    sku = indexed_catalog.first["sku"]
    same = api.client.put(f"/v1/admin/products/{sku}", json=body, headers=api.auth("acme"))
    assert same.status_code == 200 and same.json()["action"] == "unchanged"
    renamed = {**body, "title": "Renamed", "merchant": None}  # defaults to the key's merchant
    resp = api.client.put(f"/v1/admin/products/{sku}", json=renamed, headers=api.auth("acme"))
    assert resp.json()["action"] == "updated" and resp.json()["image_status"] is None
    assert api.get(f"/v1/admin/products/{sku}", "acme").json()["title"] == "Renamed"
    to_birch = {**body, "merchant": "birch"}
    resp = api.client.put(f"/v1/admin/products/{sku}", json=to_birch, headers=api.auth("acme"))
    _is_problem(resp, 403, "forbidden")
    for image in ("/etc/passwd", api.state.settings.database_url.removeprefix("sqlite:///")):
        secret = {**body, "image": image}
        resp = api.client.put("/v1/admin/products/SNEAKY", json=secret, headers=api.auth("acme"))
        _is_problem(resp, 403, "forbidden")
    refused = {
        "http://127.0.0.1:5432/x.jpg": "url_refused",
        "http://localhost/x.jpg": "url_refused",
        "http://[::ffff:169.254.169.254]/x.jpg": "url_refused",
        "ftp://example.com/x": "invalid_input",
    }
    for url, code in refused.items():
        internal = {**body, "image": url}
        resp = api.client.put("/v1/admin/products/NET", json=internal, headers=api.auth("acme"))
        assert resp.status_code == 400 and resp.json()["code"] == code, resp.text
    relative = {**body, "image": "images/x.jpg"}
    resp = api.client.put("/v1/admin/products/REL", json=relative, headers=api.auth("admin"))
    _is_problem(resp, 400, "invalid_input")
    untitled = {k: v for k, v in body.items() if k != "title"}
    resp = api.client.put("/v1/admin/products/X", json=untitled, headers=api.auth("admin"))
    _is_problem(resp, 422, "validation_error")
    broken = str(indexed_catalog.feed.parent / "broken.jpg")  # any file, for an admin
    resp = api.client.put(
        "/v1/admin/products/ADMIN-1",
        json={**body, "image": broken, "merchant": "birch"},
        headers=api.auth("admin"),
    )
    assert resp.status_code == 200 and resp.json()["action"] == "created"
    assert api.get("/v1/admin/products/ADMIN-1", "birch").json()["merchant"] == "birch"


def test_delete_then_reindex_now(api: Api) -> None:
    before = api.get("/v1/admin/index", "admin").json()["live"]
    resp = api.client.delete(f"/v1/admin/products/{DUP_ACME}", headers=api.auth("acme"))
    assert resp.status_code == 200 and resp.json()["action"] == "deleted"
    first_freed = resp.json()["freed_vectors"]
    assert first_freed >= 1 and resp.json()["index_version"] is None
    _is_problem(api.get(f"/v1/admin/products/{DUP_ACME}", "acme"), 404, "product_not_found")
    assert api.get("/v1/admin/index", "admin").json()["live"]["version"] == before["version"]
    data = api.get("/v1/admin/duplicates", "admin").json()["data"]
    assert DUP_ACME not in {s for p in data for s in (p["a"]["sku"], p["b"]["sku"])}

    resp = api.client.delete(
        f"/v1/admin/products/{DUP_BIRCH}?reindex=now", headers=api.auth("birch")
    )
    assert resp.status_code == 200, resp.text
    freed, version = resp.json()["freed_vectors"], resp.json()["index_version"]
    after = api.get("/v1/admin/index", "admin").json()["live"]
    assert after["version"] == version != before["version"]
    assert after["vector_count"] == before["vector_count"] - freed - first_freed
    _is_problem(
        api.client.delete(f"/v1/admin/products/{DUP_BIRCH}", headers=api.auth("birch")),
        404,
        "product_not_found",
    )
