"""decode_image: accepted formats, caps, EXIF orientation, unusual modes and broken files,
on images generated with Pillow."""

from __future__ import annotations

import io
import random
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from search.errors import ImageTooLarge, InvalidImage, RoomlensError, UnsupportedImageType
from search.images import decode_image, sniff_format, to_rgb


def _encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _noise(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _png16_rgb(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    row = b"\0" + struct.pack(">HHH", *rgb) * width
    raw = row * height

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    image = decode_image(_encode(_noise(), fmt))
    assert image.mode == "RGB" and image.size == (64, 48)


def test_camera_jpeg_with_several_pictures_is_a_jpeg() -> None:
    first, second = Image.new("RGB", (40, 30), (250, 0, 0)), Image.new("RGB", (40, 30), (0, 0, 250))
    data = _encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    image = decode_image(data)
    assert image.size == (40, 30) and image.getpixel((20, 15))[0] > 200  # the first picture


@pytest.mark.parametrize(
    ("image", "fmt", "kwargs", "pixel"),
    [
        (Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "JPEG", {}, (255, 0, 0)),
        (Image.new("L", (20, 10), 77), "PNG", {}, (77, 77, 77)),
        (Image.new("1", (20, 10), 1), "PNG", {}, (255, 255, 255)),
        (Image.new("RGBA", (20, 10), (255, 0, 0, 0)), "PNG", {}, (255, 255, 255)),
        (Image.new("RGBA", (20, 10), (255, 0, 0, 255)), "WEBP", {"lossless": True}, (255, 0, 0)),
        (Image.new("LA", (20, 10), (0, 0)), "PNG", {}, (255, 255, 255)),
        (Image.fromarray(np.full((10, 20), 40000, dtype=np.uint16)), "PNG", {}, (156, 156, 156)),
    ],
    ids=["cmyk", "grey", "1-bit", "transparent", "webp-alpha", "grey-alpha", "16-bit-grey"],
)
def test_modes_become_8_bit_rgb(
    image: Image.Image, fmt: str, kwargs: dict[str, Any], pixel: tuple[int, int, int]
) -> None:
    decoded = decode_image(_encode(image, fmt, **kwargs))
    assert decoded.mode == "RGB"
    assert all(abs(a - b) <= 3 for a, b in zip(decoded.getpixel((5, 5)), pixel, strict=True))


def test_palette_with_transparency_is_composited_on_white() -> None:
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 1), 1)
    decoded = decode_image(_encode(palette, "PNG", transparency=0))
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    assert decoded.getpixel((1, 1)) == (0, 0, 255)


def test_16_bit_rgb_png() -> None:
    decoded = decode_image(_png16_rgb(12, 8, (65535, 32768, 0)))
    assert decoded.mode == "RGB" and decoded.size == (12, 8)
    r, g, b = decoded.getpixel((3, 3))
    assert r == 255 and abs(g - 128) <= 1 and b == 0


@pytest.mark.parametrize(
    ("orientation", "size", "corner"),
    [(1, (60, 20), (255, 0, 0)), (3, (60, 20), (0, 0, 255)), (6, (20, 60), (0, 0, 255))],
)
def test_exif_orientation_is_applied(
    orientation: int, size: tuple[int, int], corner: tuple[int, int, int]
) -> None:
    image = Image.new("RGB", (60, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 10))  # red top-left as stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode_image(_encode(image, "PNG", exif=exif.tobytes()))
    assert decoded.size == size
    assert decoded.getpixel((2, 2)) == corner


def test_byte_cap() -> None:
    data = _encode(_noise(), "PNG")
    assert decode_image(data, max_bytes=len(data)).size == (64, 48)
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_bytes=len(data) - 1)


def test_pixel_cap_refuses_before_decoding() -> None:
    # 20000 x 20000 pixels of one colour: a few hundred kB of PNG, 1.2 GB once decoded
    data = _encode(Image.new("1", (20000, 20000)), "PNG", optimize=True)
    assert len(data) < 2_000_000
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_pixels=40_000_000)
    with pytest.raises(ImageTooLarge):
        decode_image(_encode(_noise(), "JPEG"), max_pixels=64 * 48 - 1)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", InvalidImage),
        (b"hello, not an image", UnsupportedImageType),
        (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", UnsupportedImageType),
        (b"BM" + b"\0" * 60, UnsupportedImageType),
        (b"%PDF-1.4", UnsupportedImageType),
        (b"\xff\xd8\xff\xe0" + b"\0" * 20, InvalidImage),  # a JPEG whose header is broken
    ],
)
def test_refused_bytes(data: bytes, error: type[RoomlensError]) -> None:
    with pytest.raises(error):
        decode_image(data)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_real_formats_are_unsupported(fmt: str) -> None:
    with pytest.raises(UnsupportedImageType):
        decode_image(_encode(_noise(), fmt))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_files_are_invalid(fmt: str) -> None:
    data = _encode(_noise(256, 256), fmt)
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) // 2])


def test_damaged_files_raise_only_typed_errors() -> None:
    """Seeded random cuts and byte flips: decoded, or refused with a typed error, never
    anything else."""
    rng = random.Random(1)
    seeds = [_encode(_noise(48, 40), fmt) for fmt in ("JPEG", "PNG", "WEBP")]
    decoded = refused = 0
    for data in seeds:
        for i in range(120):
            damaged = bytearray(data)
            if i % 2:
                damaged = damaged[: rng.randrange(1, len(damaged))]
            else:
                for _ in range(rng.randrange(1, 6)):
                    damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            try:
                decode_image(bytes(damaged))
                decoded += 1
            except RoomlensError:
                refused += 1
    assert refused > 0 and decoded + refused == 360


def test_sniff_format() -> None:
    assert sniff_format(_encode(_noise(), "WEBP")) == "WEBP"
    assert sniff_format(_encode(_noise(), "JPEG")) == "JPEG"
    assert sniff_format(_encode(_noise(), "PNG")) == "PNG"
    assert sniff_format(b"nothing") is None


def test_to_rgb_keeps_rgb_as_is() -> None:
    image = _noise()
    assert to_rgb(image) is image
