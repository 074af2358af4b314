"""Plain domain types shared by the models, the index and the service."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

BoolMask = npt.NDArray[np.bool_]
FloatMask = npt.NDArray[np.float32]  # soft masks and pooling weights, 0..1
Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels of the image it was found in: [x0, y0) to [x1, y1)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return max(0.0, self.x1 - self.x0)

    @property
    def height(self) -> float:
        return max(0.0, self.y1 - self.y0)

    @property
    def area(self) -> float:
        return self.width * self.height

    def as_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]

    def clip(self, width: int, height: int) -> Box:
        return Box(
            min(max(self.x0, 0.0), float(width)),
            min(max(self.y0, 0.0), float(height)),
            min(max(self.x1, 0.0), float(width)),
            min(max(self.y1, 0.0), float(height)),
        )

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The integer pixel region (left, top, right, bottom) covering the box inside a
        width x height image, at least 1 px on each side."""
        x0 = min(max(math.floor(self.x0), 0), width - 1)
        y0 = min(max(math.floor(self.y0), 0), height - 1)
        x1 = max(min(math.ceil(self.x1), width), x0 + 1)
        y1 = max(min(math.ceil(self.y1), height), y0 + 1)
        return x0, y0, x1, y1

    def expand(self, margin: float, width: int, height: int) -> Box:
        """Grow by `margin` of the box's own size on each side, clipped to the image."""
        dx, dy = self.width * margin, self.height * margin
        return Box(self.x0 - dx, self.y0 - dy, self.x1 + dx, self.y1 + dy).clip(width, height)

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x1, other.x1) - max(self.x0, other.x0))
        iy = max(0.0, min(self.y1, other.y1) - max(self.y0, other.y0))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class Detection:
    """A detector's box with its class label and score (no mask yet)."""

    box: Box
    label: str
    score: float


@dataclass(frozen=True, eq=False)
class Instance:
    """One object in an image: box, label, score and a boolean mask the size of the image."""

    box: Box
    label: str
    score: float
    mask: BoolMask

    @property
    def mask_area(self) -> int:
        return int(self.mask.sum())


@dataclass(frozen=True)
class ProductHit:
    """A catalog product returned for one query instance."""

    sku: str
    title: str
    category: str | None
    score: float  # the ranking score: calibrated match probability (see search.service)
    image_id: int | None = None
    price: float | None = None
    currency: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    similarity: float | None = None  # cosine similarity of the best matching image


@dataclass(frozen=True, eq=False)
class InstanceResult:
    """One result group: a query instance and the products that look like it."""

    instance: Instance
    products: list[ProductHit]


@dataclass(frozen=True)
class IndexInfo:
    version: str
    indexed_at: str | None
    vector_count: int
    embedder: str


@dataclass(frozen=True)
class SearchResult:
    index: IndexInfo
    image_size: tuple[int, int]  # (width, height)
    groups: list[InstanceResult]
    timings_ms: dict[str, float]
