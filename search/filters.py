"""Product filters applied to search hits, and the over-fetch schedule that keeps them fed.

Filters run on the catalog rows of the vectors the index returns (post-filtering). A narrow
filter can reject most of the first candidates, so the service asks the index for more,
doubling each round (`fetch_schedule`) until every instance has its `k` products or the
index is exhausted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from search.errors import InvalidInput

# Plain product columns an attribute filter may name besides the keys of `Product.extra`.
COLUMN_ATTRIBUTES = ("color", "currency")


class FilterableProduct(Protocol):
    """What a filter reads from a product (`search.db.Product` fits)."""

    @property
    def sku(self) -> str: ...
    @property
    def category(self) -> str | None: ...
    @property
    def price(self) -> float | None: ...
    @property
    def in_stock(self) -> bool | None: ...
    @property
    def merchant(self) -> str | None: ...
    @property
    def color(self) -> str | None: ...
    @property
    def currency(self) -> str | None: ...
    @property
    def extra(self) -> Mapping[str, Any] | None: ...


def _folded(values: Iterable[str]) -> frozenset[str]:
    return frozenset(v.strip().casefold() for v in values if v.strip())


@dataclass(frozen=True)
class ProductFilter:
    """Which products may be returned. Every field set must match (AND).

    `categories` and `merchants`: any of the values (OR), compared case-insensitively.
    `min_price`/`max_price`: inclusive; a product without a price fails a price bound.
    `in_stock`: True keeps products in stock, False those out of stock; unknown stock
    fails either. `attributes`: (name, allowed values) pairs on `Product.extra` keys (or
    the columns in `COLUMN_ATTRIBUTES`), compared as case-insensitive text; a list-valued
    attribute matches when any of its items does. `exclude_skus`: never returned.
    """

    categories: frozenset[str] | None = None
    min_price: float | None = None
    max_price: float | None = None
    in_stock: bool | None = None
    merchants: frozenset[str] | None = None
    attributes: tuple[tuple[str, frozenset[str]], ...] = ()
    exclude_skus: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.categories is not None:
            object.__setattr__(self, "categories", _folded(self.categories))
        if self.merchants is not None:
            object.__setattr__(self, "merchants", _folded(self.merchants))
        if (
            self.min_price is not None
            and self.max_price is not None
            and self.min_price > self.max_price
        ):
            raise InvalidInput(f"min_price {self.min_price} is above max_price {self.max_price}")

    @property
    def is_empty(self) -> bool:
        """True when every product passes."""
        return self == ProductFilter()

    def restricted_to(self, categories: frozenset[str] | None) -> ProductFilter:
        """This filter AND "category in `categories`" (None leaves it unchanged)."""
        if categories is None:
            return self
        allowed = _folded(categories)
        if self.categories is not None:
            allowed = allowed & self.categories
        return replace(self, categories=allowed)

    @property
    def matches_nothing(self) -> bool:
        """Whether no product can pass: no category left (a detected lamp restricted to
        lamps, under a caller's filter for chairs). An empty price range is refused when the
        filter is made."""
        return self.categories is not None and not self.categories

    def matches(self, product: FilterableProduct) -> bool:
        """Whether `product` passes every condition."""
        return (
            product.sku not in self.exclude_skus
            and _in(self.categories, product.category)
            and _in(self.merchants, product.merchant)
            and self._price_ok(product.price)
            and (self.in_stock is None or product.in_stock is self.in_stock)
            and all(_attribute_ok(product, name, vals) for name, vals in self.attributes)
        )

    def _price_ok(self, price: float | None) -> bool:
        if self.min_price is None and self.max_price is None:
            return True
        if price is None:
            return False
        low_ok = self.min_price is None or price >= self.min_price
        return low_ok and (self.max_price is None or price <= self.max_price)


def _in(allowed: frozenset[str] | None, value: str | None) -> bool:
    if allowed is None:
        return True
    return value is not None and value.strip().casefold() in allowed


def _attribute_ok(product: FilterableProduct, name: str, allowed: frozenset[str]) -> bool:
    if name in COLUMN_ATTRIBUTES:
        value: Any = getattr(product, name)
    else:
        value = (product.extra or {}).get(name)
    values = value if isinstance(value, list | tuple) else [value]
    return any(v is not None and _text(v) in allowed for v in values)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip().casefold()


def parse_attributes(pairs: Iterable[str]) -> tuple[tuple[str, frozenset[str]], ...]:
    """`["color=white", "color=black", "size=80 cm"]` -> ((name, {values}), ...) sorted by name.

    Several values for one name are alternatives (OR); different names must all match.
    Raises `InvalidInput` for an item without `=` or with an empty name.
    """
    grouped: dict[str, set[str]] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InvalidInput(f"attribute filter {pair!r} is not of the form name=value")
        grouped.setdefault(name, set()).add(value.strip().casefold())
    return tuple((name, frozenset(vals)) for name, vals in sorted(grouped.items()))


def fetch_schedule(k: int, oversample: int, total: int) -> Iterator[int]:
    """How many vectors to ask the index for, round after round.

    Starts at `k * oversample` (at least `k`), doubles each round and stops after the round
    that covers the whole index (`total` vectors). Nothing for an empty index or k < 1.
    """
    if total <= 0 or k <= 0:
        return
    fetch = max(k * max(oversample, 1), k)
    while True:
        fetch = min(fetch, total)
        yield fetch
        if fetch >= total:
            return
        fetch *= 2
