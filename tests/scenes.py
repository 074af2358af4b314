"""A room photo with known content, made on the fly from IKEA catalog cut-outs (nothing binary
is committed): a plain wall and a wooden floor, a dining table with a blue chair on either
side touching it, and a white chair a little apart on the right. All four stand on one floor
line, at the same depth.

The chairs are one JANINGE chair (yellow in the catalog) recoloured: hue set to blue, or
desaturated and lightened to white; the table is a pine and white table. Each is cut from
its white studio background by background difference, so every object's pixels and box are
known exactly.

What the scene answers: 3 chairs (2 blue, 1 white) and 1 dining table; the 2 blue chairs are
next to the dining table; the white chair is near the right blue chair (100 px, about half a
chair, apart) but not next to it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

CHAIR_SKU = "602.460.80"  # JANINGE chair, yellow
TABLE_SKU = "290.047.76"  # a pine and white table
SIZE = (1100, 683)
FLOOR_LINE = 573  # every object's bottom row + 1

Pixels = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class KnownScene:
    png: bytes
    boxes: dict[str, tuple[int, int, int, int]]  # blue_left, table, blue_right, white
    owner: npt.NDArray[np.int32]  # per pixel: 0 background, else 1 + index in `boxes`

    def box_fields(self) -> list[str]:
        """The boxes as `box` form fields, in `boxes` order."""
        return [",".join(str(v) for v in box) for box in self.boxes.values()]


def cutout(image: Path) -> tuple[Pixels, Mask]:
    """The product's pixels and mask, cropped to it, from a photo on a white background."""
    rgb = np.asarray(Image.open(image).convert("RGB"))
    fg = (np.abs(rgb.astype(np.int16) - 255).max(axis=2) > 30).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg)
    keep = np.zeros(fg.shape, dtype=bool)
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] > 200:  # specks of JPEG noise go
            keep |= labels == i
    ys, xs = np.nonzero(keep)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return rgb[y0:y1, x0:x1].copy(), keep[y0:y1, x0:x1]


def recolour(
    rgb: Pixels, mask: Mask, hue: float, saturation: float, value: tuple[float, float]
) -> Pixels:
    """The masked pixels with hue `hue` (degrees) and `saturation` (0..1); brightness scaled
    by value[0] and raised by value[1] (shading kept)."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = hue / 2.0
    hsv[..., 1] = saturation * 255.0
    hsv[..., 2] = np.clip(hsv[..., 2] * value[0] + value[1], 0, 255)
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    return np.where(mask[..., None], out, rgb)


def _room() -> Pixels:
    width, height = SIZE
    horizon = round(height * 0.62)
    img = np.zeros((height, width, 3), dtype=np.uint8)
    img[:horizon] = (228, 220, 200)  # the wall
    y = np.arange(height - horizon)[:, None]
    grain = 0.95 + 0.05 * np.sin(np.arange(width)[None, :] / 23.0 + y / 7.0)
    img[horizon:] = np.clip(np.array([150, 110, 75]) * grain[..., None], 0, 255).astype(np.uint8)
    return img


def _paste(
    img: Pixels,
    owner: npt.NDArray[np.int32],
    k: int,
    part: tuple[Pixels, Mask],
    x: int,
    height: int,
) -> tuple[int, int, int, int]:
    rgb, mask = part
    width = max(1, round(rgb.shape[1] * height / rgb.shape[0]))
    pixels = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    shape = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    y = FLOOR_LINE - height
    inside = shape.astype(bool)
    img[y:FLOOR_LINE, x : x + width][inside] = pixels[inside]
    owner[y:FLOOR_LINE, x : x + width][inside] = k
    return x, y, x + width, FLOOR_LINE


def dining_scene(sample_dir: Path) -> KnownScene:
    """The scene of the module docstring, as a PNG (needs the IKEA sample's images)."""
    chair, chair_mask = cutout(sample_dir / "images" / f"{CHAIR_SKU}.jpg")
    table = cutout(sample_dir / "images" / f"{TABLE_SKU}.jpg")
    blue = recolour(chair, chair_mask, 215.0, 0.85, (0.85, 0.0))
    white = recolour(chair, chair_mask, 0.0, 0.0, (0.35, 165.0))
    img = _room()
    owner = np.zeros(img.shape[:2], dtype=np.int32)
    boxes: dict[str, tuple[int, int, int, int]] = {}
    boxes["blue_left"] = _paste(img, owner, 1, (blue, chair_mask), 30, 270)
    boxes["table"] = _paste(img, owner, 2, table, boxes["blue_left"][2] + 4, 210)
    mirrored = (blue[:, ::-1].copy(), chair_mask[:, ::-1].copy())
    boxes["blue_right"] = _paste(img, owner, 3, mirrored, boxes["table"][2] + 4, 270)
    boxes["white"] = _paste(img, owner, 4, (white, chair_mask), boxes["blue_right"][2] + 100, 270)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return KnownScene(buf.getvalue(), boxes, owner)
