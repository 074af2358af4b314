"""POST /v1/search: a room photo in, one group of products per detected instance out."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Annotated
from urllib.parse import quote

import anyio
import cv2
import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError
from PIL import Image

from api.deps import MetricsDep, PoolDep, StateDep
from api.errors import problem_responses
from api.schemas import (
    FilterFields,
    ImageSize,
    IndexPublic,
    InstancePublic,
    MaskPublic,
    MaskRLE,
    ProductPublic,
    SearchForm,
    SearchResponse,
    TextQuery,
    TextSearchResponse,
    parse_region,
)
from api.state import AppState
from merchant.querylog import record_search
from search.errors import ImageTooLarge
from search.filters import ProductFilter, parse_attributes
from search.images import decode_image
from search.masks import encode_rle, mask_to_polygons
from search.service import SearchOptions, SearchService
from search.timing import Timer
from search.types import Box, InstanceResult, ProductHit, SearchResult

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["search"])

PhotoFile = Annotated[
    UploadFile | None,
    File(description="a JPEG, PNG or WebP room photo; give either this or `image_url`"),
]


@router.post(
    "/search", response_model=SearchResponse, responses=problem_responses(400, 413, 415, 422, 503)
)
async def search(
    state: StateDep,
    pool: PoolDep,
    metrics: MetricsDep,
    form: Annotated[SearchForm, Form()],
    image: PhotoFile = None,
) -> SearchResponse:
    """Segment the photo (or only `region`), embed each instance and return the closest
    catalog products that pass the filters, each product once with its best score."""
    timer = Timer()
    started = time.perf_counter()
    data = await photo_bytes(state, form, image, timer)
    options = search_options(form)
    api = state.settings.api
    with timer.stage("decode"):
        decoded = await anyio.to_thread.run_sync(
            partial(decode_image, data, max_bytes=api.max_upload_bytes, max_pixels=api.max_pixels)
        )
    (result, response), wait_ms = await pool.run(
        partial(search_and_encode, state.service, decoded, options)
    )
    timer.add("queue", wait_ms)
    await anyio.to_thread.run_sync(partial(log_search, state, result, form, data, started))
    response.timings_ms = {**response.timings_ms, **_rounded(timer.ms)}
    metrics.observe_stages("search", response.timings_ms)
    metrics.instances.observe(len(response.instances))
    return response


@router.post(
    "/search/text",
    response_model=TextSearchResponse,
    responses=problem_responses(400, 422, 503),
)
async def search_text(state: StateDep, pool: PoolDep, query: TextQuery) -> TextSearchResponse:
    """Products that match a text description (needs an embedder with a text tower, such as
    the `clip` profile's; the offline models answer 400)."""
    options = SearchOptions(k=query.k, min_score=query.min_score, filters=product_filter(query))
    result, _ = await pool.run(partial(state.service.search_text, query.text, options))
    return TextSearchResponse(
        text=result.text,
        index=IndexPublic(**vars(result.index)),
        products=[product_public(hit) for hit in result.products],
        timings_ms=_rounded(result.timings_ms),
    )


async def photo_bytes(
    state: AppState, form: SearchForm, image: UploadFile | None, timer: Timer
) -> bytes:
    """The uploaded file or the bytes at `image_url` (exactly one must be given)."""
    if (image is None) == (form.image_url is None):
        raise RequestValidationError(
            [
                {
                    "type": "missing" if image is None else "value_error",
                    "loc": ("body", "image"),
                    "msg": "give either an image file or an image_url, not both",
                }
            ]
        )
    if form.image_url is not None:
        with timer.stage("fetch"):
            fetched = await anyio.to_thread.run_sync(state.fetcher.fetch_url, form.image_url)
            assert fetched.data is not None  # no stamp sent, so never "not modified"
            return fetched.data
    assert image is not None
    limit = state.settings.api.max_upload_bytes
    data = await image.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLarge(f"the upload is over the limit of {limit} bytes")
    return data


def product_filter(fields: FilterFields) -> ProductFilter:
    """The core's filter for the wire's filter fields."""
    return ProductFilter(
        categories=frozenset(fields.category) if fields.category else None,
        min_price=fields.min_price,
        max_price=fields.max_price,
        in_stock=fields.in_stock,
        merchants=frozenset(fields.merchant) if fields.merchant else None,
        attributes=parse_attributes(fields.attribute),
    )


def search_options(form: SearchForm) -> SearchOptions:
    region = Box(*parse_region(form.region)) if form.region is not None else None
    return SearchOptions(
        k=form.k,
        min_score=form.min_score,
        filters=product_filter(form),
        region=region,
        text=form.text,
    )


def search_and_encode(
    service: SearchService, image: Image.Image, options: SearchOptions
) -> tuple[SearchResult, SearchResponse]:
    """Run in an inference worker: the search, then the response (masks encoded)."""
    result = service.search(image, options)
    start = time.perf_counter()
    response = to_response(result)
    response.timings_ms["encode"] = round((time.perf_counter() - start) * 1000.0, 2)
    return result, response


def log_search(
    state: AppState, result: SearchResult, form: SearchForm, photo: bytes, started: float
) -> None:
    """Add the search to the log; a failure to log never fails the search."""
    conf = state.settings.search_log
    if not conf.enabled:
        return
    try:
        with state.session_factory() as session, session.begin():
            record_search(
                session=session,
                result=result,
                latency_ms=(time.perf_counter() - started) * 1000.0,
                filters=form.model_dump(mode="json", exclude_defaults=True, exclude={"image_url"}),
                photo=photo,
                photo_dir=conf.photo_dir if conf.store_photos else None,
            )
    except Exception:
        log.exception("could not record the search")


def to_response(result: SearchResult) -> SearchResponse:
    width, height = result.image_size
    return SearchResponse(
        index=IndexPublic(**vars(result.index)),
        image=ImageSize(width=width, height=height),
        instances=[_instance(group) for group in result.groups],
        timings_ms=_rounded(result.timings_ms),
    )


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {name: round(ms, 2) for name, ms in timings.items()}


def column_major(mask: np.ndarray) -> np.ndarray:
    """The same (h, w) mask laid out column-major, so COCO RLE reads it without a slow
    transposing copy (OpenCV transposes bytes several times faster than numpy)."""
    flat = np.ascontiguousarray(mask, dtype=np.bool_).view(np.uint8)
    return np.asarray(cv2.transpose(flat)).view(np.bool_).T


def _instance(group: InstanceResult) -> InstancePublic:
    inst = group.instance
    rle = encode_rle(column_major(inst.mask))
    return InstancePublic(
        label=inst.label,
        score=round(float(inst.score), 4),
        box=[round(v, 1) for v in inst.box.as_list()],
        mask=MaskPublic(rle=MaskRLE(**rle), polygons=mask_to_polygons(inst.mask)),
        products=[product_public(hit) for hit in group.products],
    )


def product_public(hit: ProductHit) -> ProductPublic:
    return ProductPublic(
        sku=hit.sku,
        title=hit.title,
        category=hit.category,
        score=round(hit.score, 4),
        similarity=round(hit.similarity, 4) if hit.similarity is not None else None,
        image_url=f"/v1/images/{hit.image_id}" if hit.image_id is not None else None,
        price=hit.price,
        currency=hit.currency,
        url=product_url(hit.sku),
    )


def product_url(sku: str) -> str:
    return f"/v1/products/{quote(sku, safe='')}"
