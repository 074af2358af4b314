"""Product filters and the over-fetch schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from search.errors import InvalidInput
from search.filters import ProductFilter, fetch_schedule, parse_attributes


@dataclass
class P:
    sku: str = "s1"
    category: str | None = "Sofa"
    price: float | None = 100.0
    in_stock: bool | None = True
    merchant: str | None = "Shop A"
    color: str | None = "White"
    currency: str | None = "EUR"
    extra: dict[str, Any] | None = field(default_factory=lambda: {"size": "80 cm"})


@pytest.mark.parametrize(
    ("k", "oversample", "total", "expected"),
    [
        (10, 4, 1000, [40, 80, 160, 320, 640, 1000]),
        (10, 4, 40, [40]),
        (10, 4, 25, [25]),  # fewer vectors than asked for: one round, the whole index
        (3, 1, 10, [3, 6, 10]),
        (5, 0, 12, [5, 10, 12]),  # oversample below 1 counts as 1
        (10, 4, 0, []),  # empty index
        (0, 4, 100, []),
    ],
)
def test_fetch_schedule(k: int, oversample: int, total: int, expected: list[int]) -> None:
    assert list(fetch_schedule(k, oversample, total)) == expected


def test_fetch_schedule_always_ends_at_the_whole_index() -> None:
    for total in range(1, 300, 7):
        sizes = list(fetch_schedule(3, 2, total))
        assert sizes[-1] == total
        assert sizes == sorted(set(sizes))


def test_empty_filter_passes_everything() -> None:
    f = ProductFilter()
    assert f.is_empty
    assert f.matches(P()) and f.matches(P(category=None, price=None, in_stock=None, extra=None))


@pytest.mark.parametrize(
    ("f", "product", "passes"),
    [
        (ProductFilter(categories=frozenset({"sofa", "bed"})), P(), True),
        (ProductFilter(categories=frozenset({" SOFA "})), P(), True),
        (ProductFilter(categories=frozenset({"bed"})), P(), False),
        (ProductFilter(categories=frozenset({"sofa"})), P(category=None), False),
        (ProductFilter(min_price=100.0), P(), True),
        (ProductFilter(min_price=100.01), P(), False),
        (ProductFilter(max_price=100.0), P(), True),
        (ProductFilter(max_price=99.0), P(), False),
        (ProductFilter(max_price=500.0), P(price=None), False),
        (ProductFilter(in_stock=True), P(), True),
        (ProductFilter(in_stock=False), P(), False),
        (ProductFilter(in_stock=False), P(in_stock=False), True),
        (ProductFilter(in_stock=True), P(in_stock=None), False),
        (ProductFilter(merchants=frozenset({"shop a"})), P(), True),
        (ProductFilter(merchants=frozenset({"shop b"})), P(), False),
        (ProductFilter(exclude_skus=frozenset({"s1"})), P(), False),
        (ProductFilter(attributes=parse_attributes(["size=80 CM"])), P(), True),
        (ProductFilter(attributes=parse_attributes(["size=90 cm"])), P(), False),
        (ProductFilter(attributes=parse_attributes(["size=90 cm", "size=80 cm"])), P(), True),
        (ProductFilter(attributes=parse_attributes(["color=white"])), P(), True),
        (ProductFilter(attributes=parse_attributes(["size=80 cm", "color=black"])), P(), False),
        (ProductFilter(attributes=parse_attributes(["legs=4"])), P(extra={"legs": 4}), True),
        (ProductFilter(attributes=parse_attributes(["legs=4"])), P(extra={"legs": 4.0}), True),
        (
            ProductFilter(attributes=parse_attributes(["foldable=true"])),
            P(extra={"foldable": True}),
            True,
        ),
        (ProductFilter(attributes=parse_attributes(["tag=b"])), P(extra={"tag": ["a", "B"]}), True),
        (
            ProductFilter(attributes=parse_attributes(["tag=c"])),
            P(extra={"tag": ["a", "b"]}),
            False,
        ),
        (ProductFilter(attributes=parse_attributes(["missing=x"])), P(), False),
        (ProductFilter(attributes=parse_attributes(["size=80 cm"])), P(extra=None), False),
    ],
)
def test_filter_conditions(f: ProductFilter, product: P, passes: bool) -> None:
    assert f.matches(product) is passes


def test_price_range_must_be_ordered() -> None:
    with pytest.raises(InvalidInput):
        ProductFilter(min_price=10.0, max_price=5.0)


def test_restricted_to_intersects_categories() -> None:
    base = ProductFilter(categories=frozenset({"Sofa", "bed"}), in_stock=True)
    assert base.restricted_to(None) == base
    narrowed = base.restricted_to(frozenset({"sofa", "armchair"}))
    assert narrowed.categories == frozenset({"sofa"}) and narrowed.in_stock is True
    assert ProductFilter().restricted_to(frozenset({"Lamp"})).categories == frozenset({"lamp"})
    assert base.restricted_to(frozenset({"lamp"})).matches(P()) is False


def test_parse_attributes_groups_values_by_name() -> None:
    parsed = parse_attributes(["size=80 cm", "color=White", "size=90 cm", "note=a=b"])
    assert parsed == (
        ("color", frozenset({"white"})),
        ("note", frozenset({"a=b"})),
        ("size", frozenset({"80 cm", "90 cm"})),
    )
    for bad in ("no-equals", "=value", " =x"):
        with pytest.raises(InvalidInput):
            parse_attributes([bad])
