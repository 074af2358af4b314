"""/v1/admin: what roomlens made of a merchant's catalog, the index, and how shoppers search.

Every route needs an API key (401 without a valid one). A merchant key sees its own
merchant's products and figures only: asking for another merchant, or another merchant's
product, is 403. Index runs, reindexing and cross-merchant duplicates are for admin keys.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, status
from pydantic import ValidationError

from api import admin_jobs
from api.admin_deps import AdminKeyDep, SuperKeyDep, get_key_scope
from api.admin_schemas import (
    BuildPublic,
    CatalogStatsPublic,
    CategoryStatsPublic,
    CountPublic,
    DuplicatePublic,
    DuplicatesPublic,
    ImageAdminPublic,
    IndexStatusPublic,
    InstanceAdminPublic,
    JobPublic,
    LatencyPublic,
    LiveIndexPublic,
    LoggedSearchPublic,
    Page,
    ProblemPublic,
    ProductAdminPublic,
    ProductChangePublic,
    ProductIn,
    ProductRefPublic,
    ReindexIn,
    RunPublic,
    SearchStatsPublic,
    VolumePublic,
)
from api.deps import SessionDep, StateDep
from api.errors import problem_responses
from api.schemas import MaskRLE
from api.state import AppState
from indexer.sources import FeedItem, validation_reason
from merchant import admin, duplicates, querylog
from merchant.keys import KeyScope
from search.db import Product
from search.errors import InvalidInput, ProductNotFound, RoomlensError
from search.fetch import check_url_address, is_url
from search.index import IndexMeta

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    dependencies=[Depends(get_key_scope)],  # no admin route can forget authentication
    responses=problem_responses(401, 403),
)

MerchantQuery = Annotated[
    str | None, Query(description="one merchant (admin keys: any; merchant keys: their own)")
]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0)]
ReindexQuery = Annotated[
    Literal["now"] | None,
    Query(description="`now`: process this product and publish a new index version at once"),
]
_jobs_lock = threading.Lock()


def get_jobs(request: Request) -> admin_jobs.ReindexJobs:
    """The app's background reindex jobs (created on first use)."""
    with _jobs_lock:
        jobs = getattr(request.app.state, "reindex_jobs", None)
        if jobs is None:
            jobs = admin_jobs.ReindexJobs()
            request.app.state.reindex_jobs = jobs
    return jobs


JobsDep = Annotated[admin_jobs.ReindexJobs, Depends(get_jobs)]


# --- catalog ---------------------------------------------------------------------------------


@router.get("/catalog", response_model=CatalogStatsPublic)
def catalog_stats(
    scope: AdminKeyDep, session: SessionDep, merchant: MerchantQuery = None
) -> CatalogStatsPublic:
    """Products, images (by status), instances and vectors per merchant and category."""
    stats = admin.catalog_stats(session=session, merchant=scope.merchant_filter(merchant))
    return CatalogStatsPublic(
        rows=[CategoryStatsPublic.model_validate(row) for row in stats.rows],
        totals=CategoryStatsPublic.model_validate(stats.totals),
    )


@router.get("/catalog/problems", response_model=Page[ProblemPublic])
def catalog_problems(
    scope: AdminKeyDep,
    session: SessionDep,
    merchant: MerchantQuery = None,
    status: Annotated[list[Literal["failed", "no_instance"]] | None, Query()] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[ProblemPublic]:
    """Products whose image failed, or showed no object, with the reason."""
    items, count = admin.problem_products(
        session=session,
        merchant=scope.merchant_filter(merchant),
        statuses=status or admin.PROBLEM_STATUSES,
        limit=limit,
        offset=offset,
    )
    return Page(data=[ProblemPublic.model_validate(i) for i in items], count=count)


def _product_public(product: Product) -> ProductAdminPublic:
    images = [
        ImageAdminPublic(
            id=image.id,
            position=image.position,
            source=image.source,
            status=image.status,
            error=image.error,
            width=image.width,
            height=image.height,
            content_hash=image.content_hash,
            url=f"/v1/images/{image.id}",
            instances=[
                InstanceAdminPublic(
                    id=inst.id,
                    label=inst.label,
                    score=inst.score,
                    box=[inst.x0, inst.y0, inst.x1, inst.y1],
                    mask=MaskRLE(**inst.mask_rle),
                    mask_area=inst.mask_area,
                    vector_id=inst.vector_id,
                    embedder=inst.embedder,
                )
                for inst in image.instances
            ],
        )
        for image in product.images
    ]
    fields = {name: getattr(product, name) for name in ProductAdminPublic.model_fields}
    return ProductAdminPublic(**{**fields, "extra": dict(product.extra or {}), "images": images})


@router.get("/products/{sku}", response_model=ProductAdminPublic, responses=problem_responses(404))
def product_detail(scope: AdminKeyDep, session: SessionDep, sku: str) -> ProductAdminPublic:
    """One product with its images and their instances: boxes and masks (COCO RLE)."""
    product = admin.product_detail(session=session, sku=sku)
    scope.check_merchant(product.merchant)
    return _product_public(product)


def _image_roots(state: AppState) -> list[Path]:
    roots = list(state.settings.api.image_roots)
    return roots + ([state.settings.sample_dir] if state.settings.sample_dir else [])


def _check_image(state: AppState, ref: str) -> None:
    """What a merchant key may name as an image: a file under the allowed folders, or a URL
    of a public host (the indexer will fetch it: it must not reach the internal network)."""
    if is_url(ref):
        check_url_address(ref, state.fetcher.guard)
    else:
        admin.check_image_ref(ref, _image_roots(state))


def _feed_item(sku: str, body: ProductIn, merchant: str | None) -> FeedItem:
    """The body as a feed line would give it (blank extra values left out, as a feed does)."""
    extra = {
        k: v
        for k, v in body.extra.items()
        if v is not None and not (isinstance(v, str) and not v.strip())
    }
    record = {**body.model_dump(), "extra": extra, "sku": sku, "merchant": merchant}
    try:
        return FeedItem.model_validate(record, context={"base_dir": None})
    except ValidationError as exc:
        raise InvalidInput(validation_reason(exc)) from exc


def _existing_merchant(session: SessionDep, sku: str) -> tuple[bool, str | None]:
    try:
        return True, admin.product_merchant(session=session, sku=sku)
    except ProductNotFound:
        return False, None


@router.put(
    "/products/{sku}",
    response_model=ProductChangePublic,
    responses=problem_responses(400, 409, 422),
)
def upsert_product(
    scope: AdminKeyDep,
    state: StateDep,
    session: SessionDep,
    sku: str,
    body: ProductIn,
    reindex: ReindexQuery = None,
) -> ProductChangePublic:
    """Create or replace a product; its image is processed by the next index run, or at once
    with `reindex=now` (409 if an index run is going: the product is saved all the same)."""
    exists, current = _existing_merchant(session, sku)
    if exists:
        scope.check_merchant(current)
    merchant = body.merchant if scope.is_admin else scope.merchant_filter(body.merchant)
    item = _feed_item(sku, body, merchant)
    if not scope.is_admin:
        _check_image(state, item.image_ref)
    outcome = admin.upsert_product(session=session, item=item)
    session.commit()
    change = ProductChangePublic(
        sku=sku,
        action="created" if outcome.created else "updated" if outcome.changed else "unchanged",
        image_status="pending" if outcome.image_queued else None,
    )
    if reindex == "now":
        report = admin_jobs.reindex_product(state, sku)
        change.index_version = report.version
        session.expire_all()
        image = admin.product_detail(session=session, sku=sku).primary_image
        change.image_status = image.status if image is not None else None
    return change


@router.delete(
    "/products/{sku}",
    response_model=ProductChangePublic,
    responses=problem_responses(404, 409),
)
def delete_product(
    scope: AdminKeyDep,
    state: StateDep,
    session: SessionDep,
    sku: str,
    reindex: ReindexQuery = None,
) -> ProductChangePublic:
    """Delete a product and its instances; the index drops them at its next version (or now)."""
    scope.check_merchant(admin.product_merchant(session=session, sku=sku))
    freed = admin.delete_product(session=session, sku=sku)
    session.commit()
    version = admin_jobs.publish_now(state).version if reindex == "now" else None
    return ProductChangePublic(
        sku=sku, action="deleted", freed_vectors=len(freed), index_version=version
    )


# --- index -----------------------------------------------------------------------------------


def _live_meta(state: AppState) -> tuple[IndexMeta | None, str | None]:
    try:
        return state.service.live_index.get().meta, None
    except RoomlensError as exc:
        return None, str(exc)


@router.get("/index", response_model=IndexStatusPublic)
def index_status(
    scope: AdminKeyDep, state: StateDep, session: SessionDep, merchant: MerchantQuery = None
) -> IndexStatusPublic:
    """The live index: version, indexed_at, type and size; the scope's vectors and pending
    images. Whole-index figures (total vectors, builds) are for admin keys only."""
    meta, error = _live_meta(state)
    info = admin.index_status(session=session, live=meta, merchant=scope.merchant_filter(merchant))
    live = None
    if meta is not None:
        live = LiveIndexPublic(
            version=meta.version,
            indexed_at=meta.indexed_at,
            vector_count=meta.count if scope.is_admin else None,
            factory=meta.factory,
            embedder=meta.embedder,
            dim=meta.dim,
            metric=meta.metric,
        )
    admin_only = scope.is_admin
    return IndexStatusPublic(
        live=live,
        live_error=error,
        build=BuildPublic.model_validate(info.build) if info.build and admin_only else None,
        latest_build=(
            BuildPublic.model_validate(info.latest_build)
            if info.latest_build and admin_only
            else None
        ),
        vectors=info.vectors,
        pending_images=info.pending_images,
    )


@router.get("/index/runs", response_model=Page[RunPublic])
def index_runs(
    _: SuperKeyDep, session: SessionDep, limit: Limit = 50, offset: Offset = 0
) -> Page[RunPublic]:
    """Indexer runs, newest first, with counts, failures, timings and progress (admin)."""
    runs, count = admin.list_runs(session=session, limit=limit, offset=offset)
    return Page(data=[RunPublic.model_validate(run) for run in runs], count=count)


@router.get("/index/runs/{run_id}", response_model=RunPublic, responses=problem_responses(404))
def index_run(_: SuperKeyDep, session: SessionDep, run_id: int) -> RunPublic:
    """One indexer run (admin)."""
    return RunPublic.model_validate(admin.get_run(session=session, run_id=run_id))


def _job_public(state: AppState, job: admin_jobs.ReindexJob) -> JobPublic:
    run = admin_jobs.job_run(state, job)
    return JobPublic(
        id=job.id,
        feed=str(job.feed),
        full=job.full,
        status=job.status,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=job.error,
        summary=job.summary,
        run=RunPublic.model_validate(run) if run is not None else None,
        progress=dict(run.progress or {}) if run is not None else {},
    )


@router.post(
    "/index/jobs",
    response_model=JobPublic,
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(400, 409),
)
def start_reindex(
    _: SuperKeyDep, state: StateDep, jobs: JobsDep, body: ReindexIn | None = None
) -> JobPublic:
    """Start an index run of the feed in the background (admin); 409 while one is running."""
    body = body or ReindexIn()
    feed = admin_jobs.resolve_feed(state, body.feed)
    return _job_public(state, jobs.start(state, feed, full=body.full))


@router.get("/index/jobs/{job_id}", response_model=JobPublic, responses=problem_responses(404))
def reindex_job(_: SuperKeyDep, state: StateDep, jobs: JobsDep, job_id: str) -> JobPublic:
    """A background index run: its state, and its progress from `index_runs` (admin)."""
    return _job_public(state, jobs.get(job_id))


# --- near-duplicates -------------------------------------------------------------------------


@router.get("/duplicates", response_model=DuplicatesPublic, responses=problem_responses(503))
def near_duplicates(
    scope: AdminKeyDep,
    state: StateDep,
    session: SessionDep,
    merchant: MerchantQuery = None,
    threshold: Annotated[float, Query(gt=0.0, le=1.0, description="min cosine")] = 0.95,
    cross_merchant: Annotated[
        bool, Query(description="also pairs of two merchants (admin, no merchant given)")
    ] = True,
    k: Annotated[int, Query(ge=1, le=100, description="neighbours per instance")] = 10,
    limit: Limit = 100,
) -> DuplicatesPublic:
    """Product pairs whose instances are nearly identical (not merely similar)."""
    options = duplicates.DuplicateOptions(
        threshold=threshold,
        merchant=scope.merchant_filter(merchant),
        cross_merchant=cross_merchant,
        k=k,
        limit=limit,
    )
    index = state.service.live_index.get().index
    pairs = duplicates.near_duplicates(session=session, index=index, options=options)
    data = [
        DuplicatePublic(
            a=ProductRefPublic.model_validate(p.a),
            b=ProductRefPublic.model_validate(p.b),
            score=round(p.score, 4),
            matches=p.matches,
            labels=list(p.labels),
        )
        for p in pairs
    ]
    return DuplicatesPublic(threshold=threshold, data=data, count=len(data))


# --- searches --------------------------------------------------------------------------------

FromQuery = Annotated[
    str | None, Query(alias="from", description="ISO date or datetime (UTC unless it says so)")
]
ToQuery = Annotated[
    str | None,
    Query(alias="to", description="exclusive; a date alone means the end of that day"),
]


def _log_query(
    scope: KeyScope, merchant: str | None, since: str | None, until: str | None
) -> querylog.LogQuery:
    return querylog.LogQuery(
        merchant=scope.merchant_filter(merchant),
        since=querylog.parse_when(since) if since else None,
        until=querylog.parse_when(until, end=True) if until else None,
    )


@router.get("/searches", response_model=Page[LoggedSearchPublic])
def searches(
    scope: AdminKeyDep,
    session: SessionDep,
    merchant: MerchantQuery = None,
    since: FromQuery = None,
    until: ToQuery = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[LoggedSearchPublic]:
    """The search log, newest first: time, merchant filter, instances, products, latency."""
    query = _log_query(scope, merchant, since, until)
    rows, count = querylog.search_log(session=session, query=query, limit=limit, offset=offset)
    return Page(data=[LoggedSearchPublic.model_validate(r) for r in rows], count=count)


@router.get("/searches/stats", response_model=SearchStatsPublic)
def search_stats(
    scope: AdminKeyDep,
    session: SessionDep,
    merchant: MerchantQuery = None,
    since: FromQuery = None,
    until: ToQuery = None,
    bucket: Literal["hour", "day"] = "day",
    top: Annotated[int, Query(ge=1, le=100)] = 10,
) -> SearchStatsPublic:
    """Volume per hour or day, latency percentiles, zero-result rate, top labels and products."""
    query = _log_query(scope, merchant, since, until)
    stats = querylog.search_stats(session=session, query=query, bucket=bucket, top=top)
    latency = stats.latency_ms
    return SearchStatsPublic(
        since=query.since,
        until=query.until,
        bucket=bucket,
        searches=stats.searches,
        errors=stats.errors,
        zero_results=stats.zero_results,
        zero_result_rate=stats.zero_result_rate,
        latency_ms=LatencyPublic.model_validate(latency, from_attributes=True) if latency else None,
        volume=[VolumePublic(start=start, searches=n) for start, n in stats.volume],
        top_labels=[CountPublic(key=label, count=n) for label, n in stats.top_labels],
        top_products=[
            CountPublic(key=sku, count=n, title=stats.titles.get(sku))
            for sku, n in stats.top_products
        ],
    )
