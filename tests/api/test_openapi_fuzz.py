"""Schemathesis against the served OpenAPI document: generated requests (valid and invalid)
to every operation never get a 500, and every answer matches the schema (status code,
content type, headers, body). Runs on uvicorn on 127.0.0.1 with the small real catalog."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from api.main import create_app
from search.config import Settings

if TYPE_CHECKING:
    from tests.api.conftest import SmallCatalog

pytestmark = pytest.mark.slow

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})
# Left out on purpose: `positive_data_acceptance` (a schema-valid upload is still refused when
# its bytes are not an image, a region falls outside the photo, an image_url cannot be
# fetched: 4xx by design), `unsupported_method` / `missing_required_header` (no such rules).


# The document the app serves, built without loading anything (the routes alone define it);
# the requests go to `live_server`, the same app on the small catalog.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    print_blob=True,
)
def test_api_conforms_to_its_schema(case: schemathesis.Case, live_server: str) -> None:
    for name in list(case.headers or {}):
        # Header fuzzing may write framing headers, which the HTTP server itself refuses
        # (400 text/plain) before the app sees the request: not part of the API.
        if name.lower() in FRAMING_HEADERS:
            del case.headers[name]  # type: ignore[union-attr]
    case.call_and_validate(base_url=live_server, checks=CHECKS, timeout=30)


@pytest.mark.parametrize(
    ("method", "path", "case_kwargs"),
    [
        ("POST", "/v1/search", {"body": {"k": 3}}),
        ("POST", "/v1/search", {"body": {"k": 2, "region": "50,40,500,400", "in_stock": True}}),
        ("POST", "/v1/segment", {"body": {}}),
        ("POST", "/v1/segment", {"body": {"box": ["50,40,500,400", "0,0,90,90"]}}),
        ("POST", "/v1/segment", {"body": {"min_score": 0.4}, "query": {"format": "coco"}}),
        ("GET", "/v1/products/{sku}", {}),
        ("GET", "/v1/products/{sku}/similar", {"query": {"k": 4, "category": ["table"]}}),
    ],
)
def test_successful_answers_conform_too(
    method: str,
    path: str,
    case_kwargs: dict[str, Any],
    live_server: str,
    small_catalog: SmallCatalog,
    sample_dir: Path,
) -> None:
    """Generated requests seldom succeed (random bytes are no photo): check real ones."""
    operation = schema[path][method]
    kwargs = dict(case_kwargs)
    if method == "POST":
        photo = small_catalog.room_photo(sample_dir).read_bytes()
        kwargs["body"] = {**kwargs["body"], "image": photo}
        kwargs["media_type"] = "multipart/form-data"
    else:
        kwargs["path_parameters"] = {"sku": small_catalog.products[0]["sku"]}
    case = operation.Case(**kwargs)
    response = case.call_and_validate(base_url=live_server, checks=CHECKS, timeout=60)
    assert response.status_code == 200, response.text
