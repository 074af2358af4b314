"""Instance masks as training data sets: COCO instance segmentation and YOLO segmentation.

Category ids are stable: a COCO class name keeps its official COCO id (`search.coco`,
1..90 with gaps); every other name ("lamp", a catalog category such as "sofa") gets
`OTHER_ID_BASE` + its position among the data set's non-COCO names in sorted order. So the
same set of names always gets the same ids, and no two names can share one.

COCO (`coco_document`): `segmentation` is compressed RLE with `counts` as a str (pycocotools
and Detectron2 read it; Detectron2 wants `INPUT.MASK_FORMAT=bitmask`), `bbox` the mask's
tight [x, y, w, h], `area` its pixel count, `iscrowd` 0 and the model's `score` kept.

YOLO segmentation (`write_yolo`): `labels/<relative path>.txt` beside `images/<relative path>`
(links to the photos, so Ultralytics finds each label by swapping `images` for `labels`),
one row per object: the class index, then the largest outer contour of its mask as x y pairs
normalised to [0, 1] (smaller separate parts are dropped; a mask without a 3-point contour
gets its tight box). `data.yaml` names the classes; train and val are both the whole set.

Coordinates are those of the upright image (EXIF orientation applied), as Pillow's
`exif_transpose`, OpenCV's `imread` and Ultralytics read them.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

from search.coco import COCO_CATEGORY_IDS, COCO_SUPERCATEGORIES
from search.errors import InvalidInput
from search.masks import decode_rle, encode_rle, mask_to_polygons
from search.types import Instance

log = logging.getLogger(__name__)

OTHER_ID_BASE = 1000
OTHER_SUPERCATEGORY = "other"
YOLO_MANIFEST = ".yolo-files.json"  # what write_yolo wrote, so a rerun removes only its own


# --------------------------------------------------------------------------- categories


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    supercategory: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "supercategory": self.supercategory}


def categories_for(
    names: Iterable[str], *, supercategory: str = OTHER_SUPERCATEGORY
) -> list[Category]:
    """The categories of `names` by id: COCO names with their COCO id and supercategory, the
    others from `OTHER_ID_BASE` up in sorted-name order, with `supercategory`."""
    unique = set(names)
    coco = [
        Category(COCO_CATEGORY_IDS[n], n, COCO_SUPERCATEGORIES[n])
        for n in unique
        if n in COCO_CATEGORY_IDS
    ]
    others = sorted(n for n in unique if n not in COCO_CATEGORY_IDS)
    coco += [Category(OTHER_ID_BASE + i, n, supercategory) for i, n in enumerate(others)]
    return sorted(coco, key=lambda c: c.id)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class LabelledObject:
    """One object of a data set: its class name, score and mask (COCO RLE, counts as str)."""

    label: str
    score: float
    rle: dict[str, Any]
    area: int
    bbox: tuple[float, float, float, float]  # the mask's tight [x, y, w, h]

    @classmethod
    def from_rle(cls, label: str, score: float, rle: Mapping[str, Any]) -> LabelledObject:
        coco = {"size": list(rle["size"]), "counts": rle["counts"]}
        x, y, w, h = (float(v) for v in mask_util.toBbox(coco))
        return cls(label, float(score), coco, int(mask_util.area(coco)), (x, y, w, h))

    @classmethod
    def from_instance(cls, instance: Instance, label: str | None = None) -> LabelledObject:
        return cls.from_rle(label or instance.label, instance.score, encode_rle(instance.mask))

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "rle": self.rle}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabelledObject:
        return cls.from_rle(data["label"], data["score"], data["rle"])


@dataclass(frozen=True)
class LabelledImage:
    """One image of a data set: where it is (`file_name`), its upright size and objects.

    `path` is the local file (for the YOLO tree's image links); None for a remote image."""

    file_name: str
    width: int
    height: int
    objects: tuple[LabelledObject, ...]
    path: Path | None = None

    @classmethod
    def from_instances(
        cls, file_name: str, size: tuple[int, int], instances: Iterable[Instance], **kw: Any
    ) -> LabelledImage:
        """An image of (width, height) `size` with the non-empty ones of `instances`."""
        objects = [LabelledObject.from_instance(i) for i in instances if i.mask.any()]
        return cls(file_name, size[0], size[1], tuple(objects), **kw)

    def above(self, min_score: float) -> LabelledImage:
        """The same image with only the objects scoring at least `min_score`."""
        kept = tuple(o for o in self.objects if o.score >= min_score)
        return LabelledImage(self.file_name, self.width, self.height, kept, self.path)


# --------------------------------------------------------------------------- COCO


def coco_document(
    images: Iterable[LabelledImage],
    *,
    supercategory: str = OTHER_SUPERCATEGORY,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A COCO instance-segmentation document: image ids 1.. in the given order, annotation
    ids 1.., the categories of every label (`categories_for`)."""
    images = list(images)
    categories = categories_for(
        (o.label for im in images for o in im.objects), supercategory=supercategory
    )
    ids = {c.name: c.id for c in categories}
    doc_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, image in enumerate(images, 1):
        doc_images.append(
            {
                "id": image_id,
                "file_name": image.file_name,
                "width": image.width,
                "height": image.height,
            }
        )
        for obj in image.objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": ids[obj.label],
                    "segmentation": obj.rle,
                    "bbox": list(obj.bbox),
                    "area": obj.area,
                    "iscrowd": 0,
                    "score": obj.score,
                }
            )
    return {
        "info": dict(info or {}),
        "images": doc_images,
        "annotations": annotations,
        "categories": [c.to_json() for c in categories],
    }


def write_json(path: Path, doc: Any) -> None:
    """Write `doc` as JSON to `path` atomically (a temp file beside it, then `os.replace`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as out:
            json.dump(doc, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- YOLO


def yolo_polygon(obj: LabelledObject, width: int, height: int) -> list[float]:
    """The object's largest outer contour as x, y pairs normalised to [0, 1] (>= 3 points)."""
    mask = decode_rle(obj.rle)
    polygons = mask_to_polygons(mask, min_area=1)
    if polygons:
        polygon = max(polygons, key=_polygon_area)
    else:  # no 3-point contour (a 1-pixel line): the tight box
        x, y, w, h = obj.bbox
        polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
    xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2) / (width, height)
    return [float(v) for v in np.clip(xy, 0.0, 1.0).ravel()]


def _polygon_area(polygon: Sequence[float]) -> float:
    xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def yolo_rows(image: LabelledImage, class_index: Mapping[str, int]) -> list[str]:
    """The label file rows of one image: `class x1 y1 x2 y2 ...`."""
    rows = []
    for obj in image.objects:
        coords = yolo_polygon(obj, image.width, image.height)
        rows.append(" ".join([str(class_index[obj.label]), *(f"{v:.6f}" for v in coords)]))
    return rows


@dataclass(frozen=True)
class YoloTree:
    root: Path
    data_yaml: Path
    labels: int  # label files written (one per image, beside its link under images/)
    objects: int  # rows written
    remote: int  # remote images (URLs): no local file to link, left out


def write_yolo(out_dir: Path, images: Iterable[LabelledImage]) -> YoloTree:
    """The YOLO segmentation tree of `images` under `out_dir` (see the module docstring).

    Label files and image links that an earlier run wrote for images no longer in the set
    are removed (`YOLO_MANIFEST` lists them); photos that live under `images/` are used in
    place and never touched."""
    images = list(images)
    local = [im for im in images if im.path is not None]
    categories = categories_for(o.label for im in local for o in im.objects)
    class_index = {c.name: i for i, c in enumerate(categories)}
    labels_dir, images_dir = out_dir / "labels", out_dir / "images"
    wanted_labels: set[Path] = set()
    wanted_links: set[Path] = set()
    objects = 0
    for image in local:
        rel = Path(image.file_name)
        label = labels_dir / rel.with_suffix(".txt")
        if label in wanted_labels:  # photo.jpg and photo.png: YOLO has one label path
            log.warning("%s: another photo has the label file %s; left out", rel, label)
            continue
        label.parent.mkdir(parents=True, exist_ok=True)
        rows = yolo_rows(image, class_index)
        label.write_text("".join(row + "\n" for row in rows))
        objects += len(rows)
        wanted_labels.add(label)
        wanted_links.add(_link_image(images_dir / rel, image.path))
    _remove_stale(out_dir, wanted_labels, wanted_links)
    data_yaml = out_dir / "data.yaml"
    data_yaml.write_text(_data_yaml(out_dir, [c.name for c in categories]))
    return YoloTree(out_dir, data_yaml, len(wanted_labels), objects, len(images) - len(local))


def _link_image(link: Path, target: Path | None) -> Path:
    """`link` -> `target` (absolute), unless `link` is the photo itself."""
    assert target is not None
    target = target.resolve()
    if link.exists() and link.resolve() == target:
        return link
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise InvalidInput(f"{link} is another file than {target}: not replacing it")
    link.symlink_to(target)
    return link


def _remove_stale(out_dir: Path, labels: set[Path], links: set[Path]) -> None:
    """Remove the label files and image links that the last run wrote (its manifest,
    `YOLO_MANIFEST`) and this one did not; then record this run's."""
    manifest = out_dir / YOLO_MANIFEST
    try:
        before = json.loads(manifest.read_text())
    except (OSError, ValueError):
        before = {}
    for rel in set(before.get("labels", [])) - {p.relative_to(out_dir).as_posix() for p in labels}:
        path = out_dir / rel
        if path.is_file() and not path.is_symlink():
            log.info("removing stale %s", path)
            path.unlink()
    for rel in set(before.get("links", [])) - {p.relative_to(out_dir).as_posix() for p in links}:
        path = out_dir / rel
        if path.is_symlink():
            log.info("removing stale %s", path)
            path.unlink()
    written = {
        "labels": sorted(p.relative_to(out_dir).as_posix() for p in labels),
        "links": sorted(p.relative_to(out_dir).as_posix() for p in links if p.is_symlink()),
    }
    write_json(manifest, written)


def _data_yaml(root: Path, names: Sequence[str]) -> str:
    """Ultralytics' data.yaml; JSON strings are YAML double-quoted scalars."""
    lines = [
        f"path: {json.dumps(str(root.resolve()))}",
        "train: images",
        "val: images",
        "names:",
        *(f"  {i}: {json.dumps(name)}" for i, name in enumerate(names)),
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- validation


def check_coco(doc: Mapping[str, Any]) -> list[str]:
    """What is wrong with a COCO instances document (empty when nothing): unique ids, every
    annotation on an existing image and category, masks of the image's size whose area and
    box match, polygons of >= 3 points."""
    problems: list[str] = []
    images = {im["id"]: im for im in doc["images"]}
    categories = {c["id"] for c in doc["categories"]}
    if len(images) != len(doc["images"]):
        problems.append("image ids are not unique")
    if len(categories) != len(doc["categories"]):
        problems.append("category ids are not unique")
    ann_ids = [a["id"] for a in doc["annotations"]]
    if len(set(ann_ids)) != len(ann_ids):
        problems.append("annotation ids are not unique")
    for ann in doc["annotations"]:
        where = f"annotation {ann['id']}"
        image = images.get(ann["image_id"])
        if image is None:
            problems.append(f"{where}: no image {ann['image_id']}")
            continue
        if ann["category_id"] not in categories:
            problems.append(f"{where}: no category {ann['category_id']}")
        problems += [f"{where}: {p}" for p in _check_segmentation(ann, image)]
    return problems


def _check_segmentation(ann: Mapping[str, Any], image: Mapping[str, Any]) -> list[str]:
    h, w = image["height"], image["width"]
    segm = ann["segmentation"]
    if isinstance(segm, list):
        if any(len(p) < 6 or len(p) % 2 for p in segm):
            return ["a polygon has fewer than 3 points"]
        rle = mask_util.merge(mask_util.frPyObjects(segm, h, w))
    else:
        if list(segm["size"]) != [h, w]:
            return [f"mask size {segm['size']} is not the image's [{h}, {w}]"]
        rle = {"size": [h, w], "counts": segm["counts"]}
        decode_rle(rle)  # ValueError for a malformed RLE
        if not isinstance(segm["counts"], str):
            return ["RLE counts are not a str"]
    problems = []
    if int(mask_util.area(rle)) != ann["area"]:
        problems.append(f"area {ann['area']} is not the mask's {int(mask_util.area(rle))}")
    if not np.allclose(mask_util.toBbox(rle), ann["bbox"], atol=1.0):
        problems.append(f"bbox {ann['bbox']} is not the mask's")
    return problems


def coco_self_ap(annotations: Path) -> dict[str, float]:
    """COCOeval AP@[.5:.95] of the file's annotations, taken as results with their scores,
    against the file itself, for "segm" and "bbox" (1.0 for a consistent document)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    aps: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO(str(annotations))
        anns = gt.loadAnns(gt.getAnnIds())
        for kind in ("segm", "bbox"):
            key = "segmentation" if kind == "segm" else "bbox"
            results = [
                {
                    "image_id": a["image_id"],
                    "category_id": a["category_id"],
                    key: a[key],
                    "score": a["score"],
                }
                for a in anns
            ]
            if not results:
                aps[kind] = 0.0
                continue
            evaluation = COCOeval(gt, gt.loadRes(results), kind)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            aps[kind] = float(evaluation.stats[0])
    return aps


def check_yolo(root: Path) -> list[str]:
    """What is wrong with a YOLO segmentation tree (empty when nothing): every label file
    has rows of a known class index and >= 3 points in [0, 1], beside a linked image."""
    problems: list[str] = []
    names = _yaml_names(root / "data.yaml")
    for label in sorted((root / "labels").rglob("*.txt")):
        rel = label.relative_to(root / "labels")
        if not any((root / "images" / rel.parent).glob(f"{glob.escape(rel.stem)}.*")):
            problems.append(f"{rel}: no image beside it")
        for n, row in enumerate(label.read_text().splitlines(), 1):
            where = f"{rel}:{n}"
            parts = row.split()
            if not parts or not parts[0].isdigit() or int(parts[0]) not in names:
                problems.append(f"{where}: unknown class {parts[:1]}")
                continue
            values = [float(v) for v in parts[1:]]
            if len(values) < 6 or len(values) % 2:
                problems.append(f"{where}: {len(values)} coordinates, need >= 6 and even")
            if any(not 0.0 <= v <= 1.0 for v in values):
                problems.append(f"{where}: a coordinate outside [0, 1]")
    return problems


def _yaml_names(data_yaml: Path) -> dict[int, str]:
    """The `names` of a data.yaml written by `write_yolo`."""
    names: dict[int, str] = {}
    in_names = False
    for line in data_yaml.read_text().splitlines():
        if line.startswith("names:"):
            in_names = True
        elif in_names and line.startswith("  "):
            index, name = line.strip().split(": ", 1)
            names[int(index)] = json.loads(name)
        else:
            in_names = False
    return names
