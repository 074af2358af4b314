"""A photo's objects as structured facts for a language model.

`build_scene` turns the instances of one photo (exclusive masks) and their dominant colours
into a `Scene`: every instance with a 1-based id, its share of the photo, its colours and its
relations to the others (`search.relations`, where each predicate, its rule and its thresholds
are defined: on, next_to, overlaps, in_front_of / behind, left_of / right_of / above / below,
all relative to the objects' sizes and reported only between near objects), the counts per
label and per "<first colour> <label>", and a short deterministic English description.

The description (see docs/SCENE.md) is one sentence of counts, ordered by count descending
then label ("3 chairs (2 blue, 1 white) and 1 dining table."), then one sentence per subject
label. Each pair of instances is mentioned at most once, with its most telling predicate in
the order on, in_front_of / behind, next_to, left_of / right_of, above / below, overlaps;
the subject is the instance whose group comes first (groups are labels in count order, then
colours by count then name). Statements that share subject group, predicate and object group
are merged ("the 2 blue chairs are next to the dining table"); at most MAX_STATEMENTS are kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from search.relations import (
    DEFAULT_RULES,
    SYMMETRIC,
    Relation,
    RelationRules,
    find_relations,
    relation_rules,
)
from search.types import BoolMask, Box, Instance

__all__ = [
    "MAX_STATEMENTS",
    "NamedColor",
    "Relation",
    "RelationRules",
    "Scene",
    "SceneInstance",
    "build_scene",
    "describe",
    "plural",
    "relation_rules",
]

MAX_STATEMENTS = 12  # relation statements in the description (the full list is in `relations`)
EMPTY_DESCRIPTION = "No objects found."


class NamedColor(Protocol):
    """A dominant colour of an instance: a colour name and its share of the mask."""

    @property
    def name(self) -> str: ...

    @property
    def share(self) -> float: ...

    def as_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True, eq=False)
class SceneInstance:
    """One object of the scene; `id` is 1-based in input order, `area` its share of the photo."""

    id: int
    label: str
    score: float
    box: Box
    mask: BoolMask
    area: float
    colors: list[NamedColor]
    relations: list[Relation]

    @property
    def color(self) -> str | None:
        """The first (dominant) colour's name, None when there is no colour."""
        return self.colors[0].name if self.colors else None


@dataclass(frozen=True, eq=False)
class Scene:
    """The objects of one photo of `width` x `height` pixels, with counts and a description."""

    width: int
    height: int
    instances: list[SceneInstance]
    counts: dict[str, int]
    counts_by_color: dict[str, int]
    description: str


# Things that stand on the floor: in a photo a chair behind a table's far edge looks as if
# it rested on the table, and no rule on 2-D masks can tell; what the thing is can.
FLOOR_STANDING = frozenset(
    {"chair", "couch", "sofa", "armchair", "bed", "dining table", "table", "bench", "toilet"}
    | {"refrigerator", "oven", "wardrobe", "bookcase"}
)


def _standing(label: str, relations: list[Relation]) -> list[Relation]:
    """`relations` without `on` for a thing that stands on the floor."""
    if label not in FLOOR_STANDING:
        return relations
    return [r for r in relations if r.predicate != "on"]


def build_scene(
    instances: Sequence[Instance],
    colors: Sequence[Sequence[NamedColor]],
    image_size: tuple[int, int],
    *,
    rules: RelationRules = DEFAULT_RULES,
) -> Scene:
    """The scene facts of one photo: `colors[i]` are instance i's colours, `image_size` is
    (width, height) and every mask must be (height, width)."""
    width, height = image_size
    if len(colors) != len(instances):
        raise ValueError(f"{len(instances)} instances but {len(colors)} colour lists")
    for i, inst in enumerate(instances):
        if inst.mask.shape != (height, width):
            raise ValueError(f"instance {i + 1}: mask {inst.mask.shape} != ({height}, {width})")
    relations = [
        _standing(inst.label, rels)
        for inst, rels in zip(
            instances, find_relations([inst.mask for inst in instances], rules), strict=True
        )
    ]
    pixels = float(width * height)
    scene_instances = [
        SceneInstance(
            id=i + 1,
            label=inst.label,
            score=inst.score,
            box=inst.box,
            mask=inst.mask,
            area=inst.mask_area / pixels if pixels else 0.0,
            colors=list(cols),
            relations=rels,
        )
        for i, (inst, cols, rels) in enumerate(zip(instances, colors, relations, strict=True))
    ]
    counts = _ordered(Counter(inst.label for inst in scene_instances))
    counts_by_color = _ordered(
        Counter(f"{inst.color} {inst.label}" for inst in scene_instances if inst.color)
    )
    return Scene(
        width=width,
        height=height,
        instances=scene_instances,
        counts=counts,
        counts_by_color=counts_by_color,
        description=describe(scene_instances),
    )


def _ordered(counter: Counter[str]) -> dict[str, int]:
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


# --------------------------------------------------------------------------- words

_IRREGULAR = {
    "person": "people",
    "man": "men",
    "woman": "women",
    "child": "children",
    "mouse": "mice",
    "knife": "knives",
    "shelf": "shelves",
    "sheep": "sheep",
    "skis": "skis",
    "scissors": "scissors",
    "broccoli": "broccoli",
}


def plural(label: str) -> str:
    """The English plural of a label; of its last word when it has several."""
    head, _, last = label.rpartition(" ")
    if last in _IRREGULAR:
        word = _IRREGULAR[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        word = last + "es"
    elif len(last) > 1 and last.endswith("y") and last[-2] not in "aeiou":
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def _be(n: int) -> str:
    return "is" if n == 1 else "are"


PHRASES = {  # a relation in words (the page writes the same)
    "on": "on",
    "next_to": "next to",
    "overlaps": "overlapping",
    "in_front_of": "in front of",
    "behind": "behind",
    "left_of": "left of",
    "right_of": "right of",
    "above": "above",
    "below": "below",
}
# Per pair, the first tier that holds either way is the one statement made about the pair.
_TIERS: tuple[tuple[str, ...], ...] = (
    ("on",),
    ("in_front_of", "behind"),
    ("next_to",),
    ("left_of", "right_of"),
    ("above", "below"),
    ("overlaps",),
)


# --------------------------------------------------------------------------- description


@dataclass(frozen=True)
class _Group:
    """The instances that share a label and a first colour."""

    label: str
    color: str | None
    ids: tuple[int, ...]

    def noun(self, n: int) -> str:
        word = self.label if n == 1 else plural(self.label)
        return f"{self.color} {word}" if self.color else word

    def subject(self, k: int) -> str:
        n = len(self.ids)
        if k == n:
            return f"the {self.noun(1)}" if n == 1 else f"the {n} {self.noun(n)}"
        which = "one" if k == 1 else str(k)
        return f"{which} of the {n} {self.noun(n)}"

    def object(self, k: int) -> str:
        n = len(self.ids)
        if k == n:
            return f"the {self.noun(1)}" if n == 1 else f"the {n} {self.noun(n)}"
        if k == 1:
            return f"{_article(self.noun(1))} {self.noun(1)}"
        return f"{k} of the {n} {self.noun(n)}"

    def other(self, k: int) -> str:
        return f"another {self.noun(1)}" if k == 1 else f"{k} other {self.noun(k)}"


def _groups(instances: Sequence[SceneInstance]) -> list[_Group]:
    """Groups ordered by label (count descending, then name), then colour (count, then name)."""
    by_label: dict[str, dict[str | None, list[int]]] = {}
    for inst in instances:
        by_label.setdefault(inst.label, {}).setdefault(inst.color, []).append(inst.id)

    def size(label: str) -> int:
        return sum(len(ids) for ids in by_label[label].values())

    groups = []
    for label in sorted(by_label, key=lambda lab: (-size(lab), lab)):
        colours = sorted(
            by_label[label].items(), key=lambda kv: (kv[0] is None, -len(kv[1]), kv[0] or "")
        )
        groups += [_Group(label, colour, tuple(sorted(ids))) for colour, ids in colours]
    return groups


def _count_phrase(label: str, groups: list[_Group]) -> str:
    n = sum(len(g.ids) for g in groups)
    coloured = [g for g in groups if g.color]
    if len(groups) == 1 and coloured:
        return f"{n} {groups[0].noun(n)}"
    word = label if n == 1 else plural(label)
    if not coloured:
        return f"{n} {word}"
    return f"{n} {word} (" + ", ".join(f"{len(g.ids)} {g.color}" for g in coloured) + ")"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


_Fact = tuple[int, int, int, str]  # subject group, tier, object group, predicate


def _facts(
    instances: Sequence[SceneInstance], groups: list[_Group]
) -> dict[_Fact, tuple[set[int], set[int]]]:
    """One statement per related pair, merged by (subject group, predicate, object group)."""
    group_of = {i: g for g, group in enumerate(groups) for i in group.ids}
    rank = {i: (group_of[i], i) for i in group_of}
    preds: dict[tuple[int, int], set[str]] = {}
    for inst in instances:
        for rel in inst.relations:
            preds.setdefault((inst.id, rel.object), set()).add(rel.predicate)
    facts: dict[_Fact, tuple[set[int], set[int]]] = {}
    for a, b in sorted({tuple(sorted(pair, key=rank.__getitem__)) for pair in preds}):
        forward, backward = preds.get((a, b), set()), preds.get((b, a), set())
        for tier, predicates in enumerate(_TIERS):
            chosen = [(a, p, b) for p in predicates if p in forward]
            chosen += [(b, p, a) for p in predicates if p in backward]
            if group_of[a] == group_of[b]:  # one direction within a group: "in front of" only
                chosen.sort(key=lambda c: predicates.index(c[1]))
            if chosen:
                subj, pred, obj = chosen[0]
                key = (group_of[subj], tier, group_of[obj], pred)
                subjects, objects = facts.setdefault(key, (set(), set()))
                subjects.add(subj)
                objects.add(obj)
                break
    return facts


def _statement(
    subject: _Group, obj: _Group, pred: str, subjects: set[int], objects: set[int]
) -> str:
    phrase = PHRASES[pred]
    if subject is obj and pred in SYMMETRIC:
        k = len(subjects | objects)
        return f"{subject.subject(k)} {_be(k)} {phrase} each other"
    other = obj.other(len(objects)) if subject is obj else obj.object(len(objects))
    return f"{subject.subject(len(subjects))} {_be(len(subjects))} {phrase} {other}"


def describe(instances: Sequence[SceneInstance]) -> str:
    """Short English text of the counts, colours and relations, ready for an LLM prompt."""
    if not instances:
        return EMPTY_DESCRIPTION
    groups = _groups(instances)
    labels = list(dict.fromkeys(g.label for g in groups))
    counts = [_count_phrase(lab, [g for g in groups if g.label == lab]) for lab in labels]
    sentences = [_sentence(_join(counts))]
    facts = _facts(instances, groups)
    by_label: dict[str, list[str]] = {}
    for key in sorted(facts)[:MAX_STATEMENTS]:
        subject_group, _, object_group, pred = key
        subject, obj = groups[subject_group], groups[object_group]
        text = _statement(subject, obj, pred, *facts[key])
        by_label.setdefault(subject.label, []).append(text)
    sentences += [_sentence("; ".join(parts)) for parts in by_label.values()]
    return " ".join(sentences)
