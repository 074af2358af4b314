"""The eval metrics on small hand-made cases whose answers are worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from search.errors import FeedError
from search.evaluation.metrics import (
    PhotoOutcome,
    RankedInstance,
    budget_skus,
    evaluate,
    top_k_skus,
)
from search.evaluation.runner import read_queries

GROUPS = ["furniture", "all", "sofa", "lamp", "storage"]


def inst(label: str, *pairs: tuple[str, float]) -> RankedInstance:
    return RankedInstance(label, tuple(pairs))


# Photo 1 expects a sofa (S) and a lamp (L). Instance A ranks S first; instance B finds L 3rd.
PHOTO1 = PhotoOutcome(
    {"S": "sofa", "L": "lamp"},
    (
        inst("couch", ("S", 0.9), ("x1", 0.8), ("x2", 0.7)),
        inst("chair", ("x3", 0.6), ("x4", 0.5), ("L", 0.4)),
    ),
)
# Photo 2 expects storage (B) that never comes back, and a sofa (S2) at rank 2.
PHOTO2 = PhotoOutcome(
    {"B": "storage", "S2": "sofa"},
    (inst("couch", ("y1", 0.95), ("S2", 0.94)),),
)


def test_top_k_and_budget() -> None:
    assert top_k_skus(PHOTO1, 1) == {"S", "x3"}
    assert top_k_skus(PHOTO1, 3) == {"S", "x1", "x2", "x3", "x4", "L"}
    # merged by score: S .9, x1 .8, x2 .7, x3 .6 -> budget 4 stops before L (.4)
    assert budget_skus(PHOTO1, 4) == {"S", "x1", "x2", "x3"}
    assert budget_skus(PHOTO1, 6) == {"S", "x1", "x2", "x3", "x4", "L"}


def test_budget_counts_a_product_once_across_instances() -> None:
    photo = PhotoOutcome({"A": "sofa"}, (inst("a", ("Z", 0.9)), inst("b", ("Z", 0.8), ("A", 0.7))))
    assert budget_skus(photo, 2) == {"Z", "A"}


def test_evaluate_recall_at_k_per_group() -> None:
    m = evaluate([PHOTO1, PHOTO2], groups=GROUPS, ks=(1, 2, 3), budgets=(2, 4))
    assert m.photos == 2
    assert m.instances_per_photo == 1.5
    # top-1 products: S (expected), x3 (no), y1 (no) -> 1/3
    assert m.top1_in_photo == pytest.approx(1 / 3)
    sofa = m.groups["sofa"]
    assert sofa.items == 2
    assert sofa.recall_at == {1: 0.5, 2: 1.0, 3: 1.0}
    lamp = m.groups["lamp"]
    assert lamp.recall_at == {1: 0.0, 2: 0.0, 3: 1.0}
    assert m.groups["storage"].recall_at[3] == 0.0
    furniture = m.groups["furniture"]  # S, L, S2 (storage is not furniture)
    assert furniture.items == 3
    assert furniture.recall_at[1] == pytest.approx(1 / 3)
    assert furniture.recall_at[3] == 1.0
    assert m.groups["all"].items == 4
    assert m.groups["all"].recall_at[3] == pytest.approx(3 / 4)
    # budget 2: photo 1 {S, x1}, photo 2 {y1, S2} -> S and S2 found, L not
    assert furniture.recall_budget[2] == pytest.approx(2 / 3)
    assert m.products_per_photo[1] == pytest.approx((2 + 1) / 2)


def test_empty_photo_and_no_items() -> None:
    m = evaluate([PhotoOutcome({}, ())], groups=GROUPS, ks=(1,), budgets=(20,))
    assert m.instances_per_photo == 0 and m.top1_in_photo == 0.0
    assert m.groups["all"].items == 0 and m.groups["all"].recall_at[1] == 0.0


def test_read_queries_strings_objects_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    rows = [
        {"image": "rooms/a.jpg", "expected": ["1", {"sku": "2", "category": "sofa"}]},
        {"image": "b.jpg", "expected": []},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    queries = read_queries(path)
    assert [q.image for q in queries] == [tmp_path / "rooms/a.jpg", tmp_path / "b.jpg"]
    assert queries[0].expected == {"1": "unknown", "2": "sofa"}
    path.write_text('{"image": "a.jpg"}\n')
    with pytest.raises(FeedError, match="line 1"):
        read_queries(path)
    with pytest.raises(FeedError):
        read_queries(tmp_path / "missing.jsonl")
