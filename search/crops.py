"""From an instance (box + full-size mask) to the crop an embedder sees, and catalog instances."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from search.masks import box_from_mask
from search.types import BoolMask, Box, FloatMask, Instance

if TYPE_CHECKING:
    from search.models.u2net import U2NetMasker

logger = logging.getLogger(__name__)

CROP_MODES = ("box", "mask", "soft")
MIN_BOX_SIDE = 2.0  # pixels
BACKGROUND_TOLERANCE = 16  # max per-channel difference (0..255) still counted as background
BORDER_WIDTH = 4  # pixels of the image frame sampled for the background colour

RGB = tuple[int, int, int]


def _dilate(mask: BoolMask, pixels: int) -> BoolMask:
    """`mask` grown by `pixels` with an elliptical kernel (unchanged when pixels <= 0)."""
    if pixels <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def _soft_alpha(mask: BoolMask, sigma: float) -> npt.NDArray[np.float32]:
    """0..1 alpha: 1 on the mask, fading outside it over a Gaussian of scale `sigma` pixels."""
    alpha = mask.astype(np.float32)
    if sigma <= 0:
        return alpha
    blurred = cv2.GaussianBlur(alpha, (0, 0), sigmaX=sigma)
    return np.maximum(alpha, np.asarray(blurred, dtype=np.float32))


def _composite(crop: Image.Image, alpha: npt.NDArray[np.float32], fill: RGB) -> Image.Image:
    """`crop` where alpha is 1, `fill` where it is 0, blended in between."""
    pixels = np.asarray(crop, dtype=np.float32)
    background = np.asarray(fill, dtype=np.float32).reshape(1, 1, 3)
    a = alpha[..., None]
    blended = pixels * a + background * (1.0 - a)
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def croppable(box: Box, width: int, height: int) -> bool:
    """Whether `box`, clipped to a width x height image, is big enough to crop and embed: at
    least MIN_BOX_SIDE px each way, or the whole side of an image thinner than that."""
    clipped = box.clip(width, height)
    return clipped.width >= min(MIN_BOX_SIDE, width) and clipped.height >= min(MIN_BOX_SIDE, height)


def crop_instance(
    image: Image.Image,
    instance: Instance,
    *,
    margin: float = 0.1,
    mode: str = "box",
    fill: RGB = (255, 255, 255),
    dilate: int = 0,
    feather: float | None = None,
) -> Image.Image:
    """The RGB crop of `instance`: its box grown by `margin` of its size per side, clipped.

    mode "box" keeps every pixel; "mask" replaces pixels outside the mask (grown by `dilate`
    px) with `fill`; "soft" keeps the mask's pixels and blends those outside it towards `fill` with
    a blurred mask (Gaussian sigma `feather` px, default 2% of the crop's longer side).
    """
    if mode not in CROP_MODES:
        raise ValueError(f"mode must be one of {CROP_MODES}, got {mode!r}")
    width, height = image.size
    if not croppable(instance.box, width, height):
        raise ValueError(f"degenerate box {instance.box.as_list()} in a {width}x{height} image")
    left, top, right, bottom = crop_rect(instance.box, width, height, margin)
    crop = image.convert("RGB").crop((left, top, right, bottom))
    if mode == "box":
        return crop
    if instance.mask.shape != (height, width):
        raise ValueError(f"mask shape {instance.mask.shape} does not match image {width}x{height}")
    mask = _dilate(np.asarray(instance.mask, dtype=bool), dilate)[top:bottom, left:right]
    if mode == "mask":
        return _composite(crop, mask.astype(np.float32), fill)
    sigma = feather if feather is not None else max(1.0, 0.02 * max(crop.size))
    return _composite(crop, _soft_alpha(mask, sigma), fill)


def crop_rect(box: Box, width: int, height: int, margin: float = 0.1) -> tuple[int, int, int, int]:
    """The crop's pixel rectangle: the box clipped, grown by `margin` of its size per side,
    clipped again (the embedder's crops and the mask head's)."""
    return box.clip(width, height).expand(margin, width, height).pixels(width, height)


def crop_mask(image: Image.Image, instance: Instance, *, margin: float = 0.1) -> FloatMask:
    """`instance`'s mask over the rectangle `crop_instance` crops (float32, 0 or 1): the
    weights of mask pooling (`MaskPoolingEmbedder`)."""
    width, height = image.size
    if instance.mask.shape != (height, width):
        raise ValueError(f"mask shape {instance.mask.shape} does not match image {width}x{height}")
    left, top, right, bottom = crop_rect(instance.box, width, height, margin)
    return np.asarray(instance.mask[top:bottom, left:right], dtype=np.float32)


def _frame(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The pixels of the image's outer frame (BORDER_WIDTH px wide), as (n, 3)."""
    b = max(1, min(BORDER_WIDTH, pixels.shape[0] // 2, pixels.shape[1] // 2))
    return np.concatenate(
        [
            pixels[:b].reshape(-1, 3),
            pixels[-b:].reshape(-1, 3),
            pixels[:, :b].reshape(-1, 3),
            pixels[:, -b:].reshape(-1, 3),
        ]
    )


def _border_colour(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    """The median colour of the image's outer frame."""
    return np.asarray(np.median(_frame(pixels), axis=0), dtype=np.int16)


def plain_background(
    image: Image.Image, tolerance: int = BACKGROUND_TOLERANCE, min_fraction: float = 0.97
) -> bool:
    """Whether the photo's frame is one plain colour (a studio product shot)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    frame = _frame(pixels).astype(np.int16)
    diff = np.abs(frame - np.median(frame, axis=0)).max(axis=1)
    return bool((diff <= tolerance).mean() >= min_fraction)


def background_difference_mask(
    image: Image.Image, tolerance: int = BACKGROUND_TOLERANCE
) -> BoolMask:
    """Foreground of a product shot on a plain background, without a model.

    Background = pixels within `tolerance` of the border colour that connect to the image frame;
    everything else (including enclosed background-coloured parts of the product) is foreground.
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    # "Within tolerance on every channel" as one range test: ~6x faster than the max over the
    # channels of |pixels - colour| (numpy's reduction over a length-3 axis is slow).
    colour = _border_colour(pixels).astype(np.int32)
    low = np.clip(colour - tolerance, 0, 255).astype(np.uint8)
    high = np.clip(colour + tolerance, 0, 255).astype(np.uint8)
    similar = cv2.inRange(pixels, low, high)
    count, labels = cv2.connectedComponents(similar, connectivity=4)
    background = np.zeros(count, dtype=bool)  # per label: similar and touching the frame
    background[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    background[0] = False  # label 0 = the non-similar pixels
    foreground = (~background[labels]).astype(np.uint8)
    opened = cv2.morphologyEx(foreground, cv2.MORPH_OPEN, np.ones((3, 3), dtype=np.uint8))
    return np.asarray(opened, dtype=bool)


def product_mask(image: Image.Image, masker: U2NetMasker | None, *, auto: bool = True) -> BoolMask:
    """The product's mask in a catalog photo.

    With `auto`, a photo on a plain background (nearly every catalog shot) is cut out by
    background difference, which agrees with U²-Net-p (box IoU ~1.0) at ~1/30 of its cost;
    other photos, or every photo when `auto` is off, go through U²-Net-p when `masker` is given.
    """
    if masker is None or (auto and plain_background(image)):
        return background_difference_mask(image)
    return masker.mask(image)


def product_instance(
    image: Image.Image, masker: U2NetMasker | None, *, auto: bool = True
) -> Instance:
    """The one product in a catalog photo (see `product_mask`), boxed by its mask.

    An empty mask, or one smaller than MIN_BOX_SIDE px either way (a speck), falls back to
    the whole image (all True).
    """
    mask = product_mask(image, masker, auto=auto)
    box = box_from_mask(mask)
    if box is None or box.width < MIN_BOX_SIDE or box.height < MIN_BOX_SIDE:
        logger.debug("no product mask on a %dx%d image: using the whole image", *image.size)
        mask = np.ones((image.height, image.width), dtype=bool)
        box = Box(0.0, 0.0, float(image.width), float(image.height))
    return Instance(box=box, label="product", score=1.0, mask=mask)


def largest_or_cutout(found: list[Instance], image: Image.Image) -> list[Instance]:
    """A catalog photo's product from a scene segmenter's instances: the largest one, or a
    background-difference cut-out when the segmenter found nothing."""
    if found:
        return [max(found, key=lambda instance: instance.mask_area)]
    return [product_instance(image, None)]
