"""Close-ups cut out of rooms: the frame's geometry, which objects get one, and the close-up
recall on made-up outcomes whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from search.evaluation.closeups import (
    CloseupFraming,
    closeup_frame,
    closeup_image,
    closeup_recall,
    closeups,
    right_products,
    target_categories,
)
from search.evaluation.metrics import FURNITURE, PhotoOutcome, RankedInstance
from search.types import Box, Instance

W, H = 1000, 800  # the room photo
TIGHT = CloseupFraming(margin=0.25, min_share=0.0)


def _inst(box: Box, label: str = "chair") -> Instance:
    return Instance(box, label, 0.8, np.zeros((1, 1), dtype=bool))


def _inside(inner: Box, outer: Box) -> bool:
    return (
        outer.x0 <= inner.x0 + 1e-9
        and outer.y0 <= inner.y0 + 1e-9
        and inner.x1 <= outer.x1 + 1e-9
        and inner.y1 <= outer.y1 + 1e-9
    )


def test_a_tall_object_gets_a_portrait_frame_with_its_margin() -> None:
    box = Box(400, 300, 500, 500)  # 100 x 200, centre (450, 400)
    frame = closeup_frame(box, W, H, TIGHT)
    # grown 25% a side: 150 x 300, already narrower than 3:4, so widened to 225 x 300
    assert frame == Box(450 - 112.5, 250, 450 + 112.5, 550)
    assert frame.width / frame.height == pytest.approx(3 / 4)


def test_a_wide_object_gets_a_landscape_frame() -> None:
    box = Box(300, 400, 700, 500)  # 400 x 100, centre (500, 450)
    frame = closeup_frame(box, W, H, TIGHT)
    # 600 x 150 grown; 4:3 makes it 600 x 450
    assert frame == Box(200, 225, 800, 675)
    assert _inside(box, frame)


def test_a_small_object_is_framed_at_least_a_share_of_the_room() -> None:
    box = Box(480, 380, 520, 420)  # 40 x 40
    frame = closeup_frame(box, W, H, CloseupFraming(margin=0.25, min_share=0.12))
    assert frame.area == pytest.approx(0.12 * W * H)
    assert frame.width / frame.height == pytest.approx(3 / 4)  # square counts as tall
    assert (frame.x0 + frame.x1) / 2 == pytest.approx(500)
    assert (frame.y0 + frame.y1) / 2 == pytest.approx(400)


def test_a_frame_at_the_edge_is_moved_inside_not_clipped() -> None:
    box = Box(0, 700, 100, 800)  # the bottom-left corner
    frame = closeup_frame(box, W, H, TIGHT)
    assert frame.x0 == 0 and frame.y1 == H
    assert frame.width == pytest.approx(150) and frame.height == pytest.approx(200)
    assert _inside(box, frame)


def test_a_frame_too_big_for_the_photo_shrinks_to_fit_but_keeps_the_object() -> None:
    box = Box(50, 100, 950, 700)  # 900 x 600: grown it would be 1350 x 1012
    frame = closeup_frame(box, W, H, TIGHT)
    assert _inside(frame, Box(0, 0, W, H)) and _inside(box, frame)
    assert frame.width == W and frame.height == pytest.approx(750)  # 4:3 at the full width
    huge = Box(0, 0, W, H)
    assert closeup_frame(huge, W, H, TIGHT) == huge


def test_closeups_of_a_room_largest_first_known_labels_no_repeats() -> None:
    sofa = _inst(Box(100, 300, 700, 700), "couch")
    chair = _inst(Box(800, 400, 900, 600), "chair")
    again = _inst(Box(105, 305, 700, 700), "bed")  # the same object again: same frame
    tv = _inst(Box(300, 50, 600, 250), "tv")  # not a label the catalog policy knows
    speck = _inst(Box(10, 10, 30, 30), "vase")  # 0.05% of the room
    shots = closeups((W, H), [chair, speck, sofa, tv, again], CloseupFraming())
    assert [c.source for c in shots] == [sofa, chair]
    image = Image.new("RGB", (W, H), (200, 10, 10))
    crop = closeup_image(image, shots[1])
    frame = shots[1].frame
    assert crop.width < crop.height  # a chair: portrait
    assert 0 <= crop.width - frame.width < 2 and 0 <= crop.height - frame.height < 2


def test_right_products_are_of_the_categories_the_object_may_be() -> None:
    expected = {"s": "sofa", "a": "armchair", "c": "chair_stool_bench", "r": "rug", "l": "lamp"}
    assert target_categories("couch") == {"sofa", "armchair"}
    assert right_products(expected, "couch") == {"s": "sofa", "a": "armchair"}
    assert right_products(expected, "lamp") == {"l": "lamp"}
    assert target_categories("vase") == {"plant"}  # "other" is not furniture
    assert target_categories("toilet") == FURNITURE  # no entry: any furniture
    assert right_products(expected, "toilet").keys() == {"s", "a", "c", "l"}


def _outcome(expected: dict[str, str], *lists: tuple[tuple[str, float], ...]) -> PhotoOutcome:
    return PhotoOutcome(expected, tuple(RankedInstance("x", products) for products in lists))


def test_closeup_recall_counts_a_right_product_among_the_first_k_of_the_photo() -> None:
    # A: right product R first in its only group. B: its group's best product is S (.6), but
    # another group's products score higher, so S is 3rd of the photo once merged.
    # C: the right product never comes back. D: no right product in its room: not counted.
    a = _outcome({"R": "sofa"}, (("R", 0.9), ("x", 0.1)))
    b = _outcome({"S": "chair"}, (("S", 0.6),), (("y", 0.9), ("z", 0.8), ("S", 0.1)))
    c = _outcome({"T": "table"}, (("u", 0.5),))
    d = _outcome({}, (("R", 0.9),))
    m = closeup_recall([a, b, c, d], ks=(1, 2, 3))
    assert m.crops == 3
    assert m.recall_at == {
        1: pytest.approx(1 / 3),
        2: pytest.approx(1 / 3),
        3: pytest.approx(2 / 3),
    }
    assert m.groups_per_crop == pytest.approx(4 / 3)
    empty = closeup_recall([d])
    assert empty.crops == 0 and empty.recall_at == {1: 0.0, 10: 0.0}
