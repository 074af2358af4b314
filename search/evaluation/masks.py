"""`roomlens eval-masks`: instance masks measured against pixel-exact ground truth (COCO format).

Two measurements, each with the baselines a reader asks about:
- **box-prompted**: every ground-truth instance of area >= `MIN_AREA` with its ground-truth
  box as the prompt; mean mask IoU per method, for all classes and the furniture-like ones;
- **whole photo**: the configured segmenter on each photo; COCO mask AP and box AP
  (pycocotools `COCOeval`) over the classes the segmenter names, their ratio, and the share of
  masks that fill more than `BOX_SHAPED` of their box.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from search.coco import COCO_CLASSES
from search.images import read_image_file
from search.masks import box_mask, exclusive, mask_iou
from search.models.base import BoxMasker, Segmenter
from search.types import BoolMask, Box

MIN_AREA = 32 * 32
BOX_SHAPED = 0.95  # a mask filling more of its box than this is "just the box"
FURNITURE_LIKE = frozenset(
    {
        "chair",
        "couch",
        "bed",
        "dining table",
        "potted plant",
        "bench",
        "tv",
        "toilet",
        "vase",
        "clock",
    }
)


@dataclass(frozen=True)
class GtInstance:
    category: str
    box: Box
    mask: BoolMask
    area: float


@dataclass(frozen=True)
class GtImage:
    image_id: int
    path: Path
    instances: list[GtInstance]


@dataclass
class BoxPromptedScores:
    """One method's IoU per prompted instance (in ground-truth order) and its cost."""

    ious: list[float] = field(default_factory=list)
    furniture: list[bool] = field(default_factory=list)
    seconds: float = 0.0

    def mean(self, *, furniture_only: bool = False) -> float:
        values = [
            iou for iou, f in zip(self.ious, self.furniture, strict=True) if f or not furniture_only
        ]
        return float(np.mean(values)) if values else float("nan")

    @property
    def ms_per_instance(self) -> float:
        return 1000.0 * self.seconds / max(1, len(self.ious))


@dataclass(frozen=True)
class WholePhotoScores:
    mask_ap: float
    box_ap: float
    box_shaped: float  # share of returned masks filling > BOX_SHAPED of their box
    instances: int
    ms_per_photo: float

    @property
    def ratio(self) -> float:
        return self.mask_ap / self.box_ap if self.box_ap > 0 else float("nan")


def load_ground_truth(
    annotations: Path, images_dir: Path | None = None
) -> tuple[Any, list[GtImage]]:
    """The pycocotools `COCO` object and every image with its non-crowd instances.

    Images are looked up in `images_dir` (default: `images/` beside the annotations file)."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO(str(annotations))
    folder = images_dir or annotations.parent / "images"
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    images = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(image_id)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False))
        instances = [
            GtInstance(
                names[a["category_id"]], _xywh_box(a["bbox"]), coco.annToMask(a) > 0, a["area"]
            )
            for a in anns
        ]
        images.append(GtImage(image_id, folder / info["file_name"], instances))
    return coco, images


def _xywh_box(bbox: Sequence[float]) -> Box:
    x, y, w, h = bbox
    return Box(float(x), float(y), float(x + w), float(y + h))


def prompted(image: GtImage) -> list[GtInstance]:
    """The instances of `image` that are prompted by their box: area >= MIN_AREA."""
    return [inst for inst in image.instances if inst.area >= MIN_AREA]


def box_prompted(
    images: Sequence[GtImage],
    maskers: Mapping[str, BoxMasker],
    *,
    progress: bool = True,
) -> dict[str, BoxPromptedScores]:
    """Each masker's IoU on every prompted instance, given the ground-truth box."""
    scores = {name: BoxPromptedScores() for name in maskers}
    for gt in tqdm(images, desc="box-prompted", disable=not progress, unit="photo"):
        instances = prompted(gt)
        if not instances:
            continue
        image = read_image_file(gt.path)
        boxes = [inst.box for inst in instances]
        for name, masker in maskers.items():
            start = time.perf_counter()
            masks = masker.masks(image, boxes)
            scores[name].seconds += time.perf_counter() - start
            for inst, mask in zip(instances, masks, strict=True):
                scores[name].ious.append(mask_iou(mask, inst.mask))
                scores[name].furniture.append(inst.category in FURNITURE_LIKE)
    return scores


@dataclass
class Detections:
    """What a segmenter returned on some photos, in COCO result form, to be scored at once
    (`score_detections`): k-fold runs gather every fold's photos before scoring."""

    segm: list[dict[str, Any]] = field(default_factory=list)
    bbox: list[dict[str, Any]] = field(default_factory=list)
    named: set[int] = field(default_factory=set)  # COCO category ids it returned
    filled: list[float] = field(default_factory=list)  # mask area / box area per mask
    image_ids: list[int] = field(default_factory=list)
    seconds: float = 0.0


def detect(
    coco: Any,
    images: Sequence[GtImage],
    segmenter: Segmenter,
    into: Detections | None = None,
    *,
    progress: bool = True,
) -> Detections:
    """`segmenter` on every photo, its masks made exclusive as the service returns them,
    added to `into` (a new `Detections` when None)."""
    from pycocotools import mask as coco_mask

    out = into if into is not None else Detections()
    ids = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
    for gt in tqdm(images, desc="whole photo", disable=not progress, unit="photo"):
        image = read_image_file(gt.path)
        start = time.perf_counter()
        found = exclusive(segmenter.segment(image))  # as the service returns them
        out.seconds += time.perf_counter() - start
        out.image_ids.append(gt.image_id)
        for inst in found:
            if inst.label not in ids:
                continue  # a class COCO does not have (lamp)
            out.named.add(ids[inst.label])
            rle = coco_mask.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            x0, y0, x1, y1 = inst.box.as_list()
            common = {"image_id": gt.image_id, "category_id": ids[inst.label], "score": inst.score}
            out.segm.append({**common, "segmentation": rle})
            out.bbox.append({**common, "bbox": [x0, y0, x1 - x0, y1 - y0]})
            out.filled.append(inst.mask_area / max(1.0, inst.box.area))
    if not out.named:
        out.named.update(_segmenter_classes(segmenter, ids))
    return out


def score_detections(coco: Any, found: Detections) -> WholePhotoScores:
    """COCO mask and box AP of `found` over the classes the segmenter named, on its photos."""
    cat_ids = sorted(found.named)
    return WholePhotoScores(
        mask_ap=_coco_ap(coco, found.segm, "segm", cat_ids, found.image_ids),
        box_ap=_coco_ap(coco, found.bbox, "bbox", cat_ids, found.image_ids),
        box_shaped=float(np.mean([f > BOX_SHAPED for f in found.filled])) if found.filled else 0.0,
        instances=len(found.segm),
        ms_per_photo=1000.0 * found.seconds / max(1, len(found.image_ids)),
    )


def whole_photo(
    coco: Any, images: Sequence[GtImage], segmenter: Segmenter, *, progress: bool = True
) -> WholePhotoScores:
    """COCO mask and box AP of `segmenter` on every photo, over the classes it names."""
    return score_detections(coco, detect(coco, images, segmenter, progress=progress))


def _segmenter_classes(segmenter: Segmenter, ids: Mapping[str, int]) -> set[int]:
    classes: Iterable[str] = getattr(segmenter, "classes", None) or COCO_CLASSES
    return {ids[c] for c in classes if c in ids}


def _coco_ap(
    coco: Any, results: list[dict[str, Any]], kind: str, cat_ids: list[int], image_ids: list[int]
) -> float:
    """COCOeval's AP@[.5:.95] for `results`; 0 when there are none."""
    if not results:
        return 0.0
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        detections = coco.loadRes(results)
        evaluation = COCOeval(coco, detections, kind)
        evaluation.params.catIds = cat_ids
        evaluation.params.imgIds = image_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return max(0.0, float(evaluation.stats[0]))


# --- baselines --------------------------------------------------------------------------------


class BoxAsMask:
    """The box itself as the mask: what a box detector gives."""

    name = "box"

    def masks(self, image: Image.Image, boxes: Sequence[Box]) -> list[BoolMask]:
        return [box_mask(box, *image.size) for box in boxes]


class CutFromScene:
    """A per-photo probability map (U²-Net-p saliency, as the lite segmenter's "scene" mode)
    cut at each box; a box with under `min_fraction` of it salient keeps the whole box."""

    def __init__(
        self,
        name: str,
        probability: Callable[[Image.Image], np.ndarray],
        threshold: float = 0.5,
        min_fraction: float = 0.05,
    ) -> None:
        self.name = name
        self.probability = probability
        self.threshold = threshold
        self.min_fraction = min_fraction

    def masks(self, image: Image.Image, boxes: Sequence[Box]) -> list[BoolMask]:
        scene = self.probability(image) >= self.threshold
        out = []
        for box in boxes:
            mask = box_mask(box, *image.size)
            cut = mask & scene
            out.append(cut if cut.sum() >= self.min_fraction * mask.sum() else mask)
        return out
