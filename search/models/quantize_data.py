"""Calibration photos for `roomlens quantize`: what the quantized networks will see.

From a COCO-format instance-mask set (the one the mask head trains on): per photo, the whole
photo (the lamp class maps run on it), crops of its largest objects' boxes grown as query
crops are (the embedder and the mask head run on those) and the largest object cut out by
its mask onto white, as a catalog shot is. A seeded sample of photos, in a fixed order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from search.types import Box

CROP_MARGIN = 0.1  # as ModelSettings.crop_margin and the mask head's crops
CROPS_PER_PHOTO = 3
MIN_SIDE = 24  # px: smaller objects are not cropped


@dataclass
class Calibration:
    """The calibration images, and the boxes of each photo's crops (for box-prompted nets)."""

    scenes: list[Image.Image] = field(default_factory=list)
    crops: list[Image.Image] = field(default_factory=list)
    cutouts: list[Image.Image] = field(default_factory=list)
    prompts: list[tuple[int, Box]] = field(default_factory=list)  # (scene index, box)


def calibration_set(annotations: Path, *, photos: int, seed: int = 0, skip: int = 0) -> Calibration:
    """Up to `photos` photos of the set as calibration images: a seeded order of the set,
    from its `skip`-th photo on (so that `skip=photos` gives photos the first call left out)."""
    from search.evaluation.masks import load_ground_truth

    _, images = load_ground_truth(annotations)
    order = np.random.default_rng(seed).permutation(len(images))[skip : skip + photos]
    out = Calibration()
    for i in sorted(int(k) for k in order):
        gt = images[i]
        with Image.open(gt.path) as im:
            scene = im.convert("RGB")
        rgb = np.asarray(scene)
        objects = sorted(
            (inst for inst in gt.instances if min(inst.box.width, inst.box.height) >= MIN_SIDE),
            key=lambda inst: -inst.area,
        )[:CROPS_PER_PHOTO]
        out.scenes.append(scene)
        for inst in objects:
            rect = inst.box.expand(CROP_MARGIN, scene.width, scene.height)
            out.crops.append(scene.crop(rect.pixels(scene.width, scene.height)))
            out.prompts.append((len(out.scenes) - 1, inst.box))
        if objects:
            out.cutouts.append(_on_white(rgb, objects[0].mask, objects[0].box))
    return out


def _on_white(rgb: np.ndarray, mask: np.ndarray, box: Box) -> Image.Image:
    """The object of `mask` on a white background, cropped to its box: a catalog shot."""
    height, width = mask.shape
    x0, y0, x1, y1 = box.pixels(width, height)
    piece = np.where(mask[y0:y1, x0:x1, None], rgb[y0:y1, x0:x1], 255).astype(np.uint8)
    return Image.fromarray(piece)
