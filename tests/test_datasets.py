"""COCO and YOLO segmentation data sets from instances, validated with pycocotools."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from search.coco import COCO_CATEGORY_IDS, COCO_CLASSES, COCO_SUPERCATEGORIES
from search.datasets import (
    OTHER_ID_BASE,
    YOLO_MANIFEST,
    LabelledImage,
    categories_for,
    check_coco,
    check_yolo,
    coco_document,
    coco_self_ap,
    write_json,
    write_yolo,
    yolo_polygon,
)
from search.masks import box_from_mask, decode_rle, exclusive, mask_iou
from search.types import Box, Instance

W, H = 96, 64


def disc(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 < r**2


def rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def instance(label: str, score: float, mask: np.ndarray) -> Instance:
    box = box_from_mask(mask) or Box(0, 0, 1, 1)
    return Instance(box, label, score, mask)


def scenes() -> list[list[Instance]]:
    """Three photos' instances: overlaps (made exclusive), a two-part mask, a 1-pixel line,
    an empty mask (dropped), a non-COCO label, and a photo with nothing in it."""
    line = np.zeros((H, W), dtype=bool)
    line[5, 10:40] = True
    first = exclusive(
        [
            instance("couch", 0.9, rect(5, 20, 70, 60)),
            instance("chair", 0.6, disc(30, 30, 12)),  # on the couch: in front
            instance("lamp", 0.4, rect(80, 2, 92, 40)),
        ]
    )
    second = [
        instance("dining table", 0.8, rect(10, 10, 30, 30) | rect(50, 40, 90, 60)),  # two parts
        instance("lamp", 0.3, line),
        instance("chair", 0.7, np.zeros((H, W), dtype=bool)),  # empty: left out
    ]
    return [first, second, []]


def labelled(tmp_path: Path | None = None) -> list[LabelledImage]:
    images = []
    for n, instances in enumerate(scenes()):
        path = None
        if tmp_path is not None:
            path = tmp_path / "photos" / f"p{n}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (W, H), (200, 190, 180)).save(path)
        images.append(LabelledImage.from_instances(f"p{n}.png", (W, H), instances, path=path))
    return images


# --------------------------------------------------------------------------- categories


def test_coco_ids_are_the_official_ones() -> None:
    assert len(COCO_CATEGORY_IDS) == len(COCO_CLASSES) == 80
    assert set(range(1, 91)) - set(COCO_CATEGORY_IDS.values()) == {
        12, 26, 29, 30, 45, 66, 68, 69, 71, 83
    }  # fmt: skip
    official = {"person": 1, "bench": 15, "backpack": 27, "bottle": 44, "wine glass": 46,
                "chair": 62, "couch": 63, "potted plant": 64, "bed": 65, "dining table": 67,
                "toilet": 70, "tv": 72, "book": 84, "toothbrush": 90}  # fmt: skip
    assert {name: COCO_CATEGORY_IDS[name] for name in official} == official
    assert COCO_SUPERCATEGORIES["couch"] == "furniture"
    assert COCO_SUPERCATEGORIES["oven"] == "appliance"
    assert COCO_SUPERCATEGORIES["vase"] == "indoor"


def test_category_ids_are_stable_and_distinct() -> None:
    names = ["sofa", "chair", "object", "lamp", "dining table", "chair"]
    cats = categories_for(names)
    assert [(c.id, c.name) for c in cats] == [
        (62, "chair"),
        (67, "dining table"),
        (OTHER_ID_BASE, "lamp"),
        (OTHER_ID_BASE + 1, "object"),
        (OTHER_ID_BASE + 2, "sofa"),
    ]
    assert categories_for(reversed(names)) == cats
    assert {c.supercategory for c in cats if c.id >= OTHER_ID_BASE} == {"other"}
    assert categories_for(["lamp"], supercategory="product")[0].supercategory == "product"


# --------------------------------------------------------------------------- COCO


def test_coco_document_is_valid_and_scores_ap_one_against_itself(tmp_path: Path) -> None:
    images = labelled()
    doc = coco_document(images)
    path = tmp_path / "annotations.json"
    write_json(path, doc)
    assert check_coco(json.loads(path.read_text())) == []
    assert coco_self_ap(path) == pytest.approx({"segm": 1.0, "bbox": 1.0})

    assert [im["id"] for im in doc["images"]] == [1, 2, 3]
    assert {(im["width"], im["height"]) for im in doc["images"]} == {(W, H)}
    anns = doc["annotations"]
    assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    assert len(anns) == 5  # the empty chair mask is left out
    names = {c["id"]: c["name"] for c in doc["categories"]}
    assert names == {62: "chair", 63: "couch", 67: "dining table", OTHER_ID_BASE: "lamp"}
    expected = [i for scene in scenes() for i in scene if i.mask.any()]
    for ann, inst in zip(anns, expected, strict=True):
        assert names[ann["category_id"]] == inst.label and ann["score"] == inst.score
        assert isinstance(ann["segmentation"]["counts"], str) and ann["iscrowd"] == 0
        mask = decode_rle(ann["segmentation"])
        assert np.array_equal(mask, inst.mask)
        assert ann["area"] == int(inst.mask.sum())
        box = box_from_mask(inst.mask)
        assert box is not None
        assert ann["bbox"] == [box.x0, box.y0, box.width, box.height]


def test_check_coco_finds_problems() -> None:
    doc = coco_document(labelled())
    doc["annotations"][1]["id"] = doc["annotations"][0]["id"]
    doc["annotations"][2]["image_id"] = 99
    doc["annotations"][3]["area"] += 1
    doc["annotations"][4]["segmentation"] = [[1.0, 1.0, 5.0, 1.0]]
    problems = check_coco(doc)
    assert "annotation ids are not unique" in problems
    assert any("no image 99" in p for p in problems)
    assert any("area" in p for p in problems)
    assert any("fewer than 3 points" in p for p in problems)


def test_min_score_keeps_the_better_objects() -> None:
    kept = [im.above(0.6) for im in labelled()]
    assert [o.label for im in kept for o in im.objects] == ["couch", "chair", "dining table"]


# --------------------------------------------------------------------------- YOLO


def test_yolo_tree_is_valid_and_its_polygons_cover_the_masks(tmp_path: Path) -> None:
    images = labelled(tmp_path)
    out = tmp_path / "yolo"
    tree = write_yolo(out, images)
    assert check_yolo(out) == []
    assert (tree.labels, tree.objects, tree.remote) == (3, 5, 0)
    names = ["chair", "couch", "dining table", "lamp"]  # by category id
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == dict(enumerate(names))
    assert data["path"] == str(out.resolve()) and data["train"] == data["val"] == "images"
    for im in images:
        link = out / "images" / im.file_name
        assert link.is_symlink() and link.resolve() == im.path.resolve()  # type: ignore[union-attr]

    rows = [r.split() for r in (out / "labels" / "p0.txt").read_text().splitlines()]
    assert [names[int(r[0])] for r in rows] == ["couch", "chair", "lamp"]
    for row, obj in zip(rows, images[0].objects, strict=True):
        values = np.asarray(row[1:], dtype=np.float64)
        assert values.size >= 6 and values.size % 2 == 0
        assert values.min() >= 0 and values.max() <= 1
        assert mask_iou(_raster(values), decode_rle(obj.rle)) > 0.8
    assert (out / "labels" / "p2.txt").read_text() == ""  # a photo with nothing: background


def test_yolo_polygon_largest_part_and_degenerate_masks() -> None:
    table, line = labelled()[1].objects
    polygon = np.asarray(yolo_polygon(table, W, H))
    big = rect(50, 40, 90, 60)
    assert mask_iou(_raster(polygon), big) > 0.9, "the larger of the two parts"
    pts = np.asarray(yolo_polygon(line, W, H)).reshape(-1, 2) * (W, H)
    assert len(pts) >= 3
    assert pts[:, 0].min() == pytest.approx(10, abs=0.5) and pts[:, 0].max() == pytest.approx(
        40, abs=0.5
    )


def test_yolo_rerun_removes_its_stale_files_only(tmp_path: Path) -> None:
    images = labelled(tmp_path)
    out = tmp_path / "yolo"
    write_yolo(out, images)
    mine = out / "images" / "keep.png"
    Image.new("RGB", (4, 4)).save(mine)  # a photo that lives in images/
    write_yolo(out, images[:2])
    assert not (out / "labels" / "p2.txt").exists()
    assert not (out / "images" / "p2.png").exists() and mine.exists()
    assert json.loads((out / YOLO_MANIFEST).read_text())["labels"] == [
        "labels/p0.txt",
        "labels/p1.txt",
    ]
    assert check_yolo(out) == []


def test_yolo_uses_photos_that_already_live_in_images(tmp_path: Path) -> None:
    out = tmp_path / "set"
    images = labelled(out / "images")  # photos at set/images/photos/p*.png
    moved = [
        LabelledImage(f"photos/{im.file_name}", im.width, im.height, im.objects, im.path)
        for im in images
    ]
    write_yolo(out, moved)
    assert check_yolo(out) == []
    assert not any(p.is_symlink() for p in (out / "images").rglob("*"))


def test_check_yolo_finds_problems(tmp_path: Path) -> None:
    out = tmp_path / "yolo"
    write_yolo(out, labelled(tmp_path))
    (out / "labels" / "p1.txt").write_text("0 0.1 0.1 0.5 0.5\n7 0.1 0.1 0.2 0.2 0.3 1.5\n")
    problems = check_yolo(out)
    assert any("4 coordinates" in p for p in problems)
    assert any("unknown class" in p for p in problems)


def _raster(normalised: np.ndarray) -> np.ndarray:
    """A YOLO polygon (normalised x y pairs) filled at W x H, pixel centres at +0.5."""
    xy = normalised.reshape(-1, 2) * (W, H) - 0.5
    out = np.zeros((H, W), dtype=np.uint8)
    cv2.fillPoly(out, [np.round(xy * 16).astype(np.int32)], 1, shift=4)
    return out.astype(bool)
