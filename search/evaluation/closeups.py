"""Close-up photos made from room photos: what a shopper's phone shot of one object looks like.

The dev set has rooms, not close-ups. A close-up is approximated by cropping a room around
one of its detected objects, framed as a phone frames one: the object's box grown by a
generous margin, widened to a 3:4 (tall objects) or 4:3 (wide objects) frame, and never
smaller than a share of the room (a phone close-up keeps some surroundings and enough
pixels). Each crop is searched as a photo of its own.

A crop is *found at K* when one of its room's expected products, of a catalog category the
crop's object may be (`search.categories.COCO_TO_CATALOG` of its detected label, any
furniture category for a label with no entry), is among the first K products of the crop's
result, every group's products merged by score (fair between results with one group and
results with several). It is a proxy: the expected list is per room, not per crop, so a crop
around a chair also counts when it finds another chair of the room, and a crop is only made
where the detector found the object in the room.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from PIL import Image

from search.categories import COCO_TO_CATALOG
from search.evaluation.metrics import FURNITURE, PhotoOutcome, budget_skus
from search.types import Box, Instance

PORTRAIT = 3 / 4  # width / height of a phone photo held upright
LANDSCAPE = 4 / 3
DEFAULT_KS: tuple[int, ...] = (1, 10)


@dataclass(frozen=True)
class CloseupFraming:
    """How a close-up is cut out of a room: `margin` of the object's box added on each side,
    the frame at least `min_share` of the room's area, sources below `min_box_share` of it
    skipped (too few pixels to be a close-up), and two crops overlapping by `duplicate_iou`
    or more kept once."""

    margin: float = 0.25
    min_share: float = 0.1
    min_box_share: float = 0.01
    duplicate_iou: float = 0.7


@dataclass(frozen=True)
class Closeup:
    """One close-up: its frame in the room photo and the object it is of."""

    frame: Box
    source: Instance


def closeup_frame(box: Box, width: int, height: int, framing: CloseupFraming) -> Box:
    """The phone-like frame around `box` inside a width x height photo: the box grown by
    `framing.margin` of its size on each side, widened to 3:4 (box taller than wide) or 4:3,
    scaled up to `framing.min_share` of the photo's area, centred on the box and moved (not
    clipped) to lie inside the photo. Where the frame cannot fit at that aspect it is shrunk
    to fit, never below the box itself."""
    aspect = PORTRAIT if box.height >= box.width else LANDSCAPE
    w = box.width * (1 + 2 * framing.margin)
    h = box.height * (1 + 2 * framing.margin)
    if w / h < aspect:
        w = h * aspect
    else:
        h = w / aspect
    floor = framing.min_share * width * height
    if w * h < floor:
        scale = (floor / (w * h)) ** 0.5
        w, h = w * scale, h * scale
    fit = min(1.0, width / w, height / h)
    w = min(max(w * fit, box.width), float(width))
    h = min(max(h * fit, box.height), float(height))
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    x0 = min(max(cx - w / 2, 0.0), width - w)
    y0 = min(max(cy - h / 2, 0.0), height - h)
    return Box(x0, y0, x0 + w, y0 + h)


def closeups(
    image_size: tuple[int, int], instances: Sequence[Instance], framing: CloseupFraming
) -> list[Closeup]:
    """One close-up per furniture-like instance of a room (those the category policy knows,
    `COCO_TO_CATALOG`), largest first, skipping sources too small and frames that repeat an
    earlier one."""
    width, height = image_size
    area = float(width * height)
    candidates = sorted(
        (
            inst
            for inst in instances
            if inst.label in COCO_TO_CATALOG and inst.box.area >= framing.min_box_share * area
        ),
        key=lambda inst: -inst.box.area,
    )
    out: list[Closeup] = []
    for inst in candidates:
        frame = closeup_frame(inst.box, width, height, framing)
        if all(frame.iou(kept.frame) < framing.duplicate_iou for kept in out):
            out.append(Closeup(frame, inst))
    return out


def closeup_image(image: Image.Image, closeup: Closeup) -> Image.Image:
    """The close-up's pixels, as a photo of its own."""
    return image.crop(closeup.frame.pixels(image.width, image.height))


def target_categories(label: str) -> frozenset[str]:
    """The catalog categories a close-up of a detected `label` counts as right."""
    mapped = COCO_TO_CATALOG.get(label)
    return (mapped & FURNITURE) if mapped is not None else FURNITURE


def right_products(expected: Mapping[str, str], label: str) -> dict[str, str]:
    """The room's expected products a close-up of `label` is right to find."""
    targets = target_categories(label)
    return {sku: category for sku, category in expected.items() if category in targets}


@dataclass
class CloseupMetrics:
    """Close-up recall: the share of close-ups with a right product among the first K."""

    crops: int
    recall_at: dict[int, float]
    groups_per_crop: float


def closeup_recall(
    outcomes: Iterable[PhotoOutcome], ks: Sequence[int] = DEFAULT_KS
) -> CloseupMetrics:
    """Each outcome is one close-up, its `expected` the right products (`right_products`);
    a close-up with none is not counted."""
    scored = [o for o in outcomes if o.expected]
    hits = dict.fromkeys(ks, 0)
    for outcome in scored:
        for k in ks:
            hits[k] += bool(budget_skus(outcome, k) & outcome.expected.keys())
    n = len(scored)
    return CloseupMetrics(
        crops=n,
        recall_at={k: hits[k] / n if n else 0.0 for k in ks},
        groups_per_crop=sum(len(o.instances) for o in scored) / n if n else 0.0,
    )
