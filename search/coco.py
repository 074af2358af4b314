"""The 80 COCO detection classes, in the order COCO-trained detectors (NanoDet included) emit them.

`FURNITURE_CLASSES` is the subset worth cropping out of a room photo to search a home-furnishing
catalog with. Kept: seating and tables (chair, couch, bench, bed, dining table), decor a
catalog sells (potted plant, vase, clock, bowl) and kitchen/bathroom fixtures and appliances
(sink, toilet, oven, microwave, refrigerator). Left out on purpose: `tv` and `laptop` (the box is
the screen, not the TV bench under it), `book` (the crop is a book, not the bookcase; it also
fires on every shelf) and `cup`/`bottle`/`wine glass` (small, many, and noisy).
"""

from __future__ import annotations

COCO_CLASSES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)

# The official COCO category id of each class above (1..90 with gaps: the 2014 paper's 91
# "things" less the 11 never annotated), and its COCO supercategory.
COCO_CATEGORY_IDS: dict[str, int] = dict(
    zip(
        COCO_CLASSES,
        (*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70)
        + (*range(72, 83), *range(84, 91)),
        strict=True,
    )
)
_SUPERCATEGORY_RUNS = (  # (supercategory, how many consecutive classes above it covers)
    ("person", 1),
    ("vehicle", 8),
    ("outdoor", 5),
    ("animal", 10),
    ("accessory", 5),
    ("sports", 10),
    ("kitchen", 7),
    ("food", 10),
    ("furniture", 6),
    ("electronic", 6),
    ("appliance", 5),
    ("indoor", 7),
)
COCO_SUPERCATEGORIES: dict[str, str] = dict(
    zip(COCO_CLASSES, (s for s, n in _SUPERCATEGORY_RUNS for _ in range(n)), strict=True)
)

FURNITURE_CLASSES: frozenset[str] = frozenset(
    {
        "chair",
        "couch",
        "bench",
        "bed",
        "dining table",
        "potted plant",
        "vase",
        "clock",
        "bowl",
        "sink",
        "toilet",
        "oven",
        "microwave",
        "refrigerator",
    }
)


def classes_for(detector_classes: str) -> frozenset[str] | None:
    """The COCO classes a scene segmenter keeps for `ModelSettings.detector_classes`
    ("furniture": FURNITURE_CLASSES; "all": None, every class)."""
    return FURNITURE_CLASSES if detector_classes == "furniture" else None
