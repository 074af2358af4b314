"""Training-data augmentation for the mask head: copy-paste occluders and catalog composites,
on synthetic pictures with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from search.models.boxmask_augment import MIN_VISIBLE, Cutout, cutout, occlude
from search.models.boxmask_composite import (
    catalog_cutouts,
    composite,
    without_enclosed_background,
)
from search.types import Box


def _red_square() -> Cutout:
    rgb = np.zeros((20, 20, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    return Cutout(rgb, np.ones((20, 20), dtype=bool))


def test_cutout_keeps_the_object_and_drops_specks() -> None:
    rgb = np.zeros((50, 60, 3), dtype=np.uint8)
    mask = np.zeros((50, 60), dtype=bool)
    mask[10:30, 20:50] = True
    piece = cutout(rgb, mask, Box(20, 10, 50, 30))
    assert piece is not None and piece.mask.shape == (20, 30) and piece.mask.all()
    tiny = np.zeros((50, 60), dtype=bool)
    tiny[0:3, 0:3] = True
    assert cutout(rgb, tiny, Box(0, 0, 3, 3)) is None


def test_occluders_are_cut_out_of_the_target() -> None:
    rgb = np.full((100, 100, 3), 128, dtype=np.uint8)
    target = np.zeros((100, 100), dtype=bool)
    target[20:80, 20:80] = True
    box = Box(20, 20, 80, 80)
    for seed in range(10):
        out, visible = occlude(rgb, target, box, [_red_square()], np.random.default_rng(seed))
        red = (out[..., 0] > 200) & (out[..., 1] < 60)
        assert not (visible & red).any(), "a pixel under an occluder is not the object's"
        assert not (visible & ~target).any(), "occlusion only removes pixels"
        assert visible.sum() >= MIN_VISIBLE * target.sum()
        again = occlude(rgb, target, box, [_red_square()], np.random.default_rng(seed))
        assert np.array_equal(again[0], out) and np.array_equal(again[1], visible)
    assert occlude(rgb, target, box, [], np.random.default_rng(0))[1] is target


def _chair_on_white() -> tuple[np.ndarray, np.ndarray]:
    """A dark frame (a chair's back) with a white gap inside it, on a white studio shot."""
    rgb = np.full((80, 80, 3), 255, dtype=np.uint8)
    rgb[10:70, 10:70] = 40
    rgb[25:55, 25:55] = 255  # the gap between the slats
    mask = np.zeros((80, 80), dtype=bool)
    mask[10:70, 10:70] = True  # the background difference keeps the enclosed gap
    return rgb, mask


def test_enclosed_background_is_cut_out_and_white_on_white_is_refused() -> None:
    rgb, mask = _chair_on_white()
    solid = without_enclosed_background(rgb, mask)
    assert solid is not None
    assert not solid[25:55, 25:55].any() and solid[12:20, 12:68].all()
    white = np.full((80, 80, 3), 255, dtype=np.uint8)
    white[10:70, 10:12] = 40  # a white cabinet: only its edge differs from the background
    assert without_enclosed_background(white, mask) is None


def test_composite_mask_and_box_agree_and_stay_in_the_photo() -> None:
    background = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    rgb, mask = _chair_on_white()
    piece = Cutout(rgb[10:70, 10:70], without_enclosed_background(rgb, mask)[10:70, 10:70])  # type: ignore[index]
    made = [composite(background, piece, np.random.default_rng(s)) for s in range(8)]
    assert any(m is not None for m in made)
    for m in made:
        if m is None:
            continue
        photo, object_mask, box = m
        assert photo.shape == background.shape and photo.dtype == np.uint8
        ys, xs = np.nonzero(object_mask)
        assert (box.x0, box.y0, box.x1, box.y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert box.y1 >= 120 // 3, "furniture stands in the lower part of the photo"
        changed = np.abs(photo.astype(int) - background).max(axis=2) > 0
        assert changed[object_mask].mean() > 0.9, "the object's pixels are pasted"


def test_catalog_cutouts_from_a_feed(tmp_path: Path) -> None:
    rows = []
    for i, category in enumerate(["chair_stool_bench", "table", "rug"]):
        rgb, _ = _chair_on_white()
        Image.fromarray(rgb).save(tmp_path / f"p{i}.png")
        rows.append({"sku": str(i), "category": category, "image": f"p{i}.png"})
    feed = tmp_path / "catalog.jsonl"
    feed.write_text("\n".join(json.dumps(r) for r in rows))
    pieces = catalog_cutouts(feed, limit=10)
    assert len(pieces) == 2, "only furniture categories are taken"
    for piece in pieces:
        assert piece.mask.shape == piece.rgb.shape[:2] == (60, 60)
        assert not piece.mask[20:40, 20:40].any()
    assert len(catalog_cutouts(feed, limit=1)) == 1
