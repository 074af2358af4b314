"""eval-masks metrics on hand-made ground truth with known answers: IoU per method, COCO mask
and box AP, the box-shaped share."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.evaluation.masks import (
    BoxAsMask,
    CutFromScene,
    box_prompted,
    load_ground_truth,
    whole_photo,
)
from search.types import BoolMask, Box, Instance
from tests.tiny_coco import TRUTH, _bbox, _disc, write_annotations


@pytest.fixture
def annotations(tmp_path: Path) -> Path:
    return write_annotations(tmp_path)


class Oracle:
    """Answers every box with the ground-truth mask whose box it is."""

    name = "oracle"

    def masks(self, image: Image.Image, boxes: Sequence[Box]) -> list[BoolMask]:
        truths = [m for instances in TRUTH.values() for _, m in instances]
        return [next(m for m in truths if _bbox(m) == _xywh(b)) for b in boxes]


def _xywh(box: Box) -> list[float]:
    return [box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0]


def test_box_prompted_ious_are_exact(annotations: Path) -> None:
    _, images = load_ground_truth(annotations)
    scores = box_prompted(images, {"box": BoxAsMask(), "oracle": Oracle()}, progress=False)
    assert scores["oracle"].ious == [1.0, 1.0, 1.0]
    disc_in_box = [
        m.sum() / (2 * r + 1) ** 2 for m, r in ((_disc(30, 40, 20), 20), (_disc(60, 40, 30), 30))
    ]
    box = scores["box"]
    assert box.furniture == [True, False, True]
    assert box.ious == pytest.approx([disc_in_box[0], 1.0, disc_in_box[1]])
    assert box.mean(furniture_only=True) == pytest.approx(np.mean(disc_in_box))
    assert box.mean() == pytest.approx(np.mean([*disc_in_box, 1.0]))


def test_a_scene_map_cut_at_the_box_falls_back_to_the_box_where_nothing_is_salient(
    annotations: Path,
) -> None:
    _, images = load_ground_truth(annotations)
    chair = _disc(30, 40, 20)
    masker = CutFromScene("scene", lambda image: chair.astype(np.float32))
    scores = box_prompted(images[:1], {"scene": masker}, progress=False)
    assert scores["scene"].ious == [1.0, 1.0]  # the chair cut exactly; the person box kept


class Segments:
    def __init__(self, name: str, as_boxes: bool) -> None:
        self.name = name
        self.as_boxes = as_boxes
        self.calls = 0

    def segment(self, image: Image.Image) -> list[Instance]:
        self.calls += 1
        out = []
        for label, mask in TRUTH[self.calls]:
            x, y, w, h = _bbox(mask)
            box = Box(x, y, x + w, y + h)
            shape = BoxAsMask().masks(image, [box])[0] if self.as_boxes else mask
            out.append(Instance(box=box, label=label, score=0.9, mask=shape))
        return out

    def segment_product(self, image: Image.Image) -> list[Instance]:
        return self.segment(image)


def test_whole_photo_ap(annotations: Path) -> None:
    coco, images = load_ground_truth(annotations)
    exact = whole_photo(coco, images, Segments("exact", as_boxes=False), progress=False)
    assert exact.mask_ap == pytest.approx(1.0) and exact.box_ap == pytest.approx(1.0)
    assert exact.ratio == pytest.approx(1.0) and exact.instances == 3
    assert exact.box_shaped == pytest.approx(1 / 3)  # the person's mask is its box
    boxes = whole_photo(coco, images, Segments("boxes", as_boxes=True), progress=False)
    assert boxes.box_ap == pytest.approx(1.0)
    assert boxes.box_shaped == 1.0
    # one detection per class: its AP is the share of COCO's IoU thresholds its mask passes
    thresholds = np.linspace(0.5, 0.95, 10)
    per_class = [
        np.mean(thresholds <= m.sum() / (2 * r + 1) ** 2 + 1e-9)
        for m, r in ((_disc(30, 40, 20), 20), (_disc(60, 40, 30), 30))
    ]
    assert boxes.mask_ap == pytest.approx((1.0 + sum(per_class)) / 3)
    assert boxes.ratio == pytest.approx(boxes.mask_ap)  # box AP is 1


@pytest.mark.slow
def test_the_command_writes_every_report(
    annotations: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from roomlens.cli import main

    out = tmp_path / "report"
    assert (
        main(["eval-masks", "--annotations", str(annotations), "--out", str(out), "--no-progress"])
        == 0
    )
    printed = capsys.readouterr().out
    assert (
        "| box |" in printed and "| u2netp-scene |" in printed and "whole photo (lite(" in printed
    )
    report = json.loads((out / "masks.json").read_text())
    assert report["meta"]["prompted_instances"] == 3
    assert set(report["box_prompted"]) == {"box", "u2netp-scene", "lite0-boxmask"}
    assert report["whole_photo"] is not None
    assert report["whole_photo"]["box_ap"] >= 0.0
    assert (out / "masks.md").read_text().startswith("# Instance masks")
    assert (out / "mask_iou.png").stat().st_size > 1000
