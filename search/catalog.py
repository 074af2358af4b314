"""Catalog queries for the indexer and the API: keyword-only functions over one `Session`.

None of these functions commits: the caller owns the transaction. Lists of keys are sent
in chunks, so a catalog of any size stays under the databases' bound-parameter limits
(`products_for_vector_ids` excepted: one query, for the few thousand ids of a search).

The incremental indexer's loop, in short::

    upsert_products(session=s, items=feed.items)           # new/changed images -> "pending"
    remove_products(session=s, skus=skus_not_in(session=s, skus=feed.skus))
    for state in scan_images(session=s, embedder=name):    # every image, in pages
        # unchanged (same stamp or content hash, instances current): update_image_source
        ids = next_vector_ids(session=s, n=len(found))
        replace_instances(session=s, image_id=..., instances=[...], retire_run=run_id)
        set_image_result(session=s, image_id=..., status="ok", content_hash=...)
    # build the next index version from iter_vectors(...), publish it, then
    purge_retired(session=s, before_run=run_id)

Instances replaced by a run are *retired* (`InstanceRow.retired_in_run`), not deleted: they
are left out of new index versions (`iter_vectors`, `vector_ids`, `catalog_counts`) but still
resolve through `products_for_vector_ids`, so the version a server still serves keeps
answering until a later run purges them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import ColumnElement, CursorResult, delete, func, or_, select, update
from sqlalchemy.orm import Session, joinedload, selectinload

from search.db import (
    IMAGE_STATUSES,
    VECTOR_ID_COUNTER,
    Counter,
    IndexBuild,
    InstanceRow,
    Product,
    ProductImage,
    utcnow,
)
from search.errors import InvalidInput, NotFound, ProductNotFound
from search.types import Box

__all__ = [
    "CatalogCounts",
    "FeedProduct",
    "IndexBuild",
    "InstanceRow",
    "NewInstance",
    "Product",
    "ProductImage",
    "UpsertCounts",
    "catalog_counts",
    "fail_running_builds",
    "finish_build",
    "get_build",
    "get_product",
    "ImageState",
    "get_products",
    "image_vector_ids",
    "images_to_process",
    "purge_retired",
    "scan_images",
    "skus_not_in",
    "update_image_source",
    "vector_stats",
    "latest_committed_build",
    "next_vector_ids",
    "products_for_vector_ids",
    "product_vector_rows",
    "hit_rows",
    "HitProduct",
    "HitRows",
    "active_instances",
    "chunks",
    "remove_products",
    "remove_products_not_in",
    "replace_instances",
    "reset_images",
    "set_image_result",
    "start_build",
    "upsert_products",
    "vector_ids",
]

CHUNK = 2000  # keys per IN (...) list, under every database's bound-parameter limit
PRIMARY = 0  # position of the feed's image
PRODUCT_FIELDS = (
    "title",
    "category",
    "price",
    "currency",
    "color",
    "description",
    "merchant",
    "in_stock",
    "url",
)

T = TypeVar("T")


class FeedProduct(Protocol):
    """What `upsert_products` reads from a feed item (`indexer.sources.FeedItem` fits)."""

    @property
    def sku(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def category(self) -> str | None: ...
    @property
    def price(self) -> float | None: ...
    @property
    def currency(self) -> str | None: ...
    @property
    def color(self) -> str | None: ...
    @property
    def description(self) -> str | None: ...
    @property
    def merchant(self) -> str | None: ...
    @property
    def in_stock(self) -> bool | None: ...
    @property
    def url(self) -> str | None: ...
    @property
    def extra(self) -> Mapping[str, Any]: ...
    @property
    def image(self) -> str: ...
    @property
    def image_ref(self) -> str: ...


@dataclass
class UpsertCounts:
    """What `upsert_products` did. `images_changed`: images (re)queued as "pending"."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    images_changed: int = 0

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.unchanged


@dataclass(frozen=True)
class NewInstance:
    """An instance to store for a catalog image (see `replace_instances`)."""

    label: str
    score: float
    box: Box
    mask_rle: Mapping[str, Any]  # COCO RLE: {"size": [h, w], "counts": str}
    mask_area: int
    embedder: str
    vector_id: int | None = None
    vector: bytes | None = None  # float32 embedding


@dataclass(frozen=True)
class CatalogCounts:
    products: int
    images: dict[str, int] = field(default_factory=dict)  # by status
    instances: int = 0  # active (not retired) instances
    vectors: int = 0  # active instances with a vector id
    retired: int = 0  # instances replaced by a run, waiting to be purged


@dataclass(frozen=True)
class ImageState:
    """What the indexer needs to decide whether an image changed (see `scan_images`)."""

    image_id: int
    sku: str
    resolved: str
    status: str
    content_hash: str | None
    source_stamp: str | None
    needs_processing: bool  # pending, failed, or instances missing/stale for the embedder


def chunks(items: Sequence[T], size: int | None = None) -> Iterator[Sequence[T]]:
    """`items` in slices of `size` (default `CHUNK`), one IN (...) list each."""
    size = size or CHUNK
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _unique(values: Iterable[T]) -> list[T]:
    """`values` without repeats, first occurrence kept, order kept."""
    return list(dict.fromkeys(values))


# --- products --------------------------------------------------------------------------------


def upsert_products(*, session: Session, items: Iterable[FeedProduct]) -> UpsertCounts:
    """Insert new products and update changed ones, matched by sku (first item wins).

    A product whose primary image now points elsewhere gets that image reset to "pending",
    so the indexer processes it again; its old instances stay until `replace_instances`.
    """
    counts = UpsertCounts()
    for chunk in chunks(_first_per_sku(items)):
        existing = _products_by_sku(session, [item.sku for item in chunk])
        for item in chunk:
            _upsert_one(session, existing.get(item.sku), item, counts)
        session.flush()
    return counts


def _first_per_sku(items: Iterable[FeedProduct]) -> list[FeedProduct]:
    firsts: dict[str, FeedProduct] = {}
    for item in items:
        firsts.setdefault(item.sku, item)
    return list(firsts.values())


def _upsert_one(
    session: Session, product: Product | None, item: FeedProduct, counts: UpsertCounts
) -> None:
    if product is None:
        session.add(_new_product(item))
        counts.inserted += 1
        counts.images_changed += 1
        return
    fields_changed = _apply_fields(product, item)
    image_changed, requeued = _apply_primary_image(product, item)
    if fields_changed or image_changed:
        counts.updated += 1
    else:
        counts.unchanged += 1
    counts.images_changed += requeued


def _products_by_sku(session: Session, skus: Sequence[str]) -> dict[str, Product]:
    stmt = select(Product).where(Product.sku.in_(skus)).options(selectinload(Product.images))
    return {product.sku: product for product in session.scalars(stmt)}


def _new_product(item: FeedProduct) -> Product:
    product = Product(sku=item.sku, extra=dict(item.extra))
    for name in PRODUCT_FIELDS:
        setattr(product, name, getattr(item, name))
    product.images = [_new_image(item)]
    return product


def _new_image(item: FeedProduct) -> ProductImage:
    return ProductImage(
        position=PRIMARY, source=item.image, resolved=item.image_ref, status="pending"
    )


def _apply_fields(product: Product, item: FeedProduct) -> bool:
    """Copy the feed's fields onto `product`; True if any value changed."""
    changed = False
    for name in PRODUCT_FIELDS:
        value = getattr(item, name)
        if getattr(product, name) != value:
            setattr(product, name, value)
            changed = True
    extra = dict(item.extra)
    if product.extra != extra:
        product.extra = extra
        changed = True
    return changed


def _apply_primary_image(product: Product, item: FeedProduct) -> tuple[bool, bool]:
    """Point the primary image at the feed's reference: (changed, queued again as "pending").

    The same file spelled another way (`resolved` unchanged) only updates `source`.
    """
    image = next((im for im in product.images if im.position == PRIMARY), None)
    if image is None:
        product.images.append(_new_image(item))
        return True, True
    if image.resolved == item.image_ref:
        changed = image.source != item.image
        image.source = item.image
        return changed, False
    image.source, image.resolved = item.image, item.image_ref
    image.status, image.error = "pending", None
    return True, True


def get_products(*, session: Session, skus: Iterable[str]) -> list[Product]:
    """The products with these skus, in the order asked, unknown skus left out (images loaded)."""
    wanted = _unique(skus)
    found: dict[str, Product] = {}
    for chunk in chunks(wanted):
        found.update(_products_by_sku(session, chunk))
    return [found[sku] for sku in wanted if sku in found]


def get_product(*, session: Session, sku: str) -> Product:
    """The product with this sku (images loaded); raises `ProductNotFound`."""
    stmt = select(Product).where(Product.sku == sku).options(selectinload(Product.images))
    product = session.scalars(stmt).one_or_none()
    if product is None:
        raise ProductNotFound(f"no product with sku {sku!r}")
    return product


def remove_products(*, session: Session, skus: Iterable[str]) -> list[int]:
    """Delete these products with their images and instances; returns the vector ids freed."""
    ids: list[int] = []
    for chunk in chunks(_unique(skus)):
        ids.extend(session.scalars(select(Product.id).where(Product.sku.in_(chunk))))
    return _delete_products(session, ids)


def remove_products_not_in(
    *, session: Session, skus: Iterable[str], allow_empty: bool = False
) -> list[int]:
    """Delete every product whose sku is not in `skus`; returns the vector ids freed.

    An empty `skus` would empty the catalog: that raises `InvalidInput` unless `allow_empty`.
    """
    keep = set(skus)
    if not keep and not allow_empty:
        raise InvalidInput("refusing to remove every product: pass allow_empty=True to do so")
    rows = session.execute(select(Product.id, Product.sku)).all()
    return _delete_products(session, [pid for pid, sku in rows if sku not in keep])


def skus_not_in(*, session: Session, skus: Iterable[str]) -> list[str]:
    """The skus of stored products that are not in `skus`, sorted."""
    keep = set(skus)
    return sorted(sku for sku in session.scalars(select(Product.sku)) if sku not in keep)


def _delete_products(session: Session, product_ids: Sequence[int]) -> list[int]:
    """Delete explicitly child-first (not relying on the FK cascade being enabled)."""
    freed: list[int] = []
    for chunk in chunks(product_ids):
        image_ids = select(ProductImage.id).where(ProductImage.product_id.in_(chunk))
        freed.extend(_vector_ids_where(session, InstanceRow.image_id.in_(image_ids)))
        session.execute(delete(InstanceRow).where(InstanceRow.image_id.in_(image_ids)))
        session.execute(delete(ProductImage).where(ProductImage.product_id.in_(chunk)))
        session.execute(delete(Product).where(Product.id.in_(chunk)))
    return sorted(freed)


# --- images and instances --------------------------------------------------------------------


def images_to_process(
    *,
    session: Session,
    embedder: str | None = None,
    retry_failed: bool = False,
    after_id: int = 0,
    limit: int | None = None,
) -> list[ProductImage]:
    """Images the indexer must (re)process, by id, with their product loaded.

    "pending" ones always; "failed" ones if `retry_failed`; with `embedder`, also "ok" ones
    whose instances came from another embedder or lack a vector id. Page with `after_id`
    (the last id seen) and `limit`.
    """
    stmt = (
        select(ProductImage)
        .where(_needs_processing(embedder, retry_failed), ProductImage.id > after_id)
        .options(joinedload(ProductImage.product))
        .order_by(ProductImage.id)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def active_instances() -> ColumnElement[bool]:
    """Instances that are in the catalog now: not retired by an index run (the index version
    still being served may hold those; `InstanceRow.retired_in_run`, migration 0003)."""
    return InstanceRow.retired_in_run.is_(None)


def _needs_processing(embedder: str | None, retry_failed: bool) -> ColumnElement[bool]:
    """Pending images; failed ones if `retry_failed`; with `embedder`, "ok" images whose
    active instances came from another embedder, lack a vector id, or are missing."""
    clauses: list[ColumnElement[bool]] = [ProductImage.status == "pending"]
    if retry_failed:
        clauses.append(ProductImage.status == "failed")
    if embedder is not None:
        mine = (InstanceRow.image_id == ProductImage.id) & active_instances()
        stale = select(InstanceRow.id).where(
            mine, or_(InstanceRow.embedder != embedder, InstanceRow.vector_id.is_(None))
        )
        current = select(InstanceRow.id).where(mine, InstanceRow.embedder == embedder)
        clauses.append((ProductImage.status == "ok") & (stale.exists() | ~current.exists()))
    return or_(*clauses)


def scan_images(
    *, session: Session, embedder: str, after_id: int = 0, limit: int = CHUNK
) -> list[ImageState]:
    """One page of every catalog image, by id, with what decides whether to process it.

    `needs_processing` is true for "pending" and "failed" images and for "ok" ones whose
    instances are missing or stale for `embedder`; the others are processed only when their
    content changed. Page with `after_id` (the last id seen).
    """
    stmt = (
        select(
            ProductImage.id,
            Product.sku,
            ProductImage.resolved,
            ProductImage.status,
            ProductImage.content_hash,
            ProductImage.source_stamp,
            _needs_processing(embedder, retry_failed=True).label("needs"),
        )
        .join(Product, ProductImage.product_id == Product.id)
        .where(ProductImage.id > after_id)
        .order_by(ProductImage.id)
        .limit(limit)
    )
    return [
        ImageState(int(r[0]), r[1], r[2], r[3], r[4], r[5], bool(r[6]))
        for r in session.execute(stmt)
    ]


def reset_images(*, session: Session) -> int:
    """Queue every image again ("pending"), e.g. for a full re-index; returns how many."""
    result = session.execute(update(ProductImage).values(status="pending", error=None))
    return cast(CursorResult[Any], result).rowcount


def set_image_result(
    *,
    session: Session,
    image_id: int,
    status: str,
    content_hash: str | None = None,
    width: int | None = None,
    height: int | None = None,
    error: str | None = None,
    source_stamp: str | None = None,
) -> ProductImage:
    """Record the outcome of reading one image. Given hash/stamp/size overwrite; `error` always
    does."""
    if status not in IMAGE_STATUSES:
        raise InvalidInput(f"image status must be one of {IMAGE_STATUSES}, not {status!r}")
    image = _image(session, image_id)
    image.status, image.error = status, error
    if content_hash is not None:
        image.content_hash = content_hash
    if source_stamp is not None:
        image.source_stamp = source_stamp
    if width is not None and height is not None:
        image.width, image.height = width, height
    session.flush()
    return image


def update_image_source(
    *, session: Session, image_id: int, source_stamp: str | None, content_hash: str | None
) -> None:
    """Record the stamp (and hash, when known) of an image found unchanged."""
    values: dict[str, Any] = {"source_stamp": source_stamp}
    if content_hash is not None:
        values["content_hash"] = content_hash
    session.execute(update(ProductImage).where(ProductImage.id == image_id).values(**values))


def _image(session: Session, image_id: int) -> ProductImage:
    image = session.get(ProductImage, image_id)
    if image is None:
        raise NotFound(f"no catalog image {image_id}")
    return image


def image_vector_ids(*, session: Session, image_ids: Iterable[int]) -> list[int]:
    """The vector ids the active instances of these images hold."""
    freed: list[int] = []
    for chunk in chunks(_unique(image_ids)):
        freed.extend(
            _vector_ids_where(session, InstanceRow.image_id.in_(chunk) & active_instances())
        )
    return sorted(freed)


def _vector_ids_where(session: Session, condition: ColumnElement[bool]) -> list[int]:
    stmt = select(InstanceRow.vector_id).where(condition, InstanceRow.vector_id.is_not(None))
    return [int(vid) for vid in session.scalars(stmt) if vid is not None]


def replace_instances(
    *,
    session: Session,
    image_id: int,
    instances: Sequence[NewInstance],
    retire_run: int | None = None,
) -> list[InstanceRow]:
    """Replace the instances of one image with `instances`; returns the new rows (ids set).

    Raises `NotFound` for an unknown image. Without `retire_run` the old rows are deleted;
    with it (the id of the indexer run) they are retired instead: out of new index versions,
    still resolvable by vector id until `purge_retired`.
    """
    image = _image(session, image_id)
    old = (InstanceRow.image_id == image_id) & active_instances()
    if retire_run is None:
        session.execute(delete(InstanceRow).where(old))
    else:
        session.execute(
            update(InstanceRow).where(old).values(retired_in_run=retire_run),
            execution_options={"synchronize_session": False},
        )
    session.expire(image, ["instances"])
    rows = [_instance_row(image_id, inst) for inst in instances]
    session.add_all(rows)
    session.flush()
    return rows


def _instance_row(image_id: int, inst: NewInstance) -> InstanceRow:
    return InstanceRow(
        image_id=image_id,
        label=inst.label,
        score=float(inst.score),
        x0=float(inst.box.x0),
        y0=float(inst.box.y0),
        x1=float(inst.box.x1),
        y1=float(inst.box.y1),
        mask_rle=_json_rle(inst.mask_rle),
        mask_area=int(inst.mask_area),
        vector_id=inst.vector_id,
        embedder=inst.embedder,
        vector=inst.vector,
    )


def _json_rle(rle: Mapping[str, Any]) -> dict[str, Any]:
    """pycocotools writes `counts` as bytes; JSON wants text."""
    out = dict(rle)
    counts = out.get("counts")
    if isinstance(counts, bytes):
        out["counts"] = counts.decode("ascii")
    if "size" in out:
        out["size"] = [int(v) for v in out["size"]]
    return out


# --- vector ids ------------------------------------------------------------------------------


def next_vector_ids(*, session: Session, n: int) -> list[int]:
    """`n` fresh vector ids, increasing, never handed out before (ids start at 1).

    The counter row stays locked until the transaction ends; commit before the ids are
    used outside the database (e.g. added to a vector index), or a rollback could reuse them.
    """
    if n < 0:
        raise InvalidInput(f"cannot allocate {n} vector ids")
    if n == 0:
        return []
    stmt = (
        update(Counter)
        .where(Counter.name == VECTOR_ID_COUNTER)
        .values(value=Counter.value + n)
        .returning(Counter.value)
    )
    last = session.execute(stmt, execution_options={"synchronize_session": False}).scalar()
    if last is None:
        last = _seed_vector_counter(session, n)
    return list(range(int(last) - n + 1, int(last) + 1))


def _seed_vector_counter(session: Session, n: int) -> int:
    """Create the counter (a database made without the migration) past any id in use."""
    top = session.scalar(select(func.max(InstanceRow.vector_id))) or 0
    session.add(Counter(name=VECTOR_ID_COUNTER, value=int(top) + n))
    session.flush()
    return int(top) + n


def products_for_vector_ids(
    *, session: Session, vector_ids: Sequence[int]
) -> dict[int, tuple[InstanceRow, ProductImage, Product]]:
    """Instance, image and product for each known vector id, in one query (search hot path).

    Retired instances are included: the index version being served may still return them.
    """
    wanted = _unique(int(v) for v in vector_ids)
    if not wanted:
        return {}
    stmt = (
        select(InstanceRow, ProductImage, Product)
        .join(ProductImage, InstanceRow.image_id == ProductImage.id)
        .join(Product, ProductImage.product_id == Product.id)
        .where(InstanceRow.vector_id.in_(wanted))
    )
    out: dict[int, tuple[InstanceRow, ProductImage, Product]] = {}
    for inst, image, product in session.execute(stmt):
        if inst.vector_id is not None:
            out[inst.vector_id] = (inst, image, product)
    return out


def iter_vectors(
    *, session: Session, embedder: str, dim: int, chunk: int = 10_000
) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
    """Every active stored vector of `embedder` as (ids, vectors) chunks, by ascending id."""
    after = 0
    while True:
        stmt = (
            select(InstanceRow.vector_id, InstanceRow.vector)
            .where(
                InstanceRow.embedder == embedder,
                InstanceRow.vector_id > after,
                InstanceRow.vector.is_not(None),
                active_instances(),
            )
            .order_by(InstanceRow.vector_id)
            .limit(chunk)
        )
        rows = cast(list[tuple[int, bytes]], session.execute(stmt).all())
        if not rows:
            return
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
        yield ids, vectors.reshape(len(rows), dim)
        after = int(ids[-1])


def vector_stats(*, session: Session, embedder: str) -> tuple[int, int]:
    """(count, largest id) of the active vectors of `embedder`; (0, 0) when there are none.

    Ids are never reused and vectors never change under an id, so two equal stats taken at
    different times mean the same set of vectors.
    """
    stmt = select(func.count(InstanceRow.vector_id), func.max(InstanceRow.vector_id)).where(
        InstanceRow.embedder == embedder, InstanceRow.vector.is_not(None), active_instances()
    )
    count, top = session.execute(stmt).one()
    return int(count or 0), int(top or 0)


def vector_ids(*, session: Session, embedder: str | None = None) -> list[int]:
    """Every vector id held by an active instance (of one embedder if given), ascending."""
    stmt = select(InstanceRow.vector_id).where(
        InstanceRow.vector_id.is_not(None), active_instances()
    )
    if embedder is not None:
        stmt = stmt.where(InstanceRow.embedder == embedder)
    return [int(v) for v in session.scalars(stmt.order_by(InstanceRow.vector_id)) if v is not None]


def purge_retired(*, session: Session, before_run: int) -> int:
    """Delete the instances retired by runs before `before_run`; returns how many."""
    stmt = delete(InstanceRow).where(
        InstanceRow.retired_in_run.is_not(None), InstanceRow.retired_in_run < before_run
    )
    return cast(CursorResult[Any], session.execute(stmt)).rowcount


# --- index builds ----------------------------------------------------------------------------


def start_build(
    *, session: Session, version: str, embedder: str, dim: int, factory: str
) -> IndexBuild:
    """Record a build that starts now ("running")."""
    build = IndexBuild(
        version=version, embedder=embedder, dim=dim, factory=factory, status="running"
    )
    session.add(build)
    session.flush()
    return build


def finish_build(
    *,
    session: Session,
    build_id: int,
    vector_count: int,
    counts: Mapping[str, Any] | None = None,
    error: str | None = None,
    indexed_at: datetime | None = None,
) -> IndexBuild:
    """Close a build: "committed" without `error`, "failed" with one.

    `indexed_at` (the time the index reflects the catalog) defaults to now on commit.
    """
    build = session.get(IndexBuild, build_id)
    if build is None:
        raise NotFound(f"no index build {build_id}")
    now = utcnow()
    build.status = "failed" if error is not None else "committed"
    build.vector_count, build.error, build.finished_at = vector_count, error, now
    build.counts = dict(counts or {})
    if error is None:
        build.indexed_at = indexed_at or now
    session.flush()
    return build


def fail_running_builds(*, session: Session, error: str = "abandoned") -> int:
    """Mark builds still "running" (a crashed run) as failed; returns how many."""
    stmt = (
        update(IndexBuild)
        .where(IndexBuild.status == "running")
        .values(status="failed", error=error, finished_at=utcnow())
    )
    return cast(CursorResult[Any], session.execute(stmt)).rowcount


def latest_committed_build(*, session: Session, embedder: str | None = None) -> IndexBuild | None:
    """The most recently finished committed build (of one embedder if given), or None."""
    stmt = select(IndexBuild).where(IndexBuild.status == "committed")
    if embedder is not None:
        stmt = stmt.where(IndexBuild.embedder == embedder)
    stmt = stmt.order_by(IndexBuild.finished_at.desc(), IndexBuild.id.desc()).limit(1)
    return session.scalars(stmt).first()


def get_build(*, session: Session, version: str) -> IndexBuild | None:
    """The build with this version, or None."""
    return session.scalars(select(IndexBuild).where(IndexBuild.version == version)).first()


# --- overview --------------------------------------------------------------------------------


def catalog_counts(*, session: Session) -> CatalogCounts:
    """Products, images by status, instances and vectors (for reports and health checks)."""
    by_status = dict.fromkeys(IMAGE_STATUSES, 0)
    stmt = select(ProductImage.status, func.count()).group_by(ProductImage.status)
    for status, count in session.execute(stmt):
        by_status[status] = int(count)
    active = select(func.count(), func.count(InstanceRow.vector_id)).where(active_instances())
    instances, vectors = session.execute(active).one()
    retired = select(func.count()).select_from(InstanceRow).where(~active_instances())
    return CatalogCounts(
        products=session.scalar(select(func.count()).select_from(Product)) or 0,
        images=by_status,
        instances=int(instances),
        vectors=int(vectors),
        retired=session.scalar(retired) or 0,
    )


# --- the search hot path ----------------------------------------------------------------------


@dataclass(frozen=True)
class HitProduct:
    """The catalog columns that filtering and returning a hit read. Loaded as plain columns,
    not ORM objects: 1,280 rows take ~12 ms instead of ~65 ms (a sofa-only instance can page
    through half the index before it has its products)."""

    sku: str
    title: str
    category: str | None
    price: float | None
    currency: str | None
    color: str | None
    merchant: str | None
    in_stock: bool | None
    extra: dict[str, Any] | None


HIT_COLUMNS = tuple(getattr(Product, f.name) for f in fields(HitProduct))

# vector id -> (image id, product): what ranking a hit needs, without vectors or masks.
HitRows = dict[int, tuple[int, HitProduct]]


def hit_rows(*, session: Session, vector_ids: Sequence[int]) -> HitRows:
    """(image id, product) for each known vector id, in lean queries (no vectors, no masks).
    Retired instances are included: the index version being served may still return them."""
    out: HitRows = {}
    for chunk in chunks([int(v) for v in vector_ids]):
        stmt = (
            select(InstanceRow.vector_id, InstanceRow.image_id, *HIT_COLUMNS)
            .join(ProductImage, InstanceRow.image_id == ProductImage.id)
            .join(Product, ProductImage.product_id == Product.id)
            .where(InstanceRow.vector_id.in_(chunk))
        )
        for vid, image_id, *columns in session.execute(stmt):
            if vid is not None:
                out[int(vid)] = (int(image_id), HitProduct(*columns))
    return out


def vector_ids_in_categories(
    *, session: Session, categories: frozenset[str], embedder: str, limit: int
) -> list[int] | None:
    """The vector ids of `embedder`'s instances (retired ones too: the served version may
    still hold them) of products whose category, casefolded, is in `categories`; None when
    there are more than `limit`. The stored spellings are looked up first, so the query
    uses the category index."""
    spellings = [
        name
        for (name,) in session.execute(select(Product.category).distinct())
        if name is not None and name.strip().casefold() in categories
    ]
    if not spellings:
        return []
    stmt = (
        select(InstanceRow.vector_id)
        .join(ProductImage, InstanceRow.image_id == ProductImage.id)
        .join(Product, ProductImage.product_id == Product.id)
        .where(
            Product.category.in_(spellings),
            InstanceRow.embedder == embedder,
            InstanceRow.vector_id.is_not(None),
        )
        .limit(limit + 1)
    )
    ids = [int(vid) for (vid,) in session.execute(stmt) if vid is not None]
    return None if len(ids) > limit else ids


def product_vector_rows(
    *, session: Session, product_id: int, embedder: str
) -> list[tuple[int | None, bytes | None]]:
    """(vector id, stored vector bytes) of every instance of a product for `embedder`, in
    instance order (retired ones too: the served index version may still hold them)."""
    stmt = (
        select(InstanceRow.vector_id, InstanceRow.vector)
        .join(ProductImage)
        .where(ProductImage.product_id == product_id, InstanceRow.embedder == embedder)
        .order_by(InstanceRow.id)
    )
    return [(vid, raw) for vid, raw in session.execute(stmt)]
