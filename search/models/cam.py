"""Object proposals for what COCO has no class for (lamps above all), from ImageNet class maps.

EfficientNet-Lite's ImageNet classifier, applied at every cell of the last feature map of the
whole photo, knows `table lamp` and `lampshade`; thresholding that probability and boxing its
connected regions finds lamps that the COCO detector cannot name. Measured on the IKEA dev
rooms (docs/QUALITY.md): at 640 px and threshold 0.3, lamp budget-20 recall 0.00 -> 0.09;
at 960 px, threshold 0.1 and with `spotlight`, 0.13 -> 0.29 (with calibrated scores); at
threshold 0.05, once scores are weighted by confidence (round 4), 0.31 -> 0.33.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import cv2
import numpy as np
from PIL import Image

from search.models.efficientnet import EfficientNetLiteEmbedder
from search.types import Box, Detection

log = logging.getLogger(__name__)

# Proposal label (a catalog category) -> ImageNet class indices whose probabilities are summed.
# table lamp, lampshade, spotlight (pendants and work lamps often read as spotlights)
IMAGENET_GROUPS: Mapping[str, tuple[int, ...]] = {"lamp": (846, 619, 818)}


class ClassMapProposer:
    """A `Detector` whose boxes come from thresholded ImageNet class activation maps."""

    def __init__(
        self,
        model: EfficientNetLiteEmbedder,
        *,
        groups: Mapping[str, tuple[int, ...]] = IMAGENET_GROUPS,
        threshold: float = 0.05,
        long_side: int = 960,
        grow: float = 0.15,
    ) -> None:
        self.model = model
        self.groups = dict(groups)
        self.threshold = threshold
        self.long_side = long_side
        self.grow = grow
        self.name = f"cam({model.name},{'+'.join(self.groups)})"

    def detect(self, image: Image.Image) -> list[Detection]:
        """Boxes around the regions where a group's probability reaches the threshold."""
        maps = self.model.class_maps(image, self.long_side)
        found: list[Detection] = []
        for label, indices in self.groups.items():
            prob = maps[list(indices)].sum(axis=0)
            found += regions(prob, label, self.threshold, image.size, self.grow)
        return sorted(found, key=lambda d: -d.score)


def regions(
    prob: np.ndarray, label: str, threshold: float, size: tuple[int, int], grow: float
) -> list[Detection]:
    """One detection per 8-connected region of `prob >= threshold`, scaled to `size`."""
    width, height = size
    rows, cols = prob.shape
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (prob >= threshold).astype(np.uint8), connectivity=8
    )
    out = []
    for k in range(1, count):
        x, y, w, h = (int(v) for v in stats[k][:4])
        box = Box(
            x * width / cols, y * height / rows, (x + w) * width / cols, (y + h) * height / rows
        )
        score = float(prob[labels == k].max())
        out.append(Detection(box.expand(grow, width, height), label, score))
    return out
