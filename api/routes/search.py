"""POST /v1/search: a room photo in, one group of products per detected instance out."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Annotated

import anyio
from fastapi import APIRouter, Form
from PIL import Image

from api.deps import MetricsDep, PoolDep, StateDep
from api.errors import problem_responses
from api.mapping import product_filter, product_public, rounded, to_response
from api.photos import PhotoFile, decode_photo, photo_bytes
from api.schemas import (
    IndexPublic,
    MaskEncodings,
    SearchForm,
    SearchResponse,
    TextQuery,
    TextSearchResponse,
    parse_region,
)
from api.state import AppState
from merchant.querylog import record_search
from search.photo_cache import photo_key
from search.service import SearchOptions, SearchService
from search.timing import Timer
from search.types import Box, SearchResult

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["search"])


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
    data = await photo_bytes(state, form.image_url, image, timer)
    options = search_options(form)
    decoded = await decode_photo(state, data, timer)
    (result, response), wait_ms = await pool.run(
        partial(search_and_encode, state.service, decoded, options, data, form.masks)
    )
    timer.add("queue", wait_ms)
    await anyio.to_thread.run_sync(partial(log_search, state, result, form, data, started))
    response.timings_ms = {**response.timings_ms, **rounded(timer.ms)}
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
        timings_ms=rounded(result.timings_ms),
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
    service: SearchService,
    image: Image.Image,
    options: SearchOptions,
    data: bytes,
    masks: MaskEncodings = "both",
) -> tuple[SearchResult, SearchResponse]:
    """Run in an inference worker: the search (the photo's bytes key its cache entry), then
    the response, its masks encoded as `masks` asks."""
    result = service.search(image, options, photo=photo_key(data))
    start = time.perf_counter()
    response = to_response(result, masks)
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
