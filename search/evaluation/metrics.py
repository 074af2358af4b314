"""Item recall of the products that appear in a photo, per method and per catalog category.

An expected product counts as *found at K* when it is among the top K products of any
instance of its photo, and as *found within budget B* when it is among the first B distinct
products of the photo once every instance's list is merged by score (fair between methods
that return different numbers of instances).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

FURNITURE = frozenset({"sofa", "armchair", "chair_stool_bench", "table", "bed", "lamp", "plant"})
KS: tuple[int, ...] = (1, 5, 10)
BUDGETS: tuple[int, ...] = (20, 50)


@dataclass(frozen=True)
class RankedInstance:
    """One query instance: its label and its products, best first, as (sku, score)."""

    label: str
    products: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class PhotoOutcome:
    """What one method returned for one photo, with the photo's expected products."""

    expected: dict[str, str]  # sku -> catalog category
    instances: tuple[RankedInstance, ...]


@dataclass
class GroupMetrics:
    """Metrics over one group of expected items (a category, 'furniture', 'all')."""

    items: int = 0
    recall_at: dict[int, float] = field(default_factory=dict)
    recall_budget: dict[int, float] = field(default_factory=dict)


@dataclass
class MethodMetrics:
    photos: int
    instances_per_photo: float
    top1_in_photo: float  # share of instances whose top-1 product is expected in the photo
    products_per_photo: dict[int, float]  # K -> mean distinct products returned per photo
    groups: dict[str, GroupMetrics]


def top_k_skus(outcome: PhotoOutcome, k: int) -> set[str]:
    """Distinct products among the top `k` of any instance."""
    return {sku for inst in outcome.instances for sku, _ in inst.products[:k]}


def budget_skus(outcome: PhotoOutcome, budget: int) -> set[str]:
    """The first `budget` distinct products once all instances' lists are merged by score."""
    merged = sorted(
        ((score, sku) for inst in outcome.instances for sku, score in inst.products),
        key=lambda pair: -pair[0],
    )
    chosen: list[str] = []
    seen: set[str] = set()
    for _, sku in merged:
        if sku not in seen:
            seen.add(sku)
            chosen.append(sku)
            if len(chosen) == budget:
                break
    return seen


def group_of(category: str, groups: Iterable[str]) -> list[str]:
    """The report groups an expected item of `category` belongs to."""
    out = ["all", category]
    if category in FURNITURE:
        out.append("furniture")
    return [g for g in out if g in groups]


def evaluate(
    outcomes: Sequence[PhotoOutcome],
    *,
    groups: Sequence[str],
    ks: Sequence[int] = KS,
    budgets: Sequence[int] = BUDGETS,
) -> MethodMetrics:
    """Aggregate one method's outcomes over all photos."""
    hits_k: dict[str, dict[int, int]] = {g: dict.fromkeys(ks, 0) for g in groups}
    hits_b: dict[str, dict[int, int]] = {g: dict.fromkeys(budgets, 0) for g in groups}
    items = dict.fromkeys(groups, 0)
    for outcome in outcomes:
        found_k = {k: top_k_skus(outcome, k) for k in ks}
        found_b = {b: budget_skus(outcome, b) for b in budgets}
        for sku, category in outcome.expected.items():
            for g in group_of(category, groups):
                items[g] += 1
                for k in ks:
                    hits_k[g][k] += sku in found_k[k]
                for b in budgets:
                    hits_b[g][b] += sku in found_b[b]
    return MethodMetrics(
        photos=len(outcomes),
        instances_per_photo=_mean(len(o.instances) for o in outcomes),
        top1_in_photo=_top1_share(outcomes),
        products_per_photo={k: _mean(len(top_k_skus(o, k)) for o in outcomes) for k in ks},
        groups={
            g: GroupMetrics(
                items=items[g],
                recall_at={k: _ratio(hits_k[g][k], items[g]) for k in ks},
                recall_budget={b: _ratio(hits_b[g][b], items[g]) for b in budgets},
            )
            for g in groups
        },
    )


def _top1_share(outcomes: Sequence[PhotoOutcome]) -> float:
    hits = total = 0
    for outcome in outcomes:
        for inst in outcome.instances:
            if inst.products:
                total += 1
                hits += inst.products[0][0] in outcome.expected
    return _ratio(hits, total)


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else 0.0


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0
