"""Wire schemas (pydantic), kept apart from the ORM and from the core's dataclasses."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator

from search.errors import InvalidInput
from search.filters import parse_attributes
from search.segmentation import LABEL_IOU

_NUMBER = r"-?\d+(?:\.\d+)?"
MaskEncodings = Literal["both", "rle", "polygons", "none"]
REGION_PATTERN = rf"^\s*\[?\s*{_NUMBER}(?:\s*,\s*{_NUMBER}){{3}}\s*\]?\s*$"
ATTRIBUTE_PATTERN = r"^[^=]+=.*$"
MAX_BOXES = 50  # box prompts per /v1/segment request

Category = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Merchant = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Attribute = Annotated[str, StringConstraints(max_length=512, pattern=ATTRIBUTE_PATTERN)]
ImageUrl = Annotated[
    str | None,
    Field(
        max_length=2048,
        description="an http(s) URL of a JPEG, PNG or WebP photo, fetched by the server; "
        "give either this or the `image` file",
    ),
]


class Problem(BaseModel):
    """An RFC 9457 problem body; every error the API returns has this shape."""

    type: str = Field("about:blank", description="a URI naming the problem type")
    title: str
    status: int
    detail: str
    code: str = Field(description="machine-readable error code, e.g. `invalid_image`")


# --- requests --------------------------------------------------------------------------------


class FilterFields(BaseModel):
    """Which products may be returned; every field given must match."""

    k: int = Field(10, ge=1, le=100, description="products per instance")
    min_score: float | None = Field(
        None, ge=-1.0, le=1.0, description="leave out products whose score is below this"
    )
    category: list[Category] = Field(
        default_factory=list,
        max_length=50,
        description="keep products of any of these categories (repeat the field for several)",
    )
    min_price: float | None = Field(None, ge=0, description="lowest price, inclusive")
    max_price: float | None = Field(None, ge=0, description="highest price, inclusive")
    in_stock: bool | None = Field(
        None, description="true: only products in stock; false: only those out of stock"
    )
    merchant: list[Merchant] = Field(
        default_factory=list, max_length=50, description="keep products of any of these merchants"
    )
    attribute: list[Attribute] = Field(
        default_factory=list,
        max_length=50,
        description="`name=value` on a catalog field kept in the product's extra data (or "
        "`color`); repeat for several: values of one name are alternatives, names all apply",
    )

    @field_validator("attribute")
    @classmethod
    def _attributes(cls, value: list[str]) -> list[str]:
        try:
            parse_attributes(value)
        except InvalidInput as exc:
            raise ValueError(str(exc)) from exc
        return value

    @model_validator(mode="after")
    def _price_range(self) -> FilterFields:
        if (
            self.min_price is not None
            and self.max_price is not None
            and self.min_price > self.max_price
        ):
            raise ValueError("min_price must not be above max_price")
        return self


class SearchForm(FilterFields):
    """The form fields of `POST /v1/search`, sent beside the `image` file (or instead of it,
    with `image_url`)."""

    image_url: ImageUrl = None
    text: str | None = Field(
        None,
        min_length=1,
        max_length=500,
        description="refine the photo query by words, e.g. 'in green' (needs a text tower: the "
        "clip profile; the offline models answer 400)",
    )
    region: str | None = Field(
        None,
        pattern=REGION_PATTERN,
        description="search only this box of the photo, `x0,y0,x1,y1` (or `[x0,y0,x1,y1]`) "
        "in pixels of the upright photo; it is searched as one instance",
        examples=["120,80,560,400"],
    )
    masks: MaskEncodings = Field(
        "both",
        description="how each instance's mask is sent: both (COCO RLE and polygons), rle, "
        "polygons (what the page draws) or none; encoding costs ~1-3 ms a photo",
    )

    @field_validator("region")
    @classmethod
    def _region_order(cls, value: str | None) -> str | None:
        if value is not None:
            x0, y0, x1, y1 = parse_region(value)
            if not (x1 > x0 and y1 > y0):
                raise ValueError("region must be x0,y0,x1,y1 with x1 > x0 and y1 > y0")
        return value


class TextQuery(FilterFields):
    """The body of `POST /v1/search/text`."""

    text: str = Field(min_length=1, max_length=500, description="e.g. 'green velvet armchair'")


class SimilarQuery(FilterFields):
    """The query parameters of `GET /v1/products/{sku}/similar`."""


class SegmentForm(BaseModel):
    """The form fields of `POST /v1/segment`, beside the `image` file (or instead of it,
    with `image_url`)."""

    image_url: ImageUrl = None
    box: list[Annotated[str, StringConstraints(max_length=200)]] = Field(
        default_factory=list,
        max_length=MAX_BOXES,
        description="a box prompt `x0,y0,x1,y1` (or `[x0,y0,x1,y1]`) in pixels of the upright "
        "photo; repeat for several. Each gives exactly one instance, in the order given: the "
        "object inside the box, labelled as the detection whose box overlaps it best (box IoU "
        f"at least {LABEL_IOU:g}) or `object`. A box partly outside the photo is clipped; a "
        "malformed one, or one outside the photo, is a 400 (`invalid_box`). Without boxes the "
        "segmenter finds the instances.",
        examples=[["120,80,560,400"]],
    )
    min_score: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="leave out detections scoring below this (without boxes: the instances; "
        "with boxes: the detections that may label them)",
    )


def parse_region(text: str) -> tuple[float, float, float, float]:
    """`"x0,y0,x1,y1"` or `"[x0, y0, x1, y1]"` as four floats (the pattern was checked)."""
    values = [float(v) for v in re.findall(_NUMBER, text)]
    if len(values) != 4:
        raise ValueError("region must have four numbers: x0,y0,x1,y1")
    return values[0], values[1], values[2], values[3]


# --- responses -------------------------------------------------------------------------------


class IndexPublic(BaseModel):
    version: str
    indexed_at: str | None
    vector_count: int
    embedder: str


class ImageSize(BaseModel):
    width: int
    height: int


class MaskRLE(BaseModel):
    """COCO run-length encoding, column-major, as `pycocotools.mask.encode` writes it."""

    size: list[int] = Field(description="[height, width] of the uploaded image")
    counts: str = Field(description="COCO compressed RLE string")


class MaskPublic(BaseModel):
    rle: MaskRLE | None = Field(None, description="absent when the search asked masks=polygons")
    polygons: list[list[float]] | None = Field(
        None,
        description="simplified outer contours for drawing, each a flat [x0, y0, x1, y1, ...] "
        "list; absent when the search asked masks=rle",
    )


class ProductPublic(BaseModel):
    sku: str
    title: str
    category: str | None
    score: float = Field(
        description="match score that ranks products across the photo's instances: the "
        "product's share of its instance's match probability (0..1) times the instance's "
        "detector confidence to models.confidence_power (2; 1 for a drawn region), or the "
        "cosine similarity when score calibration is off (models.score_temperature = 0)"
    )
    similarity: float | None = Field(
        None, description="cosine similarity of the best matching product image"
    )
    image_url: str | None = Field(description="the matching catalog image, served by this API")
    price: float | None = None
    currency: str | None = None
    url: str = Field(description="this product's details in this API")


class InstancePublic(BaseModel):
    label: str = Field(
        description="detector class; `region` for a drawn box, `image` when "
        "nothing was detected and the whole photo was searched"
    )
    score: float = Field(description="detector confidence")
    box: list[float] = Field(description="[x0, y0, x1, y1] in pixels of the uploaded image")
    mask: MaskPublic | None = Field(description="null when the search asked masks=none")
    products: list[ProductPublic]


class SearchResponse(BaseModel):
    index: IndexPublic
    image: ImageSize = Field(description="size of the photo as searched (EXIF orientation applied)")
    instances: list[InstancePublic]
    timings_ms: dict[str, float] = Field(description="milliseconds spent per stage")


class ColorPublic(BaseModel):
    name: str = Field(
        description="basic colour term: black, white, grey, brown, beige, red, orange, "
        "yellow, green, blue, purple or pink"
    )
    css: str = Field(description="the nearest CSS3 colour name")
    hex: str = Field(description="the colour as #rrggbb")
    share: float = Field(description="its share of the instance's mask pixels (0..1)")


class RelationPublic(BaseModel):
    """`this instance <predicate> object`, e.g. a chair `next_to` instance 3."""

    predicate: str = Field(
        description="on, next_to, overlaps, in_front_of, behind, left_of, right_of, above or "
        "below (README: the scene as facts)"
    )
    object: int = Field(description="the other instance's `id`")


class SceneInstancePublic(BaseModel):
    id: int = Field(description="1-based, in the order of `instances`")
    label: str = Field(
        description="detector class; for a box prompt the label of the detection it overlaps "
        "best, or `object`"
    )
    score: float = Field(description="detector confidence (1.0 for a box prompt's `object`)")
    box: list[float] = Field(description="[x0, y0, x1, y1] in pixels of the uploaded image")
    mask: MaskPublic
    area: float = Field(description="the mask's share of the photo's pixels (0..1)")
    colors: list[ColorPublic] = Field(description="dominant colours, largest share first")
    relations: list[RelationPublic]


class SegmentResponse(BaseModel):
    image: ImageSize = Field(description="size of the photo (EXIF orientation applied)")
    instances: list[SceneInstancePublic] = Field(
        description="every object, masks exclusive (no pixel belongs to two instances)"
    )
    counts: dict[str, int] = Field(description="instances per label, most first")
    counts_by_color: dict[str, int] = Field(
        description="instances per `<first colour> <label>`, most first"
    )
    description: str = Field(description="the counts, colours and relations in English")
    timings_ms: dict[str, float] = Field(description="milliseconds spent per stage")


class CocoImage(BaseModel):
    id: int
    file_name: str
    width: int
    height: int


class CocoAnnotation(BaseModel):
    id: int
    image_id: int
    category_id: int
    segmentation: MaskRLE
    bbox: list[float] = Field(description="the mask's tight [x, y, width, height]")
    area: int = Field(description="mask pixels")
    iscrowd: int
    score: float


class CocoCategory(BaseModel):
    id: int = Field(description="the COCO id for a COCO class; 1000 and up for the others")
    name: str
    supercategory: str


class CocoDocument(BaseModel):
    """A COCO instance-segmentation document (`?format=coco`), as pycocotools reads it."""

    info: dict[str, Any]
    images: list[CocoImage]
    annotations: list[CocoAnnotation]
    categories: list[CocoCategory]


class CatalogImagePublic(BaseModel):
    id: int
    url: str = Field(description="the image, served by this API")
    position: int
    status: str = Field(description="indexing status: pending, ok, failed or no_instance")
    width: int | None
    height: int | None


class ProductDetail(BaseModel):
    sku: str
    title: str
    category: str | None
    price: float | None
    currency: str | None
    color: str | None
    description: str | None
    merchant: str | None
    in_stock: bool | None
    url: str | None = Field(description="the product's page at the merchant")
    extra: dict[str, Any] = Field(description="other catalog fields from the feed")
    images: list[CatalogImagePublic]
    similar_url: str


class CategoryCount(BaseModel):
    name: str
    count: int = Field(description="products in this category")


class SimilarResponse(BaseModel):
    sku: str
    index: IndexPublic
    query_vectors: int = Field(description="indexed instance vectors of the product searched with")
    products: list[ProductPublic]
    timings_ms: dict[str, float]


class TextSearchResponse(BaseModel):
    text: str
    index: IndexPublic
    products: list[ProductPublic]
    timings_ms: dict[str, float]


class Health(BaseModel):
    status: str
    index: IndexPublic | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
