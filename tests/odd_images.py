"""Valid but odd images, made on the fly (nothing binary is committed): the shapes, modes and
encodings a new user or a merchant's feed sends that a room photo never is.

`odd_images(max_pixels)` yields (name, bytes) pairs; every one decodes with Pillow. The long
thin ones go up to `max_pixels`, the pixel cap the server under test enforces.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
from hypothesis import strategies as st
from PIL import Image

EXIF_ORIENTATION = 0x0112


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _oriented(orientation: int) -> bytes:
    image = _noise(48, 32, seed=orientation)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(image, "JPEG", exif=exif.tobytes())


def _palette_with_transparency() -> bytes:
    image = _noise(40, 30).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(image, "PNG", transparency=0)


def _grey16() -> bytes:
    ramp = np.linspace(0, 65535, 64 * 48, dtype=np.uint16).reshape(48, 64)
    return encode(Image.fromarray(ramp), "PNG")


def _rgba() -> bytes:
    pixels = np.dstack([np.asarray(_noise(50, 40)), np.full((40, 50), 128, dtype=np.uint8)])
    return encode(Image.fromarray(pixels, mode="RGBA"), "PNG")


def odd_images(max_pixels: int) -> Iterator[tuple[str, bytes]]:
    """The corpus: tiny, thin up to the pixel cap, every mode and encoding worth a try."""
    for side in (1, 2):
        yield f"{side}x{side}", encode(_noise(side, side))
    for n in (3, 17, 3000, max_pixels):
        yield f"1x{n}", encode(Image.new("RGB", (1, n), (120, 80, 40)))
        yield f"{n}x1", encode(Image.new("RGB", (n, 1), (40, 80, 120)))
    yield "2x3000", encode(_noise(2, 3000))
    yield "huge-aspect-4000x3", encode(_noise(4000, 3))
    yield "grey", encode(_noise(64, 48).convert("L"))
    yield "grey-16bit", _grey16()
    yield "palette-transparency", _palette_with_transparency()
    yield "rgba", _rgba()
    yield "cmyk-jpeg", encode(_noise(64, 48).convert("CMYK"), "JPEG")
    yield "progressive-jpeg", encode(_noise(96, 64), "JPEG", progressive=True, quality=80)
    yield "grey-jpeg", encode(_noise(64, 48).convert("L"), "JPEG")
    for orientation in range(1, 9):
        yield f"exif-orientation-{orientation}", _oriented(orientation)
    yield "webp", encode(_noise(64, 48), "WEBP")
    yield "webp-rgba", encode(Image.open(io.BytesIO(_rgba())), "WEBP", lossless=True)
    yield "blank-white", encode(Image.new("RGB", (320, 240), (255, 255, 255)))


MODES = ("RGB", "RGBA", "L", "LA", "P", "1", "I;16", "CMYK")
FORMATS_FOR_MODE = {
    "RGB": ("PNG", "JPEG", "WEBP"),
    "RGBA": ("PNG", "WEBP"),
    "L": ("PNG", "JPEG"),
    "LA": ("PNG",),
    "P": ("PNG",),
    "1": ("PNG",),
    "I;16": ("PNG",),
    "CMYK": ("JPEG",),
}


@st.composite
def small_images(draw: st.DrawFn, max_side: int = 96) -> bytes:
    """A small random valid image: any size from 1x1, any of `MODES`, PNG, JPEG or WebP."""
    width = draw(st.integers(1, max_side))
    height = draw(st.integers(1, max_side))
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(FORMATS_FOR_MODE[mode]))
    seed = draw(st.integers(0, 2**16))
    image = _noise(width, height, seed)
    if mode == "I;16":
        grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(grey)
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    elif mode != "RGB":
        image = image.convert(mode)
    return encode(image, fmt)
