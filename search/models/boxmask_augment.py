"""Copy-paste occluders for training the mask head (Ghiasi et al. 2021, "Simple Copy-Paste").

Real objects cut out of the training photos by their own ground-truth masks are pasted over
the training instance, so the head learns what the COCO furniture it fails on looks like: a
table or a sofa with other things in front of it, whose mask is the object minus them. Each
occluder is scaled to 30-80% of the target box's longer side, centred somewhere inside the
box, and alpha-blended with its mask softened by a one-pixel Gaussian (Dwibedi et al. 2017:
blending matters more than anything else for composites). The target loses the pasted
pixels; an occluder that would leave less than `MIN_VISIBLE` of the object is not pasted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from search.types import BoolMask, Box

MIN_VISIBLE = 0.4
SCALE = (0.3, 0.8)
MAX_OCCLUDERS = 2


@dataclass(frozen=True)
class Cutout:
    """One object's pixels and mask, cropped to its box."""

    rgb: npt.NDArray[np.uint8]
    mask: BoolMask


def cutout(rgb: npt.NDArray[np.uint8], mask: BoolMask, box: Box) -> Cutout | None:
    """The object of `mask` cut out of `rgb` at `box`; None when it is too small to use."""
    height, width = mask.shape
    x0, y0, x1, y1 = box.pixels(width, height)
    part = mask[y0:y1, x0:x1]
    if part.sum() < 64:
        return None
    return Cutout(np.ascontiguousarray(rgb[y0:y1, x0:x1]), np.ascontiguousarray(part))


def _scaled(piece: Cutout, side: float) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    h, w = piece.mask.shape
    f = side / max(h, w)
    nw, nh = max(2, round(w * f)), max(2, round(h * f))
    rgb = cv2.resize(
        piece.rgb, (nw, nh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    )
    alpha = cv2.resize(piece.mask.astype(np.float32), (nw, nh), interpolation=cv2.INTER_LINEAR)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 1.0)
    return rgb.astype(np.float32), np.asarray(alpha, dtype=np.float32)


def occlude(
    rgb: npt.NDArray[np.uint8],
    target: BoolMask,
    box: Box,
    pool: Sequence[Cutout],
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.uint8], BoolMask]:
    """`rgb` (a crop) with up to `MAX_OCCLUDERS` objects of `pool` pasted over `box`, and the
    target mask without the pixels they cover."""
    if not pool or not target.any():
        return rgb, target
    out, visible = rgb.astype(np.float32), target.copy()
    height, width = target.shape
    total = float(target.sum())
    for _ in range(int(rng.integers(1, MAX_OCCLUDERS + 1))):
        piece = pool[int(rng.integers(len(pool)))]
        side = rng.uniform(*SCALE) * max(box.width, box.height)
        patch, alpha = _scaled(piece, min(side, float(max(width, height))))
        ph, pw = alpha.shape
        cx, cy = rng.uniform(box.x0, box.x1), rng.uniform(box.y0, box.y1)
        left, top = round(cx - pw / 2), round(cy - ph / 2)
        x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + pw, width), min(top + ph, height)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        a = alpha[y0 - top : y1 - top, x0 - left : x1 - left]
        covered = visible.copy()
        covered[y0:y1, x0:x1] &= a < 0.5
        if covered.sum() < MIN_VISIBLE * total:
            continue
        region = out[y0:y1, x0:x1]
        region[:] = (
            region * (1 - a[..., None])
            + patch[y0 - top : y1 - top, x0 - left : x1 - left] * a[..., None]
        )
        visible = covered
    return np.clip(out, 0, 255).astype(np.uint8), visible
