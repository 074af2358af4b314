"""Merchant admin queries: the catalog as roomlens sees it, the index and the indexer's runs.

Keyword-only functions over one `Session`; `merchant=None` means every merchant (an admin's
view), a name restricts to that merchant's products. Who may ask for what is decided by the
caller with `merchant.keys.KeyScope`. Near-duplicates are in `merchant.duplicates`, the search
log in `merchant.querylog`. None of these functions commits: the caller owns the transaction.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, selectinload

from merchant.errors import Forbidden
from search import catalog
from search.db import IMAGE_STATUSES, IndexBuild, IndexRun, InstanceRow, Product, ProductImage
from search.errors import NotFound, ProductNotFound
from search.index import IndexMeta

NO_INSTANCE_REASON = "no object was found in the image"
PROBLEM_STATUSES = ("failed", "no_instance")
S = TypeVar("S", bound=Select[*tuple[Any, ...]])


# --- catalog ---------------------------------------------------------------------------------


@dataclass
class CategoryStats:
    """Products, images (by status), instances and vectors of one merchant's category."""

    merchant: str | None
    category: str | None
    products: int = 0
    images: dict[str, int] = field(default_factory=lambda: dict.fromkeys(IMAGE_STATUSES, 0))
    instances: int = 0
    vectors: int = 0

    def add(self, other: CategoryStats) -> None:
        self.products += other.products
        self.instances += other.instances
        self.vectors += other.vectors
        for status, count in other.images.items():
            self.images[status] = self.images.get(status, 0) + count


@dataclass(frozen=True)
class CatalogStats:
    rows: list[CategoryStats]  # by merchant, then category
    totals: CategoryStats


def _scoped(stmt: S, merchant: str | None) -> S:
    return stmt if merchant is None else stmt.where(Product.merchant == merchant)


def catalog_stats(*, session: Session, merchant: str | None = None) -> CatalogStats:
    """Counts per (merchant, category), and their totals."""
    rows: dict[tuple[str | None, str | None], CategoryStats] = {}

    def row(m: str | None, c: str | None) -> CategoryStats:
        return rows.setdefault((m, c), CategoryStats(m, c))

    keys = (Product.merchant, Product.category)
    products = select(*keys, func.count(Product.id)).group_by(*keys)
    for m, c, n in session.execute(_scoped(products, merchant)):
        row(m, c).products = int(n)
    images = (
        select(*keys, ProductImage.status, func.count(ProductImage.id))
        .select_from(ProductImage)
        .join(Product, ProductImage.product_id == Product.id)
        .group_by(*keys, ProductImage.status)
    )
    for m, c, status, n in session.execute(_scoped(images, merchant)):
        row(m, c).images[status] = int(n)
    instances = (
        select(*keys, func.count(InstanceRow.id), func.count(InstanceRow.vector_id))
        .select_from(InstanceRow)
        .join(ProductImage, InstanceRow.image_id == ProductImage.id)
        .join(Product, ProductImage.product_id == Product.id)
        .where(catalog.active_instances())
        .group_by(*keys)
    )
    for m, c, n, v in session.execute(_scoped(instances, merchant)):
        row(m, c).instances, row(m, c).vectors = int(n), int(v)
    ordered = sorted(rows.values(), key=lambda r: (r.merchant or "", r.category or ""))
    totals = CategoryStats(merchant, None)
    for stats in ordered:
        totals.add(stats)
    return CatalogStats(ordered, totals)


@dataclass(frozen=True)
class ProblemImage:
    """A product whose image failed or showed no object, and why."""

    sku: str
    title: str
    merchant: str | None
    category: str | None
    image_id: int
    image: str
    status: str
    reason: str
    updated_at: datetime


def problem_products(
    *,
    session: Session,
    merchant: str | None = None,
    statuses: Sequence[str] = PROBLEM_STATUSES,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[ProblemImage], int]:
    """Images with one of `statuses` (failed / no_instance), by sku, and how many in all."""
    where = ProductImage.status.in_(list(statuses))
    base = select(ProductImage, Product).join(Product, ProductImage.product_id == Product.id)
    count = select(func.count(ProductImage.id)).join(Product, ProductImage.product_id == Product.id)
    total = session.scalar(_scoped(count.where(where), merchant)) or 0
    stmt = _scoped(base.where(where), merchant).order_by(Product.sku, ProductImage.position)
    items = [
        ProblemImage(
            sku=product.sku,
            title=product.title,
            merchant=product.merchant,
            category=product.category,
            image_id=image.id,
            image=image.source,
            status=image.status,
            reason=image.error or (NO_INSTANCE_REASON if image.status == "no_instance" else ""),
            updated_at=image.updated_at,
        )
        for image, product in session.execute(stmt.limit(limit).offset(offset))
    ]
    return items, int(total)


def product_detail(*, session: Session, sku: str) -> Product:
    """One product with its images and their instances (boxes, COCO RLE masks) loaded.

    Raises `ProductNotFound`. Check the merchant (`KeyScope.check_merchant`) before showing.
    """
    stmt = (
        select(Product)
        .where(Product.sku == sku)
        .options(
            selectinload(Product.images).selectinload(
                ProductImage.instances.and_(catalog.active_instances())
            )
        )
    )
    product = session.scalars(stmt).one_or_none()
    if product is None:
        raise ProductNotFound(f"no product with sku {sku!r}")
    return product


def product_merchant(*, session: Session, sku: str) -> str | None:
    """The merchant of a product; `ProductNotFound` when there is no such product."""
    found = session.execute(select(Product.merchant).where(Product.sku == sku)).first()
    if found is None:
        raise ProductNotFound(f"no product with sku {sku!r}")
    return found[0]


# --- product changes -------------------------------------------------------------------------


@dataclass(frozen=True)
class UpsertOutcome:
    created: bool
    changed: bool
    image_queued: bool  # the image is "pending": the next index run (or reindex now) takes it
    image_id: int


def upsert_product(*, session: Session, item: catalog.FeedProduct) -> UpsertOutcome:
    """Insert or update one product (as a feed line would); a new image waits as "pending".

    Field changes are live at once (search reads products from the database); a new image
    is segmented and embedded by the next index run.
    """
    counts = catalog.upsert_products(session=session, items=[item])
    product = catalog.get_product(session=session, sku=item.sku)
    image = product.primary_image
    assert image is not None  # upsert_products always gives a product its primary image
    return UpsertOutcome(
        created=counts.inserted == 1,
        changed=counts.inserted + counts.updated == 1,
        image_queued=image.status == "pending",
        image_id=image.id,
    )


def delete_product(*, session: Session, sku: str) -> list[int]:
    """Delete one product, its images and instances; the vector ids it held (to drop).

    Raises `ProductNotFound`. The live index keeps these vectors until the next published
    version; search skips vector ids that have no row.
    """
    product_merchant(session=session, sku=sku)
    return catalog.remove_products(session=session, skus=[sku])


def check_image_ref(ref: str, roots: Sequence[Path]) -> None:
    """Raise `Forbidden` unless `ref` is an http(s) URL or a file under one of `roots`.

    For keys that must not make the server read (and serve back) arbitrary files.
    """
    if ref.startswith(("http://", "https://")):
        return
    path = Path(os.path.realpath(ref))
    for root in roots:
        if path.is_relative_to(Path(os.path.realpath(root))):
            return
    raise Forbidden("a product image must be an http(s) URL or a file in an allowed folder")


# --- index and runs --------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexStatus:
    """The live index (from its sidecar) and what the database knows of it."""

    live: IndexMeta | None  # None when no index is published or it cannot be loaded
    build: IndexBuild | None  # the build that produced the live version
    latest_build: IndexBuild | None  # the most recent build, whatever its status
    vectors: int  # vectors stored for the scope's products (the next version's content)
    pending_images: int  # images of the scope waiting for the next run


def index_status(
    *, session: Session, live: IndexMeta | None, merchant: str | None = None
) -> IndexStatus:
    """The live index version and the scope's vectors and pending images in the database."""
    build = catalog.get_build(session=session, version=live.version) if live else None
    latest = session.scalars(
        select(IndexBuild).order_by(IndexBuild.started_at.desc(), IndexBuild.id.desc()).limit(1)
    ).first()
    vectors = select(func.count(InstanceRow.vector_id)).join(
        ProductImage, InstanceRow.image_id == ProductImage.id
    )
    vectors = vectors.join(Product, ProductImage.product_id == Product.id).where(
        catalog.active_instances()
    )
    pending = select(func.count(ProductImage.id)).join(
        Product, ProductImage.product_id == Product.id
    )
    pending = pending.where(ProductImage.status == "pending")
    return IndexStatus(
        live=live,
        build=build,
        latest_build=latest,
        vectors=int(session.scalar(_scoped(vectors, merchant)) or 0),
        pending_images=int(session.scalar(_scoped(pending, merchant)) or 0),
    )


def list_runs(*, session: Session, limit: int = 50, offset: int = 0) -> tuple[list[IndexRun], int]:
    """Indexer runs, newest first, and how many there are in all."""
    total = session.scalar(select(func.count(IndexRun.id))) or 0
    stmt = select(IndexRun).order_by(IndexRun.started_at.desc(), IndexRun.id.desc())
    return list(session.scalars(stmt.limit(limit).offset(offset))), int(total)


def get_run(*, session: Session, run_id: int) -> IndexRun:
    """One indexer run; `NotFound` when there is none with this id."""
    run = session.get(IndexRun, run_id)
    if run is None:
        raise NotFound(f"no index run {run_id}")
    return run


def runs_since(*, session: Session, started: datetime) -> list[IndexRun]:
    """Runs that started at or after `started`, oldest first (to find a job's run)."""
    stmt = (
        select(IndexRun)
        .where(IndexRun.started_at >= started)
        .order_by(IndexRun.started_at, IndexRun.id)
    )
    return list(session.scalars(stmt))
