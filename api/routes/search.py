"""POST /v1/search: a room photo in, one group of products per detected instance out."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, File, Form, UploadFile

from api.deps import StateDep
from api.errors import problem_responses
from api.schemas import (
    IndexPublic,
    InstancePublic,
    MaskPublic,
    MaskRLE,
    ProductPublic,
    SearchResponse,
)
from search.errors import ImageTooLarge
from search.images import decode_image
from search.masks import encode_rle, mask_to_polygons
from search.service import SearchOptions
from search.types import InstanceResult, ProductHit, SearchResult

router = APIRouter(prefix="/v1", tags=["search"])


@router.post(
    "/search", response_model=SearchResponse, responses=problem_responses(400, 413, 415, 422, 503)
)
async def search(
    state: StateDep,
    image: Annotated[UploadFile, File(description="a JPEG, PNG or WebP room photo")],
    k: Annotated[int, Form(ge=1, le=100, description="products per instance")] = 10,
) -> SearchResponse:
    """Segment the photo, embed each instance and return the closest catalog products."""
    limit = state.settings.api.max_upload_bytes
    data = await image.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLarge(f"the upload is over the limit of {limit} bytes")
    max_pixels = state.settings.api.max_pixels
    decoded = await anyio.to_thread.run_sync(
        lambda: decode_image(data, max_bytes=limit, max_pixels=max_pixels)
    )
    options = SearchOptions(k=k)
    result = await anyio.to_thread.run_sync(
        lambda: state.service.search(decoded, options), limiter=state.limiter
    )
    return to_response(result)


def to_response(result: SearchResult) -> SearchResponse:
    width, height = result.image_size
    return SearchResponse(
        index=IndexPublic(**vars(result.index)),
        image={"width": width, "height": height},
        instances=[_instance(group) for group in result.groups],
        timings_ms={name: round(ms, 2) for name, ms in result.timings_ms.items()},
    )


def _instance(group: InstanceResult) -> InstancePublic:
    inst = group.instance
    rle = encode_rle(inst.mask)
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
        image_url=f"/v1/images/{hit.image_id}" if hit.image_id is not None else None,
        price=hit.price,
        currency=hit.currency,
    )
