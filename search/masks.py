"""Boolean mask encodings and helpers: COCO RLE, COCO polygons, boxes, IoU, resize and paste.

COCO RLE is `pycocotools.mask`'s: runs counted in column-major (Fortran) order starting with
a run of zeros, `counts` compressed to pycocotools' string form (kept as `str` here, so that
it goes into JSON as it is).

Polygon coordinates follow the COCO / Detectron2 convention of continuous pixel coordinates:
pixel (x, y) covers [x, x+1) x [y, y+1), so a polygon through the pixel centres of a contour
has coordinates `index + 0.5`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_util

from search.types import BoolMask, Box, Instance

logger = logging.getLogger(__name__)

_MAX_CHARS = 13  # enough 5-bit groups for any signed 64-bit value


# --------------------------------------------------------------------------- validation


def _as_mask(mask: npt.ArrayLike, *, name: str = "mask") -> BoolMask:
    """`mask` as a 2-D bool array (non-zero is True); ValueError for other shapes."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (h, w), got shape {arr.shape}")
    return arr if arr.dtype == np.bool_ else arr != 0


# --------------------------------------------------------------------------- RLE


def rle_counts(mask: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Uncompressed COCO RLE counts: alternating run lengths, zeros first, column-major."""
    return _string_to_counts(encode_rle(mask)["counts"])


def _string_to_counts(s: str | bytes | bytearray) -> npt.NDArray[np.int64]:
    """pycocotools' `rleFrString`, vectorised: the run lengths of a compressed counts string.

    pycocotools does not expose it, and its C decoder trusts the string (counts summing past
    h*w write past its buffer), so `decode_rle` checks a string with this first."""
    raw = s.encode("ascii") if isinstance(s, str) else bytes(s)
    if not raw:
        return np.zeros(0, dtype=np.int64)
    c = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if (c < 0).any() or (c > 63).any():
        raise ValueError("RLE counts string has characters outside '0'..'o'")
    ends = (c & 0x20) == 0
    if not ends[-1]:
        raise ValueError("RLE counts string ends in the middle of a value")
    group = np.concatenate(([0], np.cumsum(ends)[:-1]))
    starts = np.flatnonzero(np.concatenate(([True], ends[:-1])))
    pos = np.arange(c.size) - starts[group]
    if pos.max() >= _MAX_CHARS:
        raise ValueError("RLE counts string has a value that is too long")
    x = np.add.reduceat((c & 0x1F) << (5 * pos), starts)
    last = c[ends]
    nchars = pos[ends] + 1
    negative = (last & 0x10) != 0
    x[negative] -= np.left_shift(1, 5 * nchars[negative])
    counts = x.copy()
    if counts.size > 3:
        counts[1::2] = np.cumsum(x[1::2])
        counts[2::2] = np.cumsum(x[2::2])
    return counts


def encode_rle(mask: npt.ArrayLike) -> dict[str, Any]:
    """COCO compressed RLE `{"size": [h, w], "counts": str}` of a 2-D mask.

    `pycocotools.mask.encode` of the mask as Fortran-ordered uint8, with `counts` as a `str`
    (pycocotools gives the same characters as `bytes`, which JSON cannot hold).
    """
    m = _as_mask(mask)
    rle = mask_util.encode(np.asfortranarray(m, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> BoolMask:
    """The (h, w) bool mask of a COCO RLE, compressed (str/bytes counts) or not (int list).

    ValueError for a malformed RLE (checked before pycocotools decodes it)."""
    try:
        h, w = (int(v) for v in rle["size"])
        raw_counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a COCO RLE dict with 'size' [h, w] and 'counts': {exc}") from exc
    if h < 0 or w < 0:
        raise ValueError(f"RLE size must be non-negative, got {[h, w]}")
    compressed = isinstance(raw_counts, str | bytes | bytearray)
    if compressed:
        counts = _string_to_counts(raw_counts)
    else:
        counts = np.asarray(raw_counts, dtype=np.int64).ravel()
    if (counts < 0).any():
        raise ValueError("RLE counts must be non-negative")
    if int(counts.sum()) != h * w:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected h*w = {h * w}")
    if compressed:
        raw = raw_counts.encode("ascii") if isinstance(raw_counts, str) else bytes(raw_counts)
        coco = {"size": [h, w], "counts": raw}
    else:
        coco = mask_util.frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w)
    return np.ascontiguousarray(mask_util.decode(coco), dtype=bool)


# --------------------------------------------------------------------------- polygons


def mask_to_polygons(
    mask: npt.ArrayLike, *, tolerance: float = 1.5, min_area: float = 16
) -> list[list[float]]:
    """COCO polygons `[[x0, y0, x1, y1, ...], ...]` of the mask's outer contours.

    Contours come from `cv2.findContours(RETR_EXTERNAL)` (holes are not represented) and are
    simplified with `cv2.approxPolyDP(tolerance)` pixels (the raw contour is kept when that
    leaves fewer than 3 points). Regions of fewer than `min_area` pixels, and contours of
    fewer than 3 points (single pixels, 1-pixel lines), are dropped. Coordinates are pixel
    centres in continuous coordinates (contour index + 0.5).
    """
    m = _as_mask(mask)
    if not m.any():
        return []
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polygons: list[list[float]] = []
    for contour in contours:
        if _contour_pixel_area(contour) < min_area:
            continue
        approx = cv2.approxPolyDP(contour, tolerance, True) if tolerance > 0 else contour
        if len(approx) < 3:  # over-simplified small region: keep its raw contour
            approx = contour
        if len(approx) < 3:
            continue
        points = approx.reshape(-1, 2).astype(np.float64) + 0.5
        polygons.append([float(v) for v in points.ravel()])
    return polygons


def _contour_pixel_area(contour: npt.NDArray[Any]) -> float:
    """Pixels enclosed by a closed pixel contour (Pick's theorem: area + boundary/2 + 1)."""
    return float(cv2.contourArea(contour)) + len(contour) / 2.0 + 1.0


def polygons_to_mask(polygons: list[list[float]], h: int, w: int) -> BoolMask:
    """Rasterise COCO polygons (see `mask_to_polygons` for coordinates) into an (h, w) mask."""
    out = np.zeros((h, w), dtype=np.uint8)
    shift = 4
    pts = []
    for poly in polygons:
        arr = np.asarray(poly, dtype=np.float64)
        if arr.size < 6 or arr.size % 2:
            raise ValueError(f"a polygon needs >= 3 (x, y) pairs, got {arr.size} values")
        xy = (arr.reshape(-1, 2) - 0.5) * (1 << shift)
        pts.append(np.round(xy).astype(np.int32))
    if pts:
        cv2.fillPoly(out, pts, 1, lineType=cv2.LINE_8, shift=shift)
    return out.astype(bool)


# --------------------------------------------------------------------------- geometry


def box_from_mask(mask: npt.ArrayLike) -> Box | None:
    """The tight half-open box [x0, x1) x [y0, y1) around the mask's pixels; None if empty."""
    m = _as_mask(mask)
    cols = np.flatnonzero(m.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(m.any(axis=1))
    return Box(float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def mask_iou(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Intersection over union of two same-shape masks; 0.0 when both are empty."""
    ma, mb = _as_mask(a, name="a"), _as_mask(b, name="b")
    if ma.shape != mb.shape:
        raise ValueError(f"mask shapes differ: {ma.shape} vs {mb.shape}")
    union = int(np.count_nonzero(ma | mb))
    return int(np.count_nonzero(ma & mb)) / union if union else 0.0


def resize_mask(mask: npt.ArrayLike, w: int, h: int) -> BoolMask:
    """The mask resized to (h, w): bilinear up / area-average down, thresholded at one half."""
    m = _as_mask(mask)
    if w < 1 or h < 1:
        raise ValueError(f"target size must be >= 1x1, got {w}x{h}")
    if m.size == 0:
        raise ValueError("cannot resize an empty (zero-size) mask")
    if m.shape == (h, w):
        return m.copy()
    shrinking = w * h < m.shape[0] * m.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(m.astype(np.uint8) * 255, (w, h), interpolation=interp)
    return np.asarray(resized >= 128)


def paste_mask(
    local_mask: npt.ArrayLike,
    box_int: tuple[int, int, int, int],
    image_w: int,
    image_h: int,
) -> BoolMask:
    """A full (image_h, image_w) mask with `local_mask` placed in the half-open `box_int`.

    `box_int` is (x0, y0, x1, y1) in image pixels; the local mask is resized to the box when
    their sizes differ, and the parts of the box outside the image are clipped away.
    """
    local = _as_mask(local_mask, name="local_mask")
    x0, y0, x1, y1 = (int(v) for v in box_int)
    out = np.zeros((image_h, image_w), dtype=bool)
    bw, bh = x1 - x0, y1 - y0
    if bw <= 0 or bh <= 0 or local.size == 0:
        return out
    if local.shape != (bh, bw):
        local = resize_mask(local, bw, bh)
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x1, image_w), min(y1, image_h)
    if cx1 <= cx0 or cy1 <= cy0:
        return out
    out[cy0:cy1, cx0:cx1] = local[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return out


def exclusive(instances: Sequence[Instance]) -> list[Instance]:
    """The same instances with exclusive masks: where masks overlap, each pixel goes to one
    instance, as in panoptic output. The smaller mask is taken to be in front (a cushion on a
    sofa, a chair before a table) and keeps the shared pixels, as SAM's automatic mask
    generator paints its masks largest first; equal areas go to the better score. Boxes,
    labels and scores are unchanged; order is kept."""
    if len(instances) < 2:
        return list(instances)
    order = sorted(
        range(len(instances)), key=lambda i: (instances[i].mask_area, -instances[i].score)
    )
    taken = np.zeros_like(instances[order[0]].mask, dtype=bool)
    masks: dict[int, BoolMask] = {}
    for i in order:
        mask = instances[i].mask & ~taken
        taken |= mask
        masks[i] = mask
    return [replace(inst, mask=masks[i]) for i, inst in enumerate(instances)]


def behind(front: Sequence[Instance], back: Sequence[Instance]) -> list[Instance]:
    """`front` then `back`, where each of `back`'s masks has lost every pixel of a `front`
    mask: less certain instances (the lite segmenter's class-map lamp proposals, boxed at
    1/32 of the photo) keep only what no surer instance claims, whatever their size, before
    `exclusive` settles the rest. On the 100 COCO photos of docs/MASKS.md the proposals'
    loose boxes made masks that, smaller and so in front, cut into the detected objects':
    mask AP 0.235 with them in front, 0.279 behind (the same as with no proposals)."""
    if not back:
        return list(front)
    claimed = np.zeros_like(back[0].mask, dtype=bool)
    for inst in front:
        claimed |= inst.mask
    return [*front, *(replace(inst, mask=inst.mask & ~claimed) for inst in back)]


def box_mask(box: Box, width: int, height: int) -> BoolMask:
    """The pixels of `box` (`Box.pixels`) as a (height, width) mask."""
    x0, y0, x1, y1 = box.pixels(width, height)
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask
