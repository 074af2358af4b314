"""Build a ready SearchService from settings (the API, the CLI and the eval share this)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from search.categories import label_policy
from search.config import Settings
from search.index_store import open_index_store
from search.live import LiveIndex
from search.models.registry import build_embedder, build_masker, build_segmenter
from search.photo_cache import PhotoCache
from search.segmentation import Segmentation
from search.service import SearchService


def build_service(settings: Settings, session_factory: Callable[[], Session]) -> SearchService:
    """Load the configured models; the index loads on first use."""
    embedder = build_embedder(settings.models)
    masker = build_masker(settings.models)  # one model for the segmenter and drawn regions
    segmenter = build_segmenter(settings.models, masker=masker)
    live = build_live_index(settings, embedder=embedder.name, dim=embedder.dim)
    return SearchService(
        segmenter=segmenter,
        embedder=embedder,
        live_index=live,
        session_factory=session_factory,
        settings=settings.models,
        category_policy=label_policy() if settings.models.category_aware else None,
        masker=masker,
        photo_cache=PhotoCache(settings.api.photo_cache_mb << 20)
        if settings.api.photo_cache_mb
        else None,
    )


def build_live_index(settings: Settings, *, embedder: str, dim: int) -> LiveIndex:
    """The live index on the configured store (FAISS files, or Milvus), for this embedder."""
    return LiveIndex(open_index_store(settings.index), embedder=embedder, dim=dim)


def build_segmentation(settings: Settings) -> Segmentation:
    """Only the segmenter and box masker, as `build_service` builds them (no embedder,
    index or database): what `roomlens segment` needs."""
    masker = build_masker(settings.models)
    return Segmentation(build_segmenter(settings.models, masker=masker), masker)
