"""An app state whose models are already loaded, pointed at another database and index."""

from __future__ import annotations

from dataclasses import replace

from api.state import AppState
from search.config import Settings
from search.db import make_engine, make_session_factory
from search.factory import build_live_index
from search.service import SearchService


def state_for(loaded: AppState, settings: Settings) -> AppState:
    """`loaded`'s models on the database and index of `settings` (dispose its engine)."""
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    embedder = loaded.service.embedder
    service = SearchService(
        segmenter=loaded.service.segmenter,
        embedder=embedder,
        live_index=build_live_index(settings, embedder=embedder.name, dim=embedder.dim),
        session_factory=sessions,
        settings=settings.models,
    )
    return replace(
        loaded, settings=settings, engine=engine, session_factory=sessions, service=service
    )
