"""The offline segmenter: NanoDet boxes, each refined into a mask by U²-Net-p inside the box."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from search.crops import product_instance
from search.models.base import Detector
from search.models.u2net import U2NetMasker
from search.types import Box, Detection, Instance

log = logging.getLogger(__name__)


class LiteSegmenter:
    """Instance segmentation from a box detector plus a salient-object masker run per box."""

    name = "lite"

    def __init__(
        self,
        detector: Detector,
        masker: U2NetMasker,
        *,
        max_instances: int = 20,
        mask_threshold: float = 0.5,
        min_mask_fraction: float = 0.05,
    ) -> None:
        self.detector = detector
        self.masker = masker
        self.max_instances = max_instances
        self.mask_threshold = mask_threshold
        self.min_mask_fraction = min_mask_fraction
        self.name = f"lite({detector.name}+{masker.name})"

    def segment(self, image: Image.Image) -> list[Instance]:
        detections = self.detector.detect(image)[: self.max_instances]
        if not detections:
            return []
        regions = [_int_box(d.box, image.width, image.height) for d in detections]
        crops = [image.crop(r) for r in regions]
        probabilities = self.masker.probability_batch(crops)
        return [
            self._instance(det, region, prob, image.size)
            for det, region, prob in zip(detections, regions, probabilities, strict=True)
        ]

    def segment_product(self, image: Image.Image) -> list[Instance]:
        return [product_instance(image, self.masker)]

    def _instance(
        self,
        det: Detection,
        region: tuple[int, int, int, int],
        probability: np.ndarray,
        size: tuple[int, int],
    ) -> Instance:
        x0, y0, x1, y1 = region
        local = probability >= self.mask_threshold
        if local.mean() < self.min_mask_fraction:
            # The masker found no salient object in the box: keep the box itself as the mask.
            local = np.ones_like(local, dtype=bool)
        mask = np.zeros((size[1], size[0]), dtype=bool)
        mask[y0:y1, x0:x1] = local
        return Instance(box=det.box, label=det.label, score=det.score, mask=mask)


def _int_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """The integer pixel region covering `box`, at least 1 px on each side, inside the image."""
    x0 = min(max(int(np.floor(box.x0)), 0), width - 1)
    y0 = min(max(int(np.floor(box.y0)), 0), height - 1)
    x1 = max(min(int(np.ceil(box.x1)), width), x0 + 1)
    y1 = max(min(int(np.ceil(box.y1)), height), y0 + 1)
    return x0, y0, x1, y1
