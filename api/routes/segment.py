"""POST /v1/segment: a photo in, its objects out as facts (masks, colours, relations, counts,
a description), or as a COCO instance-segmentation document with `?format=coco`."""

from __future__ import annotations

import time
from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Query
from PIL import Image

from api.deps import MetricsDep, PoolDep, StateDep
from api.errors import problem_responses
from api.mapping import rounded, segment_response
from api.photos import PhotoFile, decode_photo, photo_bytes, photo_name
from api.schemas import CocoDocument, SegmentForm, SegmentResponse
from search.scene_service import SceneRequest, Segments, photo_coco, photo_scene
from search.segmentation import parse_box
from search.timing import Timer

router = APIRouter(prefix="/v1", tags=["segment"])

Format = Literal["json", "coco"]


@router.post(
    "/segment",
    response_model=SegmentResponse | CocoDocument,
    responses=problem_responses(400, 413, 415, 422),
)
async def segment(
    state: StateDep,
    pool: PoolDep,
    metrics: MetricsDep,
    form: Annotated[SegmentForm, Form()],
    image: PhotoFile = None,
    output: Annotated[
        Format,
        Query(
            alias="format",
            description="`json`: the scene (SegmentResponse); `coco`: the photo's instances "
            "as a COCO instance-segmentation document (CocoDocument)",
        ),
    ] = "json",
) -> SegmentResponse | CocoDocument:
    """Every object in the photo (or one per `box` prompt) with an exclusive mask, its
    dominant colours and its relations to its neighbours, the counts per label and per
    colour, and a short English description; or, with `?format=coco`, the instances as a
    COCO document. The catalog index is not needed."""
    timer = Timer()
    request = SceneRequest(
        boxes=tuple(parse_box(text) for text in form.box), min_score=form.min_score
    )
    data = await photo_bytes(state, form.image_url, image, timer)
    decoded = await decode_photo(state, data, timer)
    if output == "coco":
        name = photo_name(form.image_url, image)
        doc, wait_ms = await pool.run(
            partial(photo_coco, state.service, decoded, request, file_name=name)
        )
        timer.add("queue", wait_ms)
        metrics.observe_stages("segment", timer.ms)
        return CocoDocument.model_validate(doc)
    response, wait_ms = await pool.run(partial(scene_and_encode, state.service, decoded, request))
    timer.add("queue", wait_ms)
    response.timings_ms = {**response.timings_ms, **rounded(timer.ms)}
    metrics.observe_stages("segment", response.timings_ms)
    metrics.instances.observe(len(response.instances))
    return response


def scene_and_encode(
    segments: Segments, image: Image.Image, request: SceneRequest
) -> SegmentResponse:
    """Run in an inference worker: the scene, then the response (masks encoded)."""
    result = photo_scene(segments, image, request)
    start = time.perf_counter()
    response = segment_response(result)
    response.timings_ms["encode"] = round((time.perf_counter() - start) * 1000.0, 2)
    return response
