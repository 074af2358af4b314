"""Spatial relations between the objects of one photo, from their exclusive masks.

Every relation reads `subject <predicate> object` and is decided for each ordered pair of
instances from their masks (exclusive: one instance per pixel) and the masks' tight boxes.
Every threshold is a fraction of the two objects' own sizes, never a pixel count, so a photo
and a resized copy of it get the same relations. The thresholds live in `RelationRules`.

Notation, per instance: `box` is the mask's tight box (width w, height h, centre cx, cy; y
grows downwards, so "lower in the photo" is a larger y); `size` = sqrt(mask pixels). Per pair:
`small` = the smaller size; `gap` = the Euclidean number of empty pixels between the two masks
(0 when they touch; from a distance transform); `contact` = ceil(CONTACT * small) pixels, at
least 1 (the pixel grid's floor); `overlap_x` / `overlap_y` = the length the two boxes share
along x / y.

- **near** (a gate, not a predicate): gap <= NEAR_GAP * small. Only near pairs get any
  relation: objects more than about one object-size apart say little about each other, and
  this keeps a room of twenty objects from producing hundreds of facts.
- **on** (A on B: A rests on B's visible top surface), all of:
  the bottom of A lies in B's top part, ON_MIN_SINK * B.h <= A.y1 - B.y0 <= ON_TOP_PART * B.h,
  and A's centre is above B's; horizontal overlap, overlap_x >= ON_X_OVERLAP * A.w; contact:
  of A's footprint columns (those whose lowest pixel is in the bottom ON_FOOTPRINT of A's
  height: a lamp's base, a chair's feet), at least ON_SUPPORT have B's mask within `contact`
  pixels straight below. The minimum sink is deliberate: an object standing behind B and cut
  off by B's top edge ends exactly at B.y0 (a chair behind a dining table), while a thing
  resting on a surface seen from above ends inside the surface. Seen level with the surface
  the two look alike in 2-D and `on` is not claimed (the pair gets above / behind instead).
- **next_to** (symmetric): neither is on the other, gap <= NEXT_TO_GAP * small, and they are
  side by side, overlap_y >= NEXT_TO_V_OVERLAP * the smaller height (a picture hanging above a
  couch is `above` it, not next to it).
- **overlaps** (symmetric): neither is on the other and the boxes' intersection covers at least
  OVERLAP_MIN of the smaller box.
- **in_front_of / behind** (inverse pair): neither is on the other, and
  1. occlusion, when the masks touch (gap <= contact) and the boxes intersect: take the
     boundary pixels (each mask's pixels within contact + 1 of the other) and their depth in
     each box (distance to the box's nearest edge over half its shorter side: 0 at the edge,
     1 at the centre). The occluder's own outline is the boundary, so the boundary lies on the
     occluder's box edge while it cuts into the occluded object's box interior: A is in front
     of B when the median depth in B's box exceeds the median depth in A's by OCCLUSION_MARGIN.
  2. otherwise, when they overlap horizontally (overlap_x >= DEPTH_X_OVERLAP * the narrower
     width) and their bottoms differ by at least DEPTH_BOTTOM * the smaller height, the one
     whose bottom is lower in the photo stands nearer on the floor and is in front.
- **left_of / right_of / above / below** (photo frame, inverse pairs): A is left of B when A's
  centre is left of B's and overlap_x <= DIRECTION_MAX_OVERLAP * the narrower width; right_of
  mirrors it; above / below likewise with y and heights. Both axes may hold (diagonal
  neighbours). They are kept alongside `on` (a lamp on a table is also above it).

Instances with an empty mask get no relations. Each instance's relations are sorted by the
other instance's id, then in the order of `PREDICATES`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import cv2
import numpy as np
import numpy.typing as npt

from search.types import BoolMask

PREDICATES: tuple[str, ...] = (
    "on",
    "next_to",
    "overlaps",
    "in_front_of",
    "behind",
    "left_of",
    "right_of",
    "above",
    "below",
)
SYMMETRIC: frozenset[str] = frozenset({"next_to", "overlaps"})
_RANK = {p: i for i, p in enumerate(PREDICATES)}


@dataclass(frozen=True)
class Relation:
    """`subject <predicate> object`, held by the subject; `object` is the other instance's id."""

    predicate: str
    object: int


@dataclass(frozen=True)
class RelationRules:
    """Every threshold of the relations, each a fraction of the objects' own sizes."""

    contact: float = 0.05  # contact tolerance, x the smaller size (ceil, >= 1 px)
    near_gap: float = 1.0  # a pair gets relations only when gap <= this x the smaller size
    on_min_sink: float = 0.02  # A's bottom at least this x B.h below B's top ...
    on_top_part: float = 0.6  # ... and at most this x B.h below it
    on_x_overlap: float = 0.5  # x-overlap, x A's width
    on_footprint: float = 0.1  # footprint: columns ending in the bottom part of A's height
    on_support: float = 0.5  # share of footprint columns with B just below
    next_to_gap: float = 0.3  # x the smaller size
    next_to_v_overlap: float = 0.25  # y-overlap, x the smaller height
    overlap_min: float = 0.25  # box intersection, x the smaller box area
    occlusion_margin: float = 0.15  # boundary depth difference (0 at a box edge, 1 at its centre)
    depth_x_overlap: float = 0.3  # bottom-edge rule: x-overlap, x the narrower width
    depth_bottom: float = 0.1  # bottom-edge rule: bottoms apart, x the smaller height
    direction_max_overlap: float = 0.5  # left/right: x-overlap at most this x the narrower width


DEFAULT_RULES = RelationRules()


def relation_rules() -> RelationRules:
    """The thresholds `find_relations` uses by default."""
    return DEFAULT_RULES


@dataclass(frozen=True, eq=False)
class _Shape:
    mask: BoolMask
    x0: int
    y0: int
    x1: int
    y1: int
    area: int

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    @property
    def h(self) -> int:
        return self.y1 - self.y0

    @property
    def cx(self) -> float:
        return (self.x0 + self.x1) / 2

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2

    @property
    def size(self) -> float:
        return math.sqrt(self.area)


def _shape(mask: npt.ArrayLike) -> _Shape | None:
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (h, w), got shape {m.shape}")
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
    return _Shape(m, x0, y0, x1, y1, int(m.sum()))


def _overlap(a0: int, a1: int, b0: int, b1: int) -> int:
    return max(0, min(a1, b1) - max(a0, b0))


class _Contact:
    """Distance transforms of a pair, on the crop holding both masks."""

    def __init__(self, a: _Shape, b: _Shape) -> None:
        self.x0, self.y0 = min(a.x0, b.x0), min(a.y0, b.y0)
        x1, y1 = max(a.x1, b.x1), max(a.y1, b.y1)
        self.ma = a.mask[self.y0 : y1, self.x0 : x1]
        self.mb = b.mask[self.y0 : y1, self.x0 : x1]
        self.to_a = _distance_to(self.ma)
        self.to_b = _distance_to(self.mb)
        self.gap = max(0.0, float(self.to_a[self.mb].min()) - 1.0)

    def boundary(self, band: float) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Centres (x, y), in photo pixels, of each mask's pixels within `band` of the other."""
        near = (self.ma & (self.to_b <= band)) | (self.mb & (self.to_a <= band))
        ys, xs = np.nonzero(near)
        return xs.astype(np.float64) + (self.x0 + 0.5), ys.astype(np.float64) + (self.y0 + 0.5)


def _distance_to(mask: BoolMask) -> npt.NDArray[np.float32]:
    """Euclidean distance from every pixel to the nearest pixel of `mask`."""
    return cv2.distanceTransform(
        (~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
    ).astype(np.float32)


def _box_depth(xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64], s: _Shape) -> float:
    """Median depth of the points inside s's box: 0 at (or outside) an edge, 1 at the centre."""
    d = np.minimum(np.minimum(xs - s.x0, s.x1 - xs), np.minimum(ys - s.y0, s.y1 - ys))
    return float(np.median(np.clip(d / (min(s.w, s.h) / 2), 0.0, 1.0)))


def _support(a: _Shape, b: _Shape, contact: int, rules: RelationRules) -> float:
    """Share of A's footprint columns with B's mask within `contact` pixels straight below."""
    sub = a.mask[a.y0 : a.y1, a.x0 : a.x1]
    lowest = a.h - 1 - np.argmax(sub[::-1], axis=0)
    band = max(1, math.ceil(rules.on_footprint * a.h))
    cols = np.flatnonzero(sub.any(axis=0) & (lowest >= a.h - band))
    rows = a.y0 + lowest[cols][:, None] + np.arange(1, contact + 1)[None, :]
    inside = rows < b.mask.shape[0]
    below = b.mask[np.minimum(rows, b.mask.shape[0] - 1), (a.x0 + cols)[:, None]] & inside
    return float(below.any(axis=1).mean())


def _rests_on(a: _Shape, b: _Shape, contact: int, rules: RelationRules) -> bool:
    sink = a.y1 - b.y0
    if not rules.on_min_sink * b.h <= sink <= rules.on_top_part * b.h or a.cy >= b.cy:
        return False
    if _overlap(a.x0, a.x1, b.x0, b.x1) < rules.on_x_overlap * a.w:
        return False
    return _support(a, b, contact, rules) >= rules.on_support


def _front(a: _Shape, b: _Shape, pair: _Contact, contact: int, rules: RelationRules) -> int:
    """+1 when A is in front of B, -1 when B is in front of A, 0 when undecided."""
    ox, oy = _overlap(a.x0, a.x1, b.x0, b.x1), _overlap(a.y0, a.y1, b.y0, b.y1)
    if pair.gap <= contact and ox > 0 and oy > 0:
        xs, ys = pair.boundary(contact + 1.0)
        diff = _box_depth(xs, ys, b) - _box_depth(xs, ys, a)
        if abs(diff) >= rules.occlusion_margin:
            return 1 if diff > 0 else -1
    apart = abs(a.y1 - b.y1) >= rules.depth_bottom * min(a.h, b.h)
    if ox >= rules.depth_x_overlap * min(a.w, b.w) and apart:
        return 1 if a.y1 > b.y1 else -1
    return 0


def _directions(a: _Shape, b: _Shape, rules: RelationRules) -> tuple[list[str], list[str]]:
    ab: list[str] = []
    ba: list[str] = []
    limit = rules.direction_max_overlap
    if _overlap(a.x0, a.x1, b.x0, b.x1) <= limit * min(a.w, b.w) and a.cx != b.cx:
        ab.append("left_of" if a.cx < b.cx else "right_of")
        ba.append("right_of" if a.cx < b.cx else "left_of")
    if _overlap(a.y0, a.y1, b.y0, b.y1) <= limit * min(a.h, b.h) and a.cy != b.cy:
        ab.append("above" if a.cy < b.cy else "below")
        ba.append("below" if a.cy < b.cy else "above")
    return ab, ba


def _box_gap(a: _Shape, b: _Shape) -> float:
    """A lower bound of the mask gap: the empty pixels between the boxes."""
    dx = max(0, b.x0 - a.x1, a.x0 - b.x1)
    dy = max(0, b.y0 - a.y1, a.y0 - b.y1)
    return math.hypot(dx, dy)


def _pair(a: _Shape, b: _Shape, rules: RelationRules) -> tuple[list[str], list[str]]:
    """The predicates A -> B and B -> A."""
    small = min(a.size, b.size)
    if _box_gap(a, b) > rules.near_gap * small:
        return [], []
    pair = _Contact(a, b)
    if pair.gap > rules.near_gap * small:
        return [], []
    contact = max(1, math.ceil(rules.contact * small))
    ab = ["on"] if _rests_on(a, b, contact, rules) else []
    ba = ["on"] if _rests_on(b, a, contact, rules) else []
    if not ab and not ba:
        side_by_side = _overlap(a.y0, a.y1, b.y0, b.y1) >= rules.next_to_v_overlap * min(a.h, b.h)
        if pair.gap <= rules.next_to_gap * small and side_by_side:
            ab.append("next_to")
            ba.append("next_to")
        inter = _overlap(a.x0, a.x1, b.x0, b.x1) * _overlap(a.y0, a.y1, b.y0, b.y1)
        if inter >= rules.overlap_min * min(a.w * a.h, b.w * b.h):
            ab.append("overlaps")
            ba.append("overlaps")
        front = _front(a, b, pair, contact, rules)
        if front:
            ab.append("in_front_of" if front > 0 else "behind")
            ba.append("behind" if front > 0 else "in_front_of")
    dab, dba = _directions(a, b, rules)
    return ab + dab, ba + dba


def find_relations(
    masks: Sequence[npt.ArrayLike], rules: RelationRules = DEFAULT_RULES
) -> list[list[Relation]]:
    """Each instance's relations to the others (ids are 1-based positions in `masks`)."""
    shapes = [_shape(m) for m in masks]
    found: list[list[Relation]] = [[] for _ in shapes]
    for i, j in combinations(range(len(shapes)), 2):
        a, b = shapes[i], shapes[j]
        if a is None or b is None:
            continue
        ab, ba = _pair(a, b, rules)
        found[i] += [Relation(p, j + 1) for p in ab]
        found[j] += [Relation(p, i + 1) for p in ba]
    return [sorted(rels, key=lambda r: (r.object, _RANK[r.predicate])) for rels in found]
