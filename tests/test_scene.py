"""Scene facts (search.scene, search.relations) on synthetic layouts with known answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from search.masks import box_from_mask
from search.relations import PREDICATES, Relation, find_relations, relation_rules
from search.scene import NamedColor, Scene, build_scene, describe, plural
from search.types import Box, Instance

# A shape is (label, parts) with parts as rectangles (x0, y0, x1, y1) or ("ellipse", cx, cy, rx, ry)
Part = tuple[Any, ...]
Shape = tuple[str, list[Part]]


@dataclass(frozen=True)
class Colour:
    name: str
    share: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "share": self.share}


def paint(size: tuple[int, int], shapes: list[Shape], scale: float = 1.0) -> list[Instance]:
    """Instances with exclusive masks; later shapes are in front of earlier ones."""
    w, h = round(size[0] * scale), round(size[1] * scale)
    yy, xx = np.mgrid[:h, :w]
    owner = np.zeros((h, w), dtype=np.int32)
    for k, (_, parts) in enumerate(shapes, start=1):
        for part in parts:
            if part[0] == "ellipse":
                cx, cy, rx, ry = (v * scale for v in part[1:])
                inside = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1
            else:
                x0, y0, x1, y1 = (round(v * scale) for v in part)
                inside = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
            owner[inside] = k
    out = []
    for k, (label, _) in enumerate(shapes, start=1):
        mask = owner == k
        box = box_from_mask(mask) or Box(0, 0, 0, 0)
        out.append(Instance(box=box, label=label, score=0.9, mask=mask))
    return out


def rels(shapes: list[Shape], size: tuple[int, int] = (400, 300), scale: float = 1.0):
    """{(subject id, object id): {predicates}} of a layout."""
    found = find_relations([inst.mask for inst in paint(size, shapes, scale)])
    out: dict[tuple[int, int], set[str]] = {}
    for i, relations in enumerate(found, start=1):
        for r in relations:
            out.setdefault((i, r.object), set()).add(r.predicate)
    return out


TABLE = ("dining table", [(100, 100, 300, 200)])
CHAIR_LEFT_TOUCHING = ("chair", [(60, 90, 100, 170)])
LAMP = ("lamp", [(170, 40, 230, 80), (196, 80, 204, 120), (185, 120, 215, 130)])
VASE = ("vase", [("ellipse", 120, 130, 16, 30)])
SIDEBOARD = ("shelf", [(40, 140, 260, 240)])
FAR_A = ("chair", [(10, 10, 50, 60)])
FAR_B = ("couch", [(300, 200, 390, 280)])
CABINET = ("cabinet", [(40, 40, 160, 140)])
CHAIR_IN_FRONT = ("chair", [(100, 90, 180, 170)])
BOOKSHELF = ("bookshelf", [(40, 20, 200, 220)])
TV_INSIDE = ("tv", [(90, 140, 150, 190)])
CHAIR_BEHIND = ("chair", [(150, 30, 200, 100)])

LAYOUTS: dict[str, list[Shape]] = {
    "chair_next_to_table": [TABLE, CHAIR_LEFT_TOUCHING],
    "lamp_on_table": [TABLE, LAMP],
    "vase_on_shelf": [SIDEBOARD, VASE],
    "far_apart": [FAR_A, FAR_B],
    "occluder": [CABINET, CHAIR_IN_FRONT],
    "inside": [BOOKSHELF, TV_INSIDE],
    "cut_off_behind": [TABLE, CHAIR_BEHIND],
}


def test_chair_left_of_and_next_to_table():
    r = rels(LAYOUTS["chair_next_to_table"])
    assert r[(2, 1)] == {"next_to", "left_of"}
    assert r[(1, 2)] == {"next_to", "right_of"}


def test_lamp_on_table():
    r = rels(LAYOUTS["lamp_on_table"])
    assert r[(2, 1)] == {"on", "above"}
    assert r[(1, 2)] == {"below"}  # the table is not on the lamp, nor next to it


def test_vase_on_shelf():
    r = rels(LAYOUTS["vase_on_shelf"])
    assert r[(2, 1)] == {"on", "above"}
    assert "on" not in r[(1, 2)]


def test_far_apart_objects_have_no_relations():
    assert rels(LAYOUTS["far_apart"]) == {}


def test_occluding_object_is_in_front():
    r = rels(LAYOUTS["occluder"])
    assert {"in_front_of", "overlaps", "next_to"} <= r[(2, 1)]
    assert "behind" in r[(1, 2)] and "in_front_of" not in r[(1, 2)]


def test_occlusion_beats_the_bottom_edge():
    # the tv's bottom is higher than the bookshelf's, but it cuts into the shelf's interior
    r = rels(LAYOUTS["inside"])
    assert "in_front_of" in r[(2, 1)] and "on" not in r[(2, 1)]
    assert "behind" in r[(1, 2)]


def test_cut_off_by_the_top_edge_is_behind_not_on():
    # a chair hidden below the table's far edge: its mask ends exactly at the table's top
    r = rels(LAYOUTS["cut_off_behind"])
    assert r[(2, 1)] == {"behind", "above"}
    assert r[(1, 2)] == {"in_front_of", "below"}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_relations_do_not_depend_on_the_photo_size(name: str, scale: float):
    assert rels(LAYOUTS[name], scale=scale) == rels(LAYOUTS[name])


def test_relations_are_sorted_and_known():
    found = find_relations([i.mask for i in paint((400, 300), LAYOUTS["occluder"])])
    rank = {p: k for k, p in enumerate(PREDICATES)}
    for relations in found:
        assert all(r.predicate in rank for r in relations)
        keys = [(r.object, rank[r.predicate]) for r in relations]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_empty_masks_get_no_relations():
    masks = [np.zeros((50, 50), bool), np.ones((50, 50), bool)]
    assert find_relations(masks) == [[], []]


def test_rules_are_fractions():
    rules = relation_rules()
    assert all(0 < v <= 1 for v in vars(rules).values())


# --------------------------------------------------------------------------- the scene

DINING: list[Shape] = [
    ("chair", [(342, 40, 382, 120)]),  # blue, right of the table, touching
    ("chair", [(20, 40, 60, 120)]),  # white, left of the table, not touching
    ("dining table", [(100, 40, 340, 280)]),
    ("chair", [(60, 200, 100, 280)]),  # blue, left of the table, touching
]
DINING_COLOURS: list[list[Colour]] = [
    [Colour("blue", 0.8), Colour("white", 0.2)],
    [Colour("white")],
    [],
    [Colour("blue")],
]
DINING_TEXT = (
    "3 chairs (2 blue, 1 white) and 1 dining table. "
    "The 2 blue chairs are next to the dining table; the white chair is left of the dining table."
)


def dining_scene(order: list[int] | None = None, scale: float = 1.0) -> Scene:
    order = order or list(range(len(DINING)))
    instances = paint((400, 300), [DINING[i] for i in order], scale)
    colours: list[list[NamedColor]] = [list(DINING_COLOURS[i]) for i in order]
    size = (round(400 * scale), round(300 * scale))
    return build_scene(instances, colours, size)


def test_scene_instances():
    scene = dining_scene()
    assert (scene.width, scene.height) == (400, 300)
    assert [i.id for i in scene.instances] == [1, 2, 3, 4]
    table = scene.instances[2]
    assert table.area == pytest.approx(240 * 240 / (400 * 300))
    assert table.colors == [] and table.color is None
    assert scene.instances[0].color == "blue"
    assert Relation("next_to", 3) in scene.instances[0].relations
    assert Relation("left_of", 3) in scene.instances[1].relations
    assert Relation("next_to", 3) not in scene.instances[1].relations


def test_counts():
    scene = dining_scene()
    assert list(scene.counts.items()) == [("chair", 3), ("dining table", 1)]
    assert list(scene.counts_by_color.items()) == [("blue chair", 2), ("white chair", 1)]


def test_description():
    assert dining_scene().description == DINING_TEXT


def test_description_is_deterministic():
    a, b = dining_scene(), dining_scene()
    assert a.description == b.description
    assert [i.relations for i in a.instances] == [i.relations for i in b.instances]
    assert dining_scene(order=[2, 3, 1, 0]).description == DINING_TEXT
    assert dining_scene(scale=0.5).description == DINING_TEXT


def test_empty_scene():
    scene = build_scene([], [], (640, 480))
    assert scene.description == "No objects found."
    assert scene.instances == [] and scene.counts == {} and scene.counts_by_color == {}


def test_description_of_stacked_and_same_group_objects():
    shapes: list[Shape] = [
        TABLE,
        LAMP,
        ("potted plant", [(20, 120, 60, 200)]),
        ("potted plant", [(60, 120, 99, 200)]),
    ]
    instances = paint((400, 300), shapes)
    colours: list[list[NamedColor]] = [[Colour("brown")], [], [Colour("green")], [Colour("green")]]
    text = build_scene(instances, colours, (400, 300)).description
    assert text.startswith("2 green potted plants, 1 brown dining table and 1 lamp. ")
    assert "The 2 green potted plants are next to each other" in text
    assert "The lamp is on the brown dining table." in text


def test_build_scene_checks_its_inputs():
    instances = paint((40, 30), [FAR_A])
    with pytest.raises(ValueError, match="colour"):
        build_scene(instances, [], (40, 30))
    with pytest.raises(ValueError, match="mask"):
        build_scene(instances, [[]], (30, 40))


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("chair", "chairs"),
        ("couch", "couches"),
        ("bench", "benches"),
        ("potted plant", "potted plants"),
        ("dining table", "dining tables"),
        ("tv", "tvs"),
        ("glass", "glasses"),
        ("shelf", "shelves"),
        ("person", "people"),
        ("toy", "toys"),
        ("library", "libraries"),
    ],
)
def test_plural(label: str, expected: str):
    assert plural(label) == expected


def test_describe_without_relations():
    instances = paint((400, 300), LAYOUTS["far_apart"])
    scene = build_scene(instances, [[Colour("red")], []], (400, 300))
    assert scene.description == "1 red chair and 1 couch."
    assert describe([]) == "No objects found."


def test_a_chair_is_never_on_a_table_but_a_lamp_is() -> None:
    """The same layout, a thing resting on a table's top: `on` for a lamp, not for a chair
    (a chair behind a table looks like that in a photo)."""
    table = np.zeros((200, 300), dtype=bool)
    table[100:190, 50:250] = True
    thing = np.zeros((200, 300), dtype=bool)
    thing[40:110, 120:170] = True
    thing &= ~table | (np.arange(200)[:, None] < 110)
    table &= ~thing
    for label, expected in (("lamp", True), ("chair", False)):
        instances = [
            Instance(Box(120, 40, 170, 110), label, 0.9, thing),
            Instance(Box(50, 100, 250, 190), "dining table", 0.9, table),
        ]
        scene = build_scene(instances, [[], []], (300, 200))
        predicates = {r.predicate for r in scene.instances[0].relations}
        assert ("on" in predicates) is expected, (label, predicates)
        assert "above" in predicates
