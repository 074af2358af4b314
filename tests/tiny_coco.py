"""A tiny COCO instance-segmentation set with known answers, written on the fly: two grey
photos, a chair and a couch as discs and a person as a rectangle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from search.types import BoolMask

W, H = 120, 80


def _disc(cx: int, cy: int, r: int) -> BoolMask:
    yy, xx = np.mgrid[:H, :W]
    return np.asarray((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r)


def _rect(x0: int, y0: int, x1: int, y1: int) -> BoolMask:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


# image 1: a chair (a disc) and a person (a rectangle); image 2: a couch (a disc)
TRUTH = {
    1: [("chair", _disc(30, 40, 20)), ("person", _rect(70, 10, 110, 70))],
    2: [("couch", _disc(60, 40, 30))],
}
CATEGORIES = {"person": 1, "chair": 62, "couch": 63}


def _bbox(mask: BoolMask) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [
        float(xs.min()),
        float(ys.min()),
        float(xs.max() + 1 - xs.min()),
        float(ys.max() + 1 - ys.min()),
    ]


def write_annotations(tmp_path: Path) -> Path:
    """instances.json and images/ in `tmp_path`; the path of the JSON."""
    (tmp_path / "images").mkdir()
    images, anns = [], []
    for image_id, instances in TRUTH.items():
        Image.new("RGB", (W, H), (200, 200, 200)).save(tmp_path / "images" / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": W, "height": H})
        for name, mask in instances:
            rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORIES[name],
                    "segmentation": {"size": [H, W], "counts": rle["counts"].decode()},
                    "area": float(mask.sum()),
                    "bbox": _bbox(mask),
                    "iscrowd": 0,
                }
            )
    cats = [{"id": i, "name": n, "supercategory": "x"} for n, i in CATEGORIES.items()]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path
