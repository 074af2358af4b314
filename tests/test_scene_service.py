"""search.scene_service on painted photos with a fake segmenter: the scene (colours from the
masks' pixels, relations, counts, timings) and the COCO document of the same instances."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from search.datasets import check_coco
from search.masks import box_mask, decode_rle
from search.scene_service import SceneRequest, photo_coco, photo_scene
from search.types import Box, Instance

W, H = 240, 120
BLUE, WHITE, BROWN, WALL = (40, 80, 200), (245, 245, 245), (110, 70, 40), (200, 190, 170)
CHAIR_A, TABLE, CHAIR_B = Box(20, 40, 70, 110), Box(72, 60, 168, 110), Box(170, 40, 220, 110)


def _photo() -> Image.Image:
    rgb = np.full((H, W, 3), WALL, dtype=np.uint8)
    for box, colour in ((CHAIR_A, BLUE), (TABLE, BROWN), (CHAIR_B, WHITE)):
        rgb[box_mask(box, W, H)] = colour
    return Image.fromarray(rgb)


class Painted:
    """Segments the painted photo: the two chairs and the table; box prompts are their box."""

    def __init__(self) -> None:
        self.asked: list[tuple[tuple[Box, ...], float]] = []

    def segment(
        self, image: Image.Image, boxes: Sequence[Box] = (), min_score: float = 0.0
    ) -> list[Instance]:
        self.asked.append((tuple(boxes), min_score))
        if boxes:
            return [Instance(b, "object", 1.0, box_mask(b, W, H)) for b in boxes]
        found = [(CHAIR_A, "chair", 0.8), (TABLE, "dining table", 0.7), (CHAIR_B, "chair", 0.6)]
        return [Instance(b, lab, s, box_mask(b, W, H)) for b, lab, s in found if s >= min_score]


def test_the_scene_of_a_painted_photo() -> None:
    result = photo_scene(Painted(), _photo())
    scene = result.scene
    assert (scene.width, scene.height) == (W, H)
    assert [i.color for i in scene.instances] == ["blue", "brown", "white"]
    assert scene.counts == {"chair": 2, "dining table": 1}
    assert scene.counts_by_color == {"blue chair": 1, "brown dining table": 1, "white chair": 1}
    chair_a, table, chair_b = scene.instances
    assert {r.object for r in chair_a.relations if r.predicate == "next_to"} == {table.id}
    assert {r.object for r in chair_b.relations if r.predicate == "next_to"} == {table.id}
    assert chair_a.area == CHAIR_A.area / (W * H)
    assert scene.description.startswith("2 chairs (1 blue, 1 white) and 1 brown dining table.")
    assert set(result.timings_ms) == {"segment", "colors", "relations"}


def test_the_request_reaches_the_segmenter() -> None:
    painted = Painted()
    request = SceneRequest(boxes=(TABLE,), min_score=0.65)
    (only,) = photo_scene(painted, _photo(), request).scene.instances
    assert painted.asked == [((TABLE,), 0.65)]
    assert only.label == "object" and only.color == "brown"
    scene = photo_scene(painted, _photo(), SceneRequest(min_score=0.65)).scene
    assert scene.counts == {"chair": 1, "dining table": 1}


def test_an_empty_scene() -> None:
    class Nothing:
        def segment(
            self, image: Image.Image, boxes: Sequence[Box] = (), min_score: float = 0.0
        ) -> list[Instance]:
            return []

    scene = photo_scene(Nothing(), _photo()).scene
    assert scene.instances == [] and scene.description == "No objects found."


def test_the_coco_document_of_the_same_instances() -> None:
    doc = photo_coco(Painted(), _photo(), file_name="room.png")
    assert check_coco(doc) == []
    assert doc["images"] == [{"id": 1, "file_name": "room.png", "width": W, "height": H}]
    assert [c["name"] for c in doc["categories"]] == ["chair", "dining table"]
    assert [a["category_id"] for a in doc["annotations"]] == [62, 67, 62]
    assert [a["bbox"] for a in doc["annotations"]] == [
        [b.x0, b.y0, b.width, b.height] for b in (CHAIR_A, TABLE, CHAIR_B)
    ]
    mask = decode_rle(doc["annotations"][1]["segmentation"])
    assert (mask == box_mask(TABLE, W, H)).all()
    assert doc["info"]["description"] == "roomlens segment"
