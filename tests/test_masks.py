"""COCO RLE and polygon encodings in search.masks, checked against pycocotools."""

from __future__ import annotations

import numpy as np
import pytest

from search.masks import (
    box_from_mask,
    decode_rle,
    encode_rle,
    mask_iou,
    mask_to_polygons,
    paste_mask,
    polygons_to_mask,
    resize_mask,
    rle_counts,
)
from search.types import Box

mask_util = pytest.importorskip("pycocotools.mask")


def coco_encode(mask: np.ndarray) -> dict:
    return mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))


def disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 < r**2


def structured_masks() -> list[np.ndarray]:
    single = np.zeros((7, 5), bool)
    single[3, 2] = True
    first = np.zeros((4, 4), bool)
    first[0, 0] = True
    last = np.zeros((4, 4), bool)
    last[-1, -1] = True
    stripes = np.zeros((9, 11), bool)
    stripes[:, ::2] = True
    rows = np.zeros((9, 11), bool)
    rows[::3] = True
    tall = np.zeros((100_000, 3), bool)
    tall[7:, 1] = True  # one run longer than 2**16 (multi-char values)
    return [
        np.zeros((5, 7), bool),
        np.ones((5, 7), bool),
        np.zeros((1, 1), bool),
        np.ones((1, 1), bool),
        single,
        first,
        last,
        stripes,
        rows,
        disc(101, 77, 40, 50, 30),
        ~disc(64, 64, 32, 32, 20),
        tall,
    ]


@pytest.mark.parametrize("index", range(len(structured_masks())))
def test_encode_matches_pycocotools_on_structured_masks(index: int) -> None:
    mask = structured_masks()[index]
    ours, ref = encode_rle(mask), coco_encode(mask)
    assert ours["size"] == ref["size"]
    assert isinstance(ours["counts"], str)
    assert ours["counts"].encode("ascii") == ref["counts"]
    assert np.array_equal(decode_rle(ours), mask)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (17, 31), (64, 48), (123, 7)])
@pytest.mark.parametrize("density", [0.02, 0.3, 0.5, 0.97])
def test_encode_matches_pycocotools_on_random_masks(shape: tuple[int, int], density: float) -> None:
    rng = np.random.default_rng(hash((shape, density)) % 2**32)
    mask = rng.random(shape) < density
    ours, ref = encode_rle(mask), coco_encode(mask)
    assert ours["size"] == ref["size"]
    assert ours["counts"].encode("ascii") == ref["counts"]


def test_encode_blobby_random_masks_matches_pycocotools() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(1, 300, size=2))
        mask = np.zeros((h, w), bool)
        for _ in range(int(rng.integers(0, 6))):
            mask |= disc(h, w, rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1, 80))
        assert encode_rle(mask)["counts"].encode("ascii") == coco_encode(mask)["counts"]


def test_encode_accepts_uint8_and_zero_size() -> None:
    mask = np.array([[0, 1], [2, 0]], dtype=np.uint8)
    assert encode_rle(mask) == encode_rle(mask != 0)
    empty = np.zeros((0, 5), bool)
    assert encode_rle(empty)["counts"].encode("ascii") == coco_encode(empty)["counts"]
    assert decode_rle(encode_rle(empty)).shape == (0, 5)


def test_decode_accepts_pycocotools_bytes_and_matches_its_decode() -> None:
    mask = disc(50, 60, 25, 20, 15) | disc(50, 60, 50, 40, 8)
    ref = coco_encode(mask)
    assert np.array_equal(decode_rle(ref), mask_util.decode(ref).astype(bool))


def test_decode_uncompressed_counts() -> None:
    mask = disc(40, 30, 10, 20, 9)
    rle = {"size": [40, 30], "counts": rle_counts(mask).tolist()}
    assert np.array_equal(decode_rle(rle), mask)
    # same column-major convention as pycocotools' uncompressed form
    assert np.array_equal(decode_rle({"size": [2, 2], "counts": [1, 2, 1]}), [[0, 1], [1, 0]])
    ref = mask_util.frPyObjects({"size": [40, 30], "counts": rle["counts"]}, 40, 30)
    assert encode_rle(mask)["counts"].encode("ascii") == ref["counts"]


def test_decode_rejects_bad_rle() -> None:
    with pytest.raises(ValueError, match="sum"):
        decode_rle({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(ValueError):
        decode_rle({"counts": "0"})
    with pytest.raises(ValueError):
        decode_rle({"size": [2, 2], "counts": "4\x7f"})


def test_encode_is_fast_on_a_large_mask() -> None:
    import time

    mask = disc(1000, 1000, 480, 520, 300) | disc(1000, 1000, 150, 150, 90)
    start = time.perf_counter()
    rle = encode_rle(mask)
    assert time.perf_counter() - start < 0.2  # typically ~2 ms
    assert np.array_equal(decode_rle(rle), mask)


def test_polygon_round_trip_disc_and_rectangle() -> None:
    rect = np.zeros((120, 160), bool)
    rect[20:70, 30:131] = True
    for mask in (disc(120, 160, 80, 60, 40), rect):
        polygons = mask_to_polygons(mask)
        assert len(polygons) == 1
        assert all(len(p) % 2 == 0 and len(p) >= 6 for p in polygons)
        assert mask_iou(polygons_to_mask(polygons, 120, 160), mask) > 0.9
        # also sensible under COCO's own rasteriser
        rles = mask_util.frPyObjects(polygons, 120, 160)
        coco = mask_util.decode(mask_util.merge(rles)).astype(bool)
        assert mask_iou(coco, mask) > 0.9
    assert mask_iou(polygons_to_mask(mask_to_polygons(rect), 120, 160), rect) == 1.0
    assert mask_to_polygons(rect)[0] == [30.5, 20.5, 30.5, 69.5, 130.5, 69.5, 130.5, 20.5]


def test_polygons_drop_tiny_regions_and_holes() -> None:
    mask = np.zeros((50, 50), bool)
    mask[2:4, 2:4] = True  # 4 pixels: dropped
    mask[10:40, 10:40] = True
    mask[20:30, 20:30] = False  # hole: outer contour only
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 1
    assert polygons_to_mask(polygons, 50, 50)[25, 25]
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []
    assert len(mask_to_polygons(mask, min_area=1)) == 2


def test_box_from_mask() -> None:
    mask = np.zeros((10, 20), bool)
    assert box_from_mask(mask) is None
    mask[3:6, 4:9] = True
    assert box_from_mask(mask) == Box(4.0, 3.0, 9.0, 6.0)
    mask[:] = False
    mask[9, 19] = True
    assert box_from_mask(mask) == Box(19.0, 9.0, 20.0, 10.0)


def test_mask_iou() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert mask_iou(a, b) == 0.0
    a[:2] = True
    b[1:3] = True
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    with pytest.raises(ValueError):
        mask_iou(a, np.zeros((3, 4), bool))


def test_resize_mask() -> None:
    mask = disc(28, 28, 14, 14, 10)
    up = resize_mask(mask, 112, 56)
    assert up.shape == (56, 112) and up.dtype == bool
    yy, xx = np.mgrid[:56, :112]
    ellipse = ((xx + 0.5 - 58) / 40) ** 2 + ((yy + 0.5 - 29) / 20) ** 2 < 1
    assert mask_iou(up, ellipse) > 0.95
    down = resize_mask(up, 28, 28)
    assert down.shape == (28, 28)
    assert mask_iou(down, mask) > 0.9
    assert np.array_equal(resize_mask(mask, 28, 28), mask)
    with pytest.raises(ValueError):
        resize_mask(mask, 0, 5)


def test_paste_mask_places_and_clips() -> None:
    local = np.ones((3, 4), bool)
    full = paste_mask(local, (2, 1, 6, 4), 10, 8)
    assert full.shape == (8, 10)
    assert box_from_mask(full) == Box(2.0, 1.0, 6.0, 4.0)
    assert full.sum() == 12
    clipped = paste_mask(local, (-2, 6, 2, 9), 10, 8)
    assert box_from_mask(clipped) == Box(0.0, 6.0, 2.0, 8.0)
    resized = paste_mask(np.ones((5, 5), bool), (0, 0, 10, 4), 10, 8)
    assert box_from_mask(resized) == Box(0.0, 0.0, 10.0, 4.0)
    assert not paste_mask(local, (20, 20, 24, 23), 10, 8).any()
    assert not paste_mask(local, (5, 5, 5, 9), 10, 8).any()


def test_exclusive_masks_give_each_pixel_to_one_instance_smaller_in_front() -> None:
    from search.masks import exclusive
    from search.types import Instance

    h, w = 40, 60
    sofa = np.zeros((h, w), dtype=bool)
    sofa[10:40, 0:50] = True
    cushion = np.zeros((h, w), dtype=bool)
    cushion[5:20, 10:25] = True  # partly on the sofa
    twin = sofa.copy()  # the same area: the better score keeps it
    found = [
        Instance(Box(0, 10, 50, 40), "couch", 0.6, sofa),
        Instance(Box(10, 5, 25, 20), "pillow", 0.3, cushion),
        Instance(Box(0, 10, 50, 40), "bed", 0.9, twin),
    ]
    out = exclusive(found)
    assert [i.label for i in out] == ["couch", "pillow", "bed"]
    assert [i.box for i in out] == [i.box for i in found]
    total = sum(i.mask.astype(int) for i in out)
    assert total.max() == 1, "no pixel belongs to two instances"
    assert (total.astype(bool) == (sofa | cushion)).all(), "no pixel is lost"
    assert (out[1].mask == cushion).all(), "the smaller cushion is in front: it keeps all"
    assert (out[2].mask == sofa & ~cushion).all(), "the bed outscores the couch of equal area"
    assert not out[0].mask.any()
    assert exclusive(found[:1]) == found[:1] and exclusive([]) == []


def test_behind_keeps_only_pixels_no_front_instance_claims() -> None:
    from search.masks import behind, exclusive
    from search.types import Instance

    h, w = 40, 60
    sofa = np.zeros((h, w), dtype=bool)
    sofa[10:40, 0:50] = True
    lamp = np.zeros((h, w), dtype=bool)
    lamp[0:20, 40:60] = True  # a loose proposal, half on the sofa
    front = [Instance(Box(0, 10, 50, 40), "couch", 0.6, sofa)]
    back = [Instance(Box(40, 0, 60, 20), "lamp", 0.9, lamp)]
    out = behind(front, back)
    assert [i.label for i in out] == ["couch", "lamp"] and out[0] == front[0]
    assert (out[1].mask == lamp & ~sofa).all(), "the lamp loses what the sofa claims"
    assert [i.box for i in out] == [front[0].box, back[0].box]
    # `exclusive` alone would give the shared pixels to the smaller lamp
    assert not exclusive(front + back)[0].mask[10:20, 40:50].any()
    assert out[0].mask[10:20, 40:50].all()
    again = exclusive(out)
    assert all((a.mask == b.mask).all() for a, b in zip(again, out, strict=True)), "exclusive"
    assert behind(front, []) == front
    (alone,) = behind([], back)
    assert (alone.mask == lamp).all(), "nothing in front: the proposal keeps its mask"
