"""Catalog products, their look-alikes and their images, as the search results link to them."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy import func, select

from api.deps import MetricsDep, SearchServiceDep, SessionDep
from api.errors import problem_responses
from api.mapping import product_filter, product_public, product_url
from api.schemas import (
    CatalogImagePublic,
    CategoryCount,
    IndexPublic,
    ProductDetail,
    SimilarQuery,
    SimilarResponse,
)
from search import catalog
from search.errors import NotFound
from search.service import SearchOptions

router = APIRouter(prefix="/v1", tags=["products"])

MAX_ID = 2**31 - 1  # ids are 32-bit integers in the database
ImageId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="a catalog image id")]


@router.get("/categories", response_model=list[CategoryCount])
def categories(session: SessionDep) -> list[CategoryCount]:
    """The catalog's categories with their product counts, most products first."""
    count = func.count(catalog.Product.id)
    stmt = (
        select(catalog.Product.category, count)
        .where(catalog.Product.category.is_not(None))
        .group_by(catalog.Product.category)
        .order_by(count.desc(), catalog.Product.category)
    )
    return [CategoryCount(name=name, count=n) for name, n in session.execute(stmt)]


@router.get(
    "/products/{sku:path}/similar",
    response_model=SimilarResponse,
    responses=problem_responses(404, 422, 503),
)
async def similar_products(
    sku: str,
    query: Annotated[SimilarQuery, Query()],
    service: SearchServiceDep,
    metrics: MetricsDep,
) -> SimilarResponse:
    """Products that look like this one (itself left out), found with the vectors of its
    indexed catalog images; each product once with its best score."""
    options = SearchOptions(k=query.k, min_score=query.min_score, filters=product_filter(query))
    result = await anyio.to_thread.run_sync(partial(service.similar, sku, options))
    timings = {name: round(ms, 2) for name, ms in result.timings_ms.items()}
    metrics.observe_stages("similar", timings)
    return SimilarResponse(
        sku=result.sku,
        index=IndexPublic(**vars(result.index)),
        query_vectors=result.query_vectors,
        products=[product_public(hit) for hit in result.products],
        timings_ms=timings,
    )


@router.get(
    "/products/{sku:path}", response_model=ProductDetail, responses=problem_responses(404, 422)
)
def product_detail(sku: str, session: SessionDep) -> ProductDetail:
    """One catalog product with every field of the feed and its images."""
    product = catalog.get_product(session=session, sku=sku)
    return ProductDetail(
        sku=product.sku,
        title=product.title,
        category=product.category,
        price=product.price,
        currency=product.currency,
        color=product.color,
        description=product.description,
        merchant=product.merchant,
        in_stock=product.in_stock,
        url=product.url,
        extra=dict(product.extra or {}),
        images=[
            CatalogImagePublic(
                id=image.id,
                url=f"/v1/images/{image.id}",
                position=image.position,
                status=image.status,
                width=image.width,
                height=image.height,
            )
            for image in product.images
        ],
        similar_url=product_url(product.sku) + "/similar",
    )


@router.get(
    "/images/{image_id}",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/*": {}}, "description": "the image file"},
        307: {"description": "the image lives at the URL the feed gave"},
        **problem_responses(404, 422),
    },
)
def product_image(image_id: ImageId, session: SessionDep) -> Response:
    """A catalog image by id: the file itself, or a redirect when the feed gave a URL."""
    image = session.get(catalog.ProductImage, image_id)
    if image is None:
        raise NotFound(f"no catalog image {image_id}")
    source = image.resolved or image.source
    if source.startswith(("http://", "https://")):
        return RedirectResponse(source)
    path = Path(source)
    if not path.is_file():
        raise NotFound(f"catalog image {image_id} is missing on disk")
    return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})
