"""The offline segmenter (NanoDet + U²-Net-p) on real room and catalog photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.coco import FURNITURE_CLASSES
from search.models.lite import LiteSegmenter
from search.models.nanodet import NanoDetDetector
from search.models.u2net import U2NetMasker

DATASET = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "ikea"


@pytest.fixture(scope="module")
def parts() -> tuple[NanoDetDetector, U2NetMasker]:
    return NanoDetDetector(classes=FURNITURE_CLASSES), U2NetMasker()


def _room() -> Image.Image:
    rooms = sorted((DATASET / "rooms").glob("*.jpg"))
    if not rooms:
        pytest.skip(f"no room photos under {DATASET}")
    return Image.open(rooms[1]).convert("RGB")


@pytest.mark.parametrize("mode", ["scene", "box"])
def test_masks_lie_in_their_boxes(parts: tuple[NanoDetDetector, U2NetMasker], mode: str) -> None:
    room = _room()
    instances = LiteSegmenter(*parts, mask_mode=mode, max_instances=4).segment(room)
    assert 1 <= len(instances) <= 4
    for inst in instances:
        assert inst.mask.shape == (room.height, room.width) and inst.mask.dtype == bool
        assert inst.mask.any()
        ys, xs = np.nonzero(inst.mask)
        assert xs.min() >= int(inst.box.x0) and xs.max() < np.ceil(inst.box.x1)
        assert ys.min() >= int(inst.box.y0) and ys.max() < np.ceil(inst.box.y1)
        assert inst.label in FURNITURE_CLASSES


def test_nothing_detected_gives_no_instances(parts: tuple[NanoDetDetector, U2NetMasker]) -> None:
    blank = Image.new("RGB", (300, 200), (250, 250, 250))
    assert LiteSegmenter(*parts).segment(blank) == []


def test_catalog_photo_gives_one_product(parts: tuple[NanoDetDetector, U2NetMasker]) -> None:
    photo = Image.open(sorted((DATASET / "images").glob("*.jpg"))[0]).convert("RGB")
    (inst,) = LiteSegmenter(*parts).segment_product(photo)
    assert inst.label == "product" and 0.01 < inst.mask.mean() < 1.0


def test_unknown_mask_mode_refused(parts: tuple[NanoDetDetector, U2NetMasker]) -> None:
    with pytest.raises(ValueError, match="mask_mode"):
        LiteSegmenter(*parts, mask_mode="nope")


def test_lamp_proposals_on_real_rooms(parts: tuple[NanoDetDetector, U2NetMasker]) -> None:
    from search.models.cam import ClassMapProposer
    from search.models.efficientnet import EfficientNetLiteEmbedder

    proposer = ClassMapProposer(EfficientNetLiteEmbedder(0))
    rooms = sorted((DATASET / "rooms").glob("*.jpg"))[:12]
    lamps = [d for r in rooms for d in proposer.detect(Image.open(r).convert("RGB"))]
    assert lamps, "a dozen furnished rooms show at least one lamp"
    assert all(d.label == "lamp" and proposer.threshold <= d.score <= 1.0 for d in lamps)
    segmenter = LiteSegmenter(*parts, proposer=proposer)
    assert "cam(" in segmenter.name
    for path in rooms:
        room = Image.open(path).convert("RGB")
        instances = segmenter.segment(room)
        detected = [i for i in instances if i.label != "lamp"]
        proposed = [i for i in instances if i.label == "lamp"]
        if detected and proposed:
            break
    else:
        pytest.fail("no room among a dozen has both detected furniture and a lamp")
    for inst in instances:
        assert inst.mask.shape == (room.height, room.width)
    assert [i.label for i in instances] == [i.label for i in detected + proposed], "detected first"
    claimed = np.logical_or.reduce([i.mask for i in detected])
    for lamp in proposed:
        assert not (lamp.mask & claimed).any(), "a proposal never takes a detected pixel"


def test_regions_boxes_each_component() -> None:
    from search.models.cam import regions

    prob = np.zeros((4, 8), dtype=np.float32)
    prob[0:2, 0:2] = 0.9
    prob[3, 6:8] = 0.5
    found = regions(prob, "lamp", 0.4, (800, 400), grow=0.0)
    boxes = sorted((d.box.as_list(), round(d.score, 2)) for d in found)
    assert boxes == [([0.0, 0.0, 200.0, 200.0], 0.9), ([600.0, 300.0, 800.0, 400.0], 0.5)]


def test_merge_duplicates_keeps_the_best_of_one_object() -> None:
    from search.models.lite import merge_duplicates
    from search.types import Box, Detection

    couch = Detection(Box(0, 0, 100, 50), "couch", 0.5)
    chair = Detection(Box(1, 0, 100, 51), "chair", 0.46)  # the same object, another class
    plant = Detection(Box(80, 0, 120, 50), "potted plant", 0.4)  # overlaps, but another object
    assert merge_duplicates([chair, plant, couch], 0.8) == [couch, plant]
    assert merge_duplicates([chair, couch], 0.999) == [couch, chair]


def test_boxes_too_small_to_crop_are_dropped() -> None:
    from search.models.lite import croppable
    from search.types import Box, Detection

    assert croppable(Detection(Box(10, 10, 40, 30), "chair", 0.5), (100, 100))
    assert not croppable(Detection(Box(99, 10, 140, 30), "chair", 0.5), (100, 100))  # 1 px in
    assert not croppable(Detection(Box(10, 10, 11.5, 30), "chair", 0.5), (100, 100))
