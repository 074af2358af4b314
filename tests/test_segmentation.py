"""search.segmentation with fake models whose answers the test chooses (box prompts, their
labels, exclusive masks, `min_score`), and the real lite segmenter's `detect` on a real room
photo (the boxes `segment` masks, without the masks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.errors import InvalidBox
from search.masks import box_mask
from search.segmentation import (
    LABEL_IOU,
    OBJECT_LABEL,
    PROMPT_SCORE,
    Segmentation,
    label_for,
    parse_box,
    prompt_box,
)
from search.types import Box, Detection, Instance

W, H = 200, 100


def _photo() -> Image.Image:
    return Image.new("RGB", (W, H), (120, 90, 60))


class FakeSegmenter:
    """A couch (0..120 x 20..100, 0.9) and a cushion on it (40..80 x 30..60, 0.4)."""

    name = "fake-segmenter"

    def __init__(self) -> None:
        self.calls = 0

    def segment(self, image: Image.Image) -> list[Instance]:
        self.calls += 1
        return self.found()

    def found(self) -> list[Instance]:
        couch, cushion = Box(0, 20, 120, 100), Box(40, 30, 80, 60)
        return [
            Instance(couch, "couch", 0.9, box_mask(couch, W, H)),
            Instance(cushion, "cushion", 0.4, box_mask(cushion, W, H)),
        ]

    def segment_product(self, image: Image.Image) -> list[Instance]:
        return self.segment(image)[:1]


class DetectingSegmenter(FakeSegmenter):
    """The same, and a `Detector` too: `detect` gives the boxes without masking them."""

    def detect(self, image: Image.Image) -> list[Detection]:
        return [Detection(i.box, i.label, i.score) for i in self.found()]


class HalfMasker:
    """The left half of every box; nothing for boxes narrower than 10 px."""

    name = "half"

    def masks(self, image: Image.Image, boxes: Sequence[Box]) -> list[np.ndarray]:
        out = []
        for box in boxes:
            if box.width < 10:
                out.append(np.zeros((image.height, image.width), dtype=bool))
            else:
                half = Box(box.x0, box.y0, (box.x0 + box.x1) / 2, box.y1)
                out.append(box_mask(half, image.width, image.height))
        return out


@pytest.mark.parametrize(
    ("text", "box"),
    [
        ("10,20,30,40", Box(10, 20, 30, 40)),
        (" [10.5, 20 ,30.25,40] ", Box(10.5, 20, 30.25, 40)),
        ("-5,-5,.5,3.", Box(-5, -5, 0.5, 3)),
    ],
)
def test_parse_box(text: str, box: Box) -> None:
    assert parse_box(text) == box


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1,2,3",
        "1,2,3,4,5",
        "a,b,c,d",
        "1e3,0,2e3,5",
        "5,0,5,9",
        "0,9,5,1",
        "9" * 400 + ",0,1,1",
    ],
)
def test_parse_box_refuses(text: str) -> None:
    with pytest.raises(InvalidBox):
        parse_box(text)


def test_prompt_box_clips_and_refuses_outside() -> None:
    assert prompt_box(Box(-10, 50, 30, 300), W, H) == Box(0, 50, 30, H)
    for outside in (Box(W, 0, W + 10, 10), Box(-20, -20, -1, -1), Box(0, 0, 0.5, 50)):
        with pytest.raises(InvalidBox, match="outside"):
            prompt_box(outside, W, H)
    with pytest.raises(InvalidBox, match="x1 > x0"):
        prompt_box(Box(30, 0, 10, 10), W, H)


def test_label_for_takes_the_best_overlap_from_label_iou() -> None:
    couch = Detection(Box(0, 0, 100, 100), "couch", 0.8)
    chair = Detection(Box(90, 0, 150, 100), "chair", 0.6)
    assert label_for(Box(0, 0, 90, 100), [couch, chair]) == ("couch", 0.8)
    assert label_for(Box(95, 0, 150, 100), [couch, chair]) == ("chair", 0.6)
    small = Box(0, 0, 100 * LABEL_IOU * 0.9, 100)  # IoU with the couch just under LABEL_IOU
    assert label_for(small, [couch]) == (OBJECT_LABEL, PROMPT_SCORE)
    assert label_for(Box(0, 0, 10, 10), []) == (OBJECT_LABEL, PROMPT_SCORE)


def test_without_boxes_the_segmenters_instances_exclusive_and_above_min_score() -> None:
    found = Segmentation(FakeSegmenter()).segment(_photo())
    assert [i.label for i in found] == ["couch", "cushion"]
    couch, cushion = found
    assert not (couch.mask & cushion.mask).any(), "the smaller cushion keeps the shared pixels"
    assert cushion.mask.sum() == 40 * 30 and couch.mask.sum() == 120 * 80 - 40 * 30
    (strong,) = Segmentation(FakeSegmenter()).segment(_photo(), min_score=0.5)
    assert strong.label == "couch" and strong.mask.sum() == 120 * 80  # nothing took its pixels


def test_box_prompts_one_instance_each_in_order() -> None:
    segmenter = DetectingSegmenter()
    boxes = [Box(150, 0, 200, 50), Box(38, 28, 82, 62), Box(-20, 20, 120, 140), Box(5, 0, 12, 5)]
    found = Segmentation(segmenter, HalfMasker()).segment(_photo(), boxes)
    assert segmenter.calls == 0, "a Detector's boxes label the prompts: no masks computed"
    assert [i.label for i in found] == [OBJECT_LABEL, "cushion", "couch", OBJECT_LABEL]
    assert [i.score for i in found] == [PROMPT_SCORE, 0.4, 0.9, PROMPT_SCORE]
    assert [i.box for i in found] == [
        Box(150, 0, 200, 50),
        Box(38, 28, 82, 62),
        Box(0, 20, 120, 100),  # clipped
        Box(5, 0, 12, 5),
    ]
    stack = np.stack([i.mask for i in found]).astype(int)
    assert stack.sum(axis=0).max() == 1, "masks are exclusive"
    assert found[0].mask.sum() == 25 * 50  # the masker's left half
    assert found[3].mask.sum() == 7 * 5, "the masker found nothing: the box is the mask"


def test_box_prompt_labels_leave_out_weak_detections_and_use_segment_without_detect() -> None:
    segmenter = FakeSegmenter()  # no `detect`: its instances' boxes label the prompts
    (inst,) = Segmentation(segmenter).segment(_photo(), [Box(40, 30, 80, 60)], min_score=0.5)
    assert segmenter.calls == 1
    assert inst.label == OBJECT_LABEL and inst.mask.sum() == 40 * 30  # no masker: the box


def test_a_bad_box_fails_before_any_model_runs() -> None:
    segmenter = FakeSegmenter()
    with pytest.raises(InvalidBox):
        Segmentation(segmenter).segment(_photo(), [Box(0, 0, 10, 10), Box(500, 0, 600, 10)])
    assert segmenter.calls == 0


@pytest.mark.slow
def test_lite_detect_gives_the_boxes_segment_masks(sample_dir: Path) -> None:
    from search.config import Settings
    from search.factory import build_segmentation
    from search.images import read_image_file

    segmentation = build_segmentation(Settings())
    room = read_image_file(sorted((sample_dir / "rooms").glob("*.jpg"))[0])
    detections = segmentation.detect(room)
    instances = segmentation.segmenter.segment(room)
    assert detections and [(d.box, d.label, d.score) for d in detections] == [
        (i.box, i.label, i.score) for i in instances
    ]
