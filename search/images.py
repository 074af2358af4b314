"""Reading images safely: format allow-list, byte and pixel caps, EXIF orientation, RGB."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from search.errors import ImageTooLarge, InvalidImage, UnsupportedImageType

log = logging.getLogger(__name__)

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
# Formats Pillow names apart that are one of the accepted ones: cameras and phones write
# JPEGs with a Multi-Picture (MPO) extension; the first picture is the photo.
FORMAT_ALIASES = {"MPO": "JPEG"}
DEFAULT_MAX_PIXELS = 40_000_000


def decode_image(
    data: bytes,
    *,
    max_bytes: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: frozenset[str] = ACCEPTED_FORMATS,
) -> Image.Image:
    """Decode uploaded bytes into an upright RGB image, or raise a typed error saying why not."""
    if not data:
        raise InvalidImage("the image is empty")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLarge(f"the image is {len(data)} bytes; the limit is {max_bytes}")
    image = _open(data, formats)
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"the image could not be decoded: {exc}") from exc
    return to_rgb(upright(image))


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; unchanged when that tag is unreadable."""
    try:
        return ImageOps.exif_transpose(image) or image
    except (OSError, SyntaxError, ValueError, TypeError, KeyError) as exc:
        log.info("ignoring unreadable EXIF orientation: %s", exc)
        return image


def _open(data: bytes, formats: frozenset[str]) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:  # only the accepted formats' decoders ever see the bytes
            image = Image.open(io.BytesIO(data), formats=_pillow_formats(formats))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLarge(str(exc)) from exc
        except UnidentifiedImageError as exc:
            kind = sniff_format(data)
            if kind in formats:
                raise InvalidImage(f"the {kind} image could not be read") from exc
            raise UnsupportedImageType(
                f"{kind or 'not a recognised'} image; accepted: {', '.join(sorted(formats))}"
            ) from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise InvalidImage(f"the image could not be read: {exc}") from exc
    if FORMAT_ALIASES.get(image.format or "", image.format) not in formats:
        raise UnsupportedImageType(
            f"{image.format or 'unknown'} images are not accepted; "
            f"accepted: {', '.join(sorted(formats))}"
        )
    return image


def _pillow_formats(formats: frozenset[str]) -> list[str]:
    """Pillow's decoders for `formats` (its JPEG decoder also opens MPO files)."""
    Image.init()
    return [name for name in sorted(formats) if name in Image.OPEN]


_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
)


def sniff_format(data: bytes) -> str | None:
    """The image format the leading bytes announce (JPEG, PNG, WEBP, GIF, ...), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode (palette, alpha, CMYK, 16-bit, grey) to 8-bit RGB; alpha composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    elif image.mode == "F":
        image = image.convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def read_image_file(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read an image file from disk (catalog photos, CLI queries)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidImage(f"cannot read {path}: {exc.strerror or exc}") from exc
    return decode_image(data, max_pixels=max_pixels)
