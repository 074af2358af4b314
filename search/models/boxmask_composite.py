"""Catalog cut-outs composited into real photos: extra furniture for training the mask head.

A catalog shot on a plain background gives a pixel-exact mask for free (the background
difference, `search.crops.background_difference_mask`). Pasted naively into a room the
head learns the pasting (docs/MASKS.md: 0.35 / 0.44 trained on naive composites alone), so
each composite is made to look like the photo it lands in, following Dwibedi et al. 2017
("Cut, Paste and Learn") and Ghiasi et al. 2021 ("Simple Copy-Paste"):

- scale jitter: the object's longer side is 25-70% of the photo's shorter side, its bottom
  in the lower two thirds of the photo (furniture stands on the floor);
- colour harmonisation: a partial Reinhard transfer in CIELAB (each channel's mean and
  spread moved 20-50% of the way towards the photo's around the object) so studio light
  takes on the room's;
- blur matched to the photo: a Gaussian of 0-1 px on the object, and its mask's edge
  softened by 1 px and one pixel eroded (the white halo of a studio cut-out);
- a contact shadow: a soft dark ellipse under the object's bottom edge;
- real occluders over it (`search.models.boxmask_augment.occlude`), in the caller.

Composites are mixed with the real masks, never used alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from search.crops import BACKGROUND_TOLERANCE
from search.models.boxmask_augment import Cutout
from search.types import BoolMask, Box

FURNITURE = ("chair_stool_bench", "table", "bed", "sofa", "armchair", "plant", "storage", "lamp")


def catalog_cutouts(
    feed: Path, *, limit: int, seed: int = 0, categories: Sequence[str] = FURNITURE
) -> list[Cutout]:
    """Up to `limit` cut-outs of the feed's products in `categories` (a seeded sample), each
    the first image's background difference; photos not on a plain background are skipped."""
    rows = [json.loads(line) for line in feed.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("category") in categories and r.get("image")]
    order = np.random.default_rng(seed).permutation(len(rows))
    out: list[Cutout] = []
    for i in order:
        if len(out) >= limit:
            break
        piece = product_cutout(feed.parent / str(rows[i]["image"]))
        if piece is not None:
            out.append(piece)
    return out


def product_cutout(path: Path) -> Cutout | None:
    """The product of a catalog shot cut out by background difference, without the
    background it encloses; None for a missing file, a photo not on a plain background, a
    white-on-white product or a cut-out under 16 px either way."""
    from PIL import Image

    from search.crops import background_difference_mask, plain_background
    from search.masks import box_from_mask

    if not path.is_file():
        return None
    with Image.open(path) as im:
        image = im.convert("RGB")
    if not plain_background(image):
        return None
    rgb = np.asarray(image)
    mask = without_enclosed_background(rgb, background_difference_mask(image))
    box = box_from_mask(mask) if mask is not None else None
    if mask is None or box is None or box.width < 16 or box.height < 16:
        return None
    x0, y0, x1, y1 = box.pixels(image.width, image.height)
    return Cutout(np.ascontiguousarray(rgb[y0:y1, x0:x1]), np.ascontiguousarray(mask[y0:y1, x0:x1]))


def without_enclosed_background(rgb: npt.NDArray[np.uint8], mask: BoolMask) -> BoolMask | None:
    """`mask` without the background-coloured areas it encloses (between a chair's slats),
    which the catalog's cut-out keeps (each at least 0.5% of the object); None for a product
    mostly of the background's colour (white on white), whose cut-out would be all holes."""
    frame = np.concatenate([rgb[:4].reshape(-1, 3), rgb[-4:].reshape(-1, 3)])
    colour = np.median(frame, axis=0).astype(np.int32)
    low = np.clip(colour - BACKGROUND_TOLERANCE, 0, 255).astype(np.uint8)
    high = np.clip(colour + BACKGROUND_TOLERANCE, 0, 255).astype(np.uint8)
    holes = (mask & (cv2.inRange(rgb, low, high) > 0)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=4)
    big = stats[:, cv2.CC_STAT_AREA] >= 0.005 * mask.sum()  # a pattern's white dots stay
    big[0] = False
    solid = mask & ~big[labels]
    return solid if solid.sum() >= 0.5 * mask.sum() else None


def _harmonise(
    obj: npt.NDArray[np.float32],
    alpha: npt.NDArray[np.float32],
    around: npt.NDArray[np.uint8],
    t: float,
) -> npt.NDArray[np.float32]:
    """`obj` (RGB float) moved `t` of the way to `around`'s CIELAB mean and spread."""
    lab = cv2.cvtColor(np.clip(obj, 0, 255).astype(np.uint8), cv2.COLOR_RGB2LAB).astype(np.float32)
    ref = cv2.cvtColor(around, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    inside = lab[alpha > 0.5]
    if inside.size == 0 or ref.size == 0:
        return obj
    mu_o, sd_o = inside.mean(0), inside.std(0) + 1e-3
    mu_r, sd_r = ref.mean(0), ref.std(0) + 1e-3
    sd = sd_o * (1 - t) + sd_r * t
    mu = mu_o * (1 - t) + mu_r * t
    moved = (lab - mu_o) / sd_o * sd + mu
    rgb = cv2.cvtColor(np.clip(moved, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    return rgb.astype(np.float32)


def _shadow(
    height: int, width: int, foot: tuple[float, float, float], rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """A multiplicative map darkening a soft ellipse at `foot` (centre x, bottom y, width)."""
    cx, bottom, w = foot
    shade = np.zeros((height, width), dtype=np.float32)
    axes = (max(1, round(w * 0.55)), max(1, round(w * rng.uniform(0.04, 0.1))))
    cv2.ellipse(shade, (round(cx), round(bottom)), axes, 0, 0, 360, 1.0, -1)
    blurred = np.asarray(cv2.GaussianBlur(shade, (0, 0), max(1.0, w * 0.05)), np.float32)
    return 1.0 - blurred * rng.uniform(0.2, 0.5)


def composite(
    background: npt.NDArray[np.uint8], piece: Cutout, rng: np.random.Generator
) -> tuple[npt.NDArray[np.uint8], BoolMask, Box] | None:
    """`piece` pasted into `background` so that it looks taken there: the photo, the object's
    mask and box; None where it does not fit."""
    height, width = background.shape[:2]
    ph, pw = piece.mask.shape
    side = rng.uniform(0.25, 0.7) * min(height, width)
    f = side / max(ph, pw)
    nw, nh = max(8, round(pw * f)), max(8, round(ph * f))
    if nw >= width or nh >= height:
        return None
    left = int(rng.integers(0, width - nw + 1))
    bottom = int(rng.integers(max(nh, height // 3), height + 1))
    top = bottom - nh
    rgb = cv2.resize(piece.rgb, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float32)
    alpha = cv2.resize(piece.mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST)
    alpha = np.asarray(cv2.erode(alpha, np.ones((3, 3), np.uint8)), np.float32)
    if alpha.sum() < 64:
        return None
    sigma = rng.uniform(0.0, 1.0)
    if sigma > 0.3:
        rgb = np.asarray(cv2.GaussianBlur(rgb, (0, 0), sigma), np.float32)
    soft = np.asarray(cv2.GaussianBlur(alpha, (0, 0), 1.0), np.float32)
    y0, y1 = max(0, top - nh // 4), min(height, bottom + nh // 4)
    x0, x1 = max(0, left - nw // 4), min(width, left + nw + nw // 4)
    rgb = _harmonise(
        rgb, np.asarray(alpha, np.float32), background[y0:y1, x0:x1], rng.uniform(0.2, 0.5)
    )
    out = background.astype(np.float32)
    out *= _shadow(height, width, (left + nw / 2, bottom - 1, nw), rng)[..., None]
    region = out[top:bottom, left : left + nw]
    region[:] = region * (1 - soft[..., None]) + rgb * soft[..., None]
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left : left + nw] = soft >= 0.5
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    box = Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    return np.clip(out, 0, 255).astype(np.uint8), mask, box
