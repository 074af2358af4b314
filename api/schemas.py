"""Wire schemas (pydantic), kept apart from the ORM and from the core's dataclasses."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """An RFC 9457 problem body; every error the API returns has this shape."""

    type: str = Field("about:blank", description="a URI naming the problem type")
    title: str
    status: int
    detail: str
    code: str = Field(description="machine-readable error code, e.g. `invalid_image`")


class IndexPublic(BaseModel):
    version: str
    indexed_at: str | None
    vector_count: int
    embedder: str


class MaskRLE(BaseModel):
    """COCO run-length encoding, column-major, as `pycocotools.mask.encode` writes it."""

    size: list[int] = Field(description="[height, width] of the uploaded image")
    counts: str = Field(description="COCO compressed RLE string")


class MaskPublic(BaseModel):
    rle: MaskRLE
    polygons: list[list[float]] = Field(
        description="simplified outer contours for drawing, each a flat [x0, y0, x1, y1, ...] list"
    )


class ProductPublic(BaseModel):
    sku: str
    title: str
    category: str | None
    score: float = Field(description="cosine similarity of the best matching product image")
    image_url: str | None
    price: float | None = None
    currency: str | None = None


class InstancePublic(BaseModel):
    label: str
    score: float = Field(description="detector confidence")
    box: list[float] = Field(description="[x0, y0, x1, y1] in pixels of the uploaded image")
    mask: MaskPublic
    products: list[ProductPublic]


class SearchResponse(BaseModel):
    index: IndexPublic
    image: dict[str, int] = Field(description="{width, height} of the uploaded image as searched")
    instances: list[InstancePublic]
    timings_ms: dict[str, float]


class Health(BaseModel):
    status: str
    index: IndexPublic | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
