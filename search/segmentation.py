"""Segmentation alone, with no embedder, index or catalog: a photo's instances with exclusive
masks, found by the segmenter or prompted by boxes. `SearchService.segment` (the API's
`/v1/segment`) and `roomlens segment` both go through `Segmentation`.

A box prompt gives exactly one instance: the box (clipped to the photo), the mask of the
object inside it from the box masker (the box itself where there is none or it finds
nothing), and the label of the detection whose box overlaps it best, when that box IoU is at
least `LABEL_IOU` (the detection's score comes with it); otherwise `object`, score 1.0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from search.errors import InvalidBox
from search.masks import box_mask, exclusive
from search.models.base import BoxMasker, Detector, Segmenter
from search.types import BoolMask, Box, Detection, Instance

OBJECT_LABEL = "object"  # a box prompt that no detection overlaps enough
PROMPT_SCORE = 1.0  # the score of an `object`: the box was given, not detected
LABEL_IOU = 0.3  # least box IoU between a box prompt and the detection that labels it

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_FOUR = r"\s*,\s*".join([f"({_NUMBER})"] * 4)
_BOX = re.compile(rf"^\s*\[?\s*{_FOUR}\s*\]?\s*$")


def parse_box(text: str) -> Box:
    """`"x0,y0,x1,y1"` (or `"[x0, y0, x1, y1]"`) in pixels as a `Box`; `InvalidBox` for
    anything else, or a box without x1 > x0 and y1 > y0."""
    match = _BOX.match(text)
    if match is None:
        raise InvalidBox(f"box {text[:80]!r} is not x0,y0,x1,y1 (four numbers, in pixels)")
    box = Box(*(float(v) for v in match.groups()))
    if not all(math.isfinite(v) for v in box.as_list()):
        raise InvalidBox(f"box {text[:80]!r} has a number out of range")
    if not (box.x1 > box.x0 and box.y1 > box.y0):
        raise InvalidBox(f"box {text[:80]!r} must have x1 > x0 and y1 > y0")
    return box


def prompt_box(box: Box, width: int, height: int) -> Box:
    """`box` clipped to the width x height photo. `InvalidBox` when it is not x0 < x1 and
    y0 < y1, or when less than one pixel each way of it lies inside the photo."""
    where = ",".join(f"{v:g}" for v in box.as_list())
    if not (box.x1 > box.x0 and box.y1 > box.y0):
        raise InvalidBox(f"box {where} must have x1 > x0 and y1 > y0")
    clipped = box.clip(width, height)
    if clipped.width < 1.0 or clipped.height < 1.0:
        raise InvalidBox(f"box {where} is outside the {width}x{height} photo")
    return clipped


def label_for(box: Box, detections: Sequence[Detection]) -> tuple[str, float]:
    """The label and score of the detection whose box overlaps `box` best (IoU at least
    LABEL_IOU; the first of equals), else (`object`, 1.0)."""
    best = max(detections, key=lambda d: box.iou(d.box), default=None)
    if best is None or box.iou(best.box) < LABEL_IOU:
        return OBJECT_LABEL, PROMPT_SCORE
    return best.label, best.score


@dataclass(frozen=True)
class Segmentation:
    """The segmenter, and the box masker for box prompts (None: a box is its own mask)."""

    segmenter: Segmenter
    masker: BoxMasker | None = None

    def segment(
        self, image: Image.Image, boxes: Sequence[Box] = (), min_score: float = 0.0
    ) -> list[Instance]:
        """The photo's instances with exclusive masks (`search.masks.exclusive`).

        Without `boxes`, the segmenter's instances scoring at least `min_score` (none when it
        finds nothing: no whole-photo fallback). With `boxes`, one instance per box in their
        order (see the module docstring); detections under `min_score` label none of them.
        Raises `InvalidBox` for a box that `prompt_box` refuses, before any model runs.
        """
        if not boxes:
            found = [inst for inst in self.segmenter.segment(image) if inst.score >= min_score]
            return exclusive(found)
        width, height = image.size
        prompts = [prompt_box(box, width, height) for box in boxes]
        detections = [d for d in self.detect(image) if d.score >= min_score]
        masks = self.box_masks(image, prompts)
        return exclusive(
            [
                Instance(box, *label_for(box, detections), mask)
                for box, mask in zip(prompts, masks, strict=True)
            ]
        )

    def detect(self, image: Image.Image) -> list[Detection]:
        """The segmenter's detections: its own `detect` when it is also a `Detector` (no
        masks computed), else the boxes of its instances."""
        if isinstance(self.segmenter, Detector):
            return self.segmenter.detect(image)
        return [Detection(i.box, i.label, i.score) for i in self.segmenter.segment(image)]

    def box_masks(self, image: Image.Image, boxes: Sequence[Box]) -> list[BoolMask]:
        """Per box, the mask of the object inside it: the masker's, or the box itself where
        there is no masker or it finds nothing."""
        width, height = image.size
        if self.masker is None or not boxes:
            found: list[BoolMask | None] = [None] * len(boxes)
        else:
            found = list(self.masker.masks(image, boxes))
        return [
            mask if mask is not None and mask.any() else box_mask(box, width, height)
            for box, mask in zip(boxes, found, strict=True)
        ]
