"""What the app builds once at start-up and keeps on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from search.config import Settings
from search.db import make_engine, make_session_factory
from search.live import LiveIndex
from search.models.registry import build_embedder, build_segmenter
from search.service import SearchService


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    service: SearchService
    limiter: anyio.CapacityLimiter


def build_state(settings: Settings) -> AppState:
    """Load the models and open the database; the index itself loads on first use."""
    engine = make_engine(settings.database_url)
    session_factory = make_session_factory(engine)
    embedder = build_embedder(settings.models)
    segmenter = build_segmenter(settings.models)
    live = LiveIndex(settings.index.dir, embedder=embedder.name, dim=embedder.dim)
    service = SearchService(
        segmenter=segmenter,
        embedder=embedder,
        live_index=live,
        session_factory=session_factory,
        settings=settings.models,
    )
    limiter = anyio.CapacityLimiter(settings.api.inference_workers)
    return AppState(settings, engine, session_factory, service, limiter)
