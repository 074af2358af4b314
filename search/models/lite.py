"""The offline segmenter: NanoDet boxes, each refined into a mask by U²-Net-p inside the box."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from search import crops
from search.crops import product_instance
from search.masks import behind
from search.models.base import BoxMasker, Detector
from search.models.u2net import U2NetMasker
from search.types import Detection, Instance

log = logging.getLogger(__name__)


MASK_MODES = ("scene", "box")


class LiteSegmenter:
    """Instance segmentation from a box detector plus a salient-object masker.

    `mask_mode="scene"` runs U²-Net-p once on the whole photo and cuts each instance's mask
    out of that saliency map inside its box (one call per photo, ~0.25-0.4 s on 2 cores);
    `"box"` runs it inside every box (sharper per-object masks, one call per instance).
    A box where the masker finds nothing salient keeps the whole box as its mask. With a
    `box_masker` (the default configuration: the Lite0 mask head), every box is masked by it
    instead, and U²-Net-p serves only catalog photos that are not on a plain background.
    """

    name = "lite"

    def __init__(
        self,
        detector: Detector,
        masker: U2NetMasker,
        *,
        max_instances: int = 20,
        mask_threshold: float = 0.5,
        min_mask_fraction: float = 0.05,
        mask_mode: str = "scene",
        proposer: Detector | None = None,
        duplicate_iou: float = 0.8,
        box_masker: BoxMasker | None = None,
    ) -> None:
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        self.detector = detector
        self.masker = masker
        self.mask_mode = mask_mode
        self.proposer = proposer
        self.duplicate_iou = duplicate_iou
        self.max_instances = max_instances
        self.mask_threshold = mask_threshold
        self.min_mask_fraction = min_mask_fraction
        self.box_masker = box_masker
        mask_name = box_masker.name if box_masker is not None else masker.name
        parts = [detector.name, mask_name] + ([proposer.name] if proposer else [])
        self.name = f"lite({'+'.join(parts)})"

    def detect(self, image: Image.Image) -> list[Detection]:
        """The boxes `segment` masks, without masking them: the detector's (duplicates
        merged, at most `max_instances`), then the proposer's."""
        detected, proposed = self._boxes(image)
        return detected + proposed

    def _boxes(self, image: Image.Image) -> tuple[list[Detection], list[Detection]]:
        found = [d for d in self.detector.detect(image) if croppable(d, image.size)]
        detected = merge_duplicates(found, self.duplicate_iou)[: self.max_instances]
        if self.proposer is None:
            return detected, []
        return detected, [d for d in self.proposer.detect(image) if croppable(d, image.size)]

    def segment(self, image: Image.Image) -> list[Instance]:
        """The detector's instances, then the proposer's; a proposal's mask never takes a
        pixel of a detected instance's (`search.masks.behind`)."""
        detected, proposed = self._boxes(image)
        instances = self._masked(image, detected + proposed)
        return behind(instances[: len(detected)], instances[len(detected) :])

    def _masked(self, image: Image.Image, detections: list[Detection]) -> list[Instance]:
        if not detections:
            return []
        if self.box_masker is not None:
            masks = self.box_masker.masks(image, [d.box for d in detections])
            return [
                Instance(box=d.box, label=d.label, score=d.score, mask=m)
                for d, m in zip(detections, masks, strict=True)
            ]
        regions = [d.box.pixels(image.width, image.height) for d in detections]
        if self.mask_mode == "scene":
            scene = self.masker.probability(image)
            probabilities = [scene[y0:y1, x0:x1] for x0, y0, x1, y1 in regions]
        else:
            probabilities = self.masker.probability_batch([image.crop(r) for r in regions])
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


def croppable(det: Detection, size: tuple[int, int]) -> bool:
    """Whether the detection's box, clipped to the image, is big enough to crop and embed."""
    return crops.croppable(det.box, *size)


def merge_duplicates(detections: list[Detection], iou: float) -> list[Detection]:
    """One detection per object: a box that overlaps a better one by `iou` or more (the same
    couch also found as a chair) is dropped, whatever its class."""
    kept: list[Detection] = []
    for det in sorted(detections, key=lambda d: -d.score):
        if all(det.box.iou(other.box) < iou for other in kept):
            kept.append(det)
    return kept
