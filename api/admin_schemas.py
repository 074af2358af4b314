"""Wire schemas of the admin API (pydantic), built from the core's dataclasses and ORM rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import MaskRLE

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list: `data`, and `count`, how many there are in all."""

    data: list[T]
    count: int


# --- catalog ---------------------------------------------------------------------------------


class CategoryStatsPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    merchant: str | None
    category: str | None
    products: int
    images: dict[str, int] = Field(description="images by status: pending, ok, failed, no_instance")
    instances: int
    vectors: int


class CatalogStatsPublic(BaseModel):
    rows: list[CategoryStatsPublic]
    totals: CategoryStatsPublic


class ProblemPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    sku: str
    title: str
    merchant: str | None
    category: str | None
    image_id: int
    image: str
    status: Literal["failed", "no_instance"]
    reason: str
    updated_at: datetime


class InstanceAdminPublic(BaseModel):
    id: int
    label: str
    score: float
    box: list[float] = Field(description="[x0, y0, x1, y1] in pixels of the catalog image")
    mask: MaskRLE
    mask_area: int
    vector_id: int | None
    embedder: str


class ImageAdminPublic(BaseModel):
    id: int
    position: int
    source: str
    status: str
    error: str | None
    width: int | None
    height: int | None
    content_hash: str | None
    url: str
    instances: list[InstanceAdminPublic]


class ProductAdminPublic(BaseModel):
    sku: str
    title: str
    category: str | None
    merchant: str | None
    price: float | None
    currency: str | None
    color: str | None
    description: str | None
    in_stock: bool | None
    url: str | None
    extra: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    images: list[ImageAdminPublic]


class ProductIn(BaseModel):
    """A product as a feed line gives it (the sku comes from the path)."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1)
    category: str = Field(min_length=1, max_length=128)
    image: str = Field(min_length=1, description="an absolute file path or an http(s) URL")
    price: float | None = Field(default=None, ge=0)
    currency: str | None = Field(default=None, max_length=16)
    color: str | None = None
    description: str | None = None
    merchant: str | None = Field(
        default=None, max_length=256, description="default: the key's merchant"
    )
    in_stock: bool | None = None
    url: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class ProductChangePublic(BaseModel):
    sku: str
    action: Literal["created", "updated", "unchanged", "deleted"]
    image_status: str | None = Field(
        None, description="pending: the next index run (or reindex=now) processes the image"
    )
    freed_vectors: int = 0
    index_version: str | None = Field(
        None, description="the version published at once (reindex=now); else null"
    )


# --- index -----------------------------------------------------------------------------------


class BuildPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: str
    status: str
    embedder: str
    factory: str
    vector_count: int
    started_at: datetime
    finished_at: datetime | None
    indexed_at: datetime | None
    counts: dict[str, Any]
    error: str | None


class LiveIndexPublic(BaseModel):
    version: str
    indexed_at: str
    vector_count: int | None = Field(description="all vectors in the index (admin keys only)")
    factory: str = Field(description="faiss index type, e.g. Flat or HNSW32,Flat")
    embedder: str
    dim: int
    metric: str


class IndexStatusPublic(BaseModel):
    live: LiveIndexPublic | None
    live_error: str | None = None
    build: BuildPublic | None = Field(None, description="the build of the live version")
    latest_build: BuildPublic | None = Field(None, description="admin keys only")
    vectors: int = Field(description="vectors stored for the key's scope in the database")
    pending_images: int = Field(description="images of the scope waiting for the next run")


class RunPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    feed: str
    full: bool
    status: str
    started_at: datetime
    finished_at: datetime | None
    version: str | None
    counts: dict[str, Any]
    failures: dict[str, Any]
    timings_ms: dict[str, Any]
    progress: dict[str, Any]
    error: str | None


class ReindexIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feed: str | None = Field(None, description="feed path on the server; default: the setting")
    full: bool = Field(False, description="re-segment and re-embed every image")


class JobPublic(BaseModel):
    id: str
    feed: str
    full: bool
    status: Literal["running", "succeeded", "partial", "failed"]
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    summary: dict[str, Any] = Field(description="the run's report once it has finished")
    run: RunPublic | None = Field(None, description="the index_runs row of this job, once found")
    progress: dict[str, Any] = Field(description="the run's progress as the indexer records it")


# --- near-duplicates -------------------------------------------------------------------------


class ProductRefPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    sku: str
    title: str
    merchant: str | None
    category: str | None
    image_id: int


class DuplicatePublic(BaseModel):
    a: ProductRefPublic
    b: ProductRefPublic
    score: float = Field(description="best cosine similarity between an instance of each")
    matches: int = Field(description="instance pairs at or above the threshold")
    labels: list[str]


class DuplicatesPublic(BaseModel):
    threshold: float
    data: list[DuplicatePublic]
    count: int


# --- searches --------------------------------------------------------------------------------


class LoggedSearchPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    merchant: str | None
    filters: dict[str, Any]
    index_version: str | None
    instance_count: int
    labels: dict[str, int]
    skus: list[str] = Field(description="products returned, best first")
    product_count: int
    latency_ms: float
    timings_ms: dict[str, float]
    status: int
    photo_stored: bool


class LatencyPublic(BaseModel):
    p50: float
    p95: float
    p99: float
    mean: float
    max: float


class CountPublic(BaseModel):
    key: str
    count: int
    title: str | None = None


class VolumePublic(BaseModel):
    start: datetime
    searches: int


class SearchStatsPublic(BaseModel):
    since: datetime | None
    until: datetime | None
    bucket: Literal["hour", "day"]
    searches: int
    errors: int
    zero_results: int
    zero_result_rate: float | None
    latency_ms: LatencyPublic | None
    volume: list[VolumePublic]
    top_labels: list[CountPublic]
    top_products: list[CountPublic]
