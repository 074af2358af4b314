"""Instance crops (box / mask / soft) and catalog product instances."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.crops import (
    BACKGROUND_TOLERANCE,
    background_difference_mask,
    crop_instance,
    plain_background,
    product_instance,
)
from search.types import Box, Instance

DATASET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "ikea"
RED = (200, 30, 40)


def _scene(width: int = 100, height: int = 80) -> Image.Image:
    """A mid-grey image with a red rectangle over x 20..60, y 20..50."""
    pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    pixels[20:50, 20:60] = RED
    return Image.fromarray(pixels)


def _instance(box: Box, width: int = 100, height: int = 80) -> Instance:
    """An instance whose mask is exactly its (integer) box."""
    mask = np.zeros((height, width), dtype=bool)
    mask[int(box.y0) : int(box.y1), int(box.x0) : int(box.x1)] = True
    return Instance(box=box, label="thing", score=0.9, mask=mask)


def test_box_crop_grows_by_margin() -> None:
    crop = crop_instance(_scene(), _instance(Box(20, 20, 60, 50)), margin=0.1)
    assert crop.size == (48, 36)  # 40x30 grown by 4 and 3 px per side
    assert crop.mode == "RGB"
    assert crop_instance(_scene(), _instance(Box(20, 20, 60, 50)), margin=0.0).size == (40, 30)


def test_margin_clipped_at_image_border() -> None:
    crop = crop_instance(_scene(), _instance(Box(0, 0, 30, 20)), margin=0.5)
    assert crop.size == (45, 30)
    crop = crop_instance(_scene(), _instance(Box(80, 70, 100, 80)), margin=1.0)
    assert crop.size == (40, 20)


def test_degenerate_boxes_refused() -> None:
    with pytest.raises(ValueError):
        crop_instance(_scene(), _instance(Box(10, 10, 11, 40)))
    with pytest.raises(ValueError):
        crop_instance(_scene(), _instance(Box(10, 10, 40, 10.5)))
    with pytest.raises(ValueError):  # entirely outside the image
        crop_instance(_scene(), _instance(Box(150, 10, 190, 40)))
    with pytest.raises(ValueError):
        crop_instance(_scene(), _instance(Box(20, 20, 60, 50)), mode="blur")


def test_mask_mode_fills_outside() -> None:
    scene = _scene()
    instance = _instance(Box(20, 20, 60, 50))
    crop = np.asarray(crop_instance(scene, instance, margin=0.25, mode="mask"))
    # 40x30 grown by 10 and 7.5 px per side; fractional edges round outwards (y 12..58)
    assert crop.shape == (46, 60, 3)
    assert (crop[:8] == 255).all() and (crop[:, :10] == 255).all()  # outside the mask: fill
    assert (crop[8:38, 10:50] == RED).all()  # inside: the original pixels
    black = np.asarray(crop_instance(scene, instance, margin=0.25, mode="mask", fill=(0, 0, 0)))
    assert (black[:8] == 0).all() and (black[38:] == 0).all()


def test_mask_dilation_keeps_more() -> None:
    scene, instance = _scene(), _instance(Box(30, 30, 50, 45))  # mask smaller than the red area
    tight = np.asarray(crop_instance(scene, instance, margin=0.5, mode="mask"))
    grown = np.asarray(crop_instance(scene, instance, margin=0.5, mode="mask", dilate=3))
    assert (grown == RED).all(axis=2).sum() > (tight == RED).all(axis=2).sum()


def test_soft_mode_blends_edge() -> None:
    scene, instance = _scene(), _instance(Box(20, 20, 60, 50))
    crop = np.asarray(crop_instance(scene, instance, margin=0.5, mode="soft", feather=2.0))
    assert crop.shape == (60, 80, 3)
    assert (crop[:5] == 255).all()  # far outside: fill
    assert (crop[15:45, 20:60] == RED).all()  # the whole mask keeps its pixels
    edge = crop[30, 19]  # just outside the mask's left edge: grey blended towards white
    assert (edge > 128).all() and (edge < 255).all()


def test_mask_shape_must_match_image() -> None:
    instance = Instance(Box(20, 20, 60, 50), "thing", 1.0, np.ones((10, 10), dtype=bool))
    with pytest.raises(ValueError):
        crop_instance(_scene(), instance, mode="mask")


def test_product_instance_background_difference() -> None:
    pixels = np.full((100, 200, 3), 255, dtype=np.uint8)
    pixels[20:70, 50:120] = RED
    pixels[40:50, 80:90] = 255  # a white hole inside the product stays foreground
    instance = product_instance(Image.fromarray(pixels), None)
    assert instance.box == Box(50, 20, 120, 70)
    assert instance.label == "product" and instance.score == 1.0
    assert instance.mask.shape == (100, 200) and instance.mask[45, 85]
    assert instance.mask_area == 50 * 70


def test_product_instance_plain_grey_background() -> None:
    pixels = np.full((60, 60, 3), 90, dtype=np.uint8)
    pixels[10:30, 25:50] = (10, 200, 10)
    assert background_difference_mask(Image.fromarray(pixels)).sum() == 20 * 25


def test_background_difference_tolerance_is_per_channel_and_inclusive() -> None:
    """A pixel is background when every channel is within the tolerance of the border colour,
    bounds included, also where the tolerance reaches past 0 or 255."""
    tol = BACKGROUND_TOLERANCE
    for border in ((250, 250, 250), (5, 128, 251)):
        pixels = np.full((40, 40, 3), border, dtype=np.uint8)
        inside = np.clip(np.array(border) + np.array([tol, -tol, tol]), 0, 255)
        pixels[5:15, 5:15] = inside  # background-coloured: joins the frame's region
        outside = np.array(border)
        outside[1] = border[1] + tol + 1 if border[1] + tol + 1 <= 255 else border[1] - tol - 1
        pixels[20:30, 20:30] = outside  # one channel one step past: the product
        mask = background_difference_mask(Image.fromarray(pixels))
        assert not mask[5:15, 5:15].any()
        assert mask[20:30, 20:30].all() and mask.sum() == 100


def test_product_instance_empty_falls_back_to_whole_image() -> None:
    instance = product_instance(Image.new("RGB", (40, 30), (255, 255, 255)), None)
    assert instance.box == Box(0, 0, 40, 30)
    assert instance.mask.all()


def _catalog_photo() -> Image.Image:
    """A real catalog photo (a folding chair on white); skips when the data set is absent."""
    if not (DATASET / "catalog.jsonl").is_file():
        pytest.skip(f"IKEA sample data set not found at {DATASET}")
    with (DATASET / "catalog.jsonl").open() as lines:
        for line in lines:
            row = json.loads(line)
            if row["product_type"] == "Folding chair":
                return Image.open(DATASET / row["image"]).convert("RGB")
    pytest.skip("no folding chair in the catalog")


def test_product_instance_on_catalog_photo() -> None:
    from search.models.u2net import U2NetMasker

    photo = _catalog_photo()
    cheap = product_instance(photo, None)
    learned = product_instance(photo, U2NetMasker(), auto=False)
    for instance in (cheap, learned):
        assert 0 <= instance.box.x0 < instance.box.x1 <= photo.width
        assert 0 <= instance.box.y0 < instance.box.y1 <= photo.height
        assert 0.03 < instance.mask.mean() < 0.9
    assert cheap.box.iou(learned.box) > 0.8
    crop = crop_instance(photo, learned, mode="mask")
    assert np.asarray(crop)[0, 0].tolist() == [255, 255, 255]


def test_plain_background_tells_studio_shots_from_rooms() -> None:
    assert plain_background(_catalog_photo())
    rooms = sorted((DATASET / "rooms").glob("*.jpg"))[:5]
    assert rooms and not any(plain_background(Image.open(r).convert("RGB")) for r in rooms)
    noisy = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    assert not plain_background(Image.fromarray(noisy))


def test_images_thinner_than_the_minimum_box_crop_whole() -> None:
    for size in ((1, 1), (1, 50), (50, 1)):
        image = Image.new("RGB", size, (10, 20, 30))
        whole = Instance(
            box=Box(0, 0, *size), label="image", score=1.0, mask=np.ones(size[::-1], dtype=bool)
        )
        assert crop_instance(image, whole).size == size
        assert crop_instance(image, whole, mode="soft").size == size
