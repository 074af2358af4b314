"""Catalog products and their images, as the search results link to them."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from api.deps import SessionDep
from search import catalog
from search.errors import NotFound

router = APIRouter(prefix="/v1", tags=["products"])


@router.get("/images/{image_id}", response_class=FileResponse)
def product_image(image_id: int, session: SessionDep) -> Response:
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
