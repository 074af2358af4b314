"""A photo's scene as facts: its instances (`SearchService.segment`: found by the segmenter
or prompted by boxes, exclusive masks), each mask's dominant colours (`search.colors`) and
`search.scene.build_scene` over them; or the same instances as a COCO instance-segmentation
document (`search.datasets`). The API's `/v1/segment` and `roomlens segment` call these."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from search.colors import DominantColor, dominant_colors
from search.datasets import LabelledImage, coco_document
from search.scene import Scene, build_scene
from search.timing import Timer
from search.types import Box, Instance

COLORS_PER_INSTANCE = 3
COCO_DESCRIPTION = "roomlens segment"


class Segments(Protocol):
    """What segments a photo for its scene: `SearchService`, `search.segmentation.Segmentation`."""

    def segment(
        self, image: Image.Image, boxes: Sequence[Box] = (), min_score: float = 0.0
    ) -> list[Instance]: ...


@dataclass(frozen=True)
class SceneRequest:
    """Box prompts (one instance each, in order; none: the segmenter finds the instances)
    and the least detector score kept."""

    boxes: tuple[Box, ...] = ()
    min_score: float = 0.0


@dataclass(frozen=True, eq=False)
class SceneResult:
    scene: Scene
    timings_ms: dict[str, float]


def photo_scene(
    segments: Segments, image: Image.Image, request: SceneRequest | None = None
) -> SceneResult:
    """The scene of `image` (upright RGB), timed per stage: segment, colors, relations."""
    request = request or SceneRequest()
    timer = Timer()
    with timer.stage("segment"):
        instances = segments.segment(image, request.boxes, request.min_score)
    with timer.stage("colors"):
        colors = instance_colors(image, instances)
    with timer.stage("relations"):
        scene = build_scene(instances, colors, image.size)
    return SceneResult(scene, timer.ms)


def instance_colors(
    image: Image.Image, instances: Sequence[Instance], k: int = COLORS_PER_INSTANCE
) -> list[list[DominantColor]]:
    """Up to `k` dominant colours of each instance's mask pixels ([] for an empty mask)."""
    if not instances:
        return []
    rgb = np.asarray(image.convert("RGB"))
    return [dominant_colors(rgb, inst.mask, k=k) for inst in instances]


def photo_coco(
    segments: Segments,
    image: Image.Image,
    request: SceneRequest | None = None,
    *,
    file_name: str = "photo",
) -> dict[str, Any]:
    """The instances of `image` as a COCO instance-segmentation document of one image
    (`search.datasets.coco_document`: RLE masks, stable category ids, scores kept)."""
    request = request or SceneRequest()
    instances = segments.segment(image, request.boxes, request.min_score)
    labelled = LabelledImage.from_instances(file_name, image.size, instances)
    info = {"description": COCO_DESCRIPTION, "min_score": request.min_score}
    return coco_document([labelled], info=info)
