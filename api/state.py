"""What the app builds once at start-up and keeps on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.fetch import FetchPolicy
from search.config import Settings
from search.db import make_engine, make_session_factory
from search.factory import build_service
from search.service import SearchService


@dataclass
class AppState:
    """Models, database and service, shared by every request (and by several apps in tests).

    The inference pool is not here: it belongs to one event loop and is made in the
    app's lifespan (`app.state.pool`).
    """

    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    service: SearchService
    fetch: FetchPolicy


def build_state(settings: Settings) -> AppState:
    """Load the models and open the database; the index itself loads on first use."""
    engine = make_engine(settings.database_url)
    session_factory = make_session_factory(engine)
    service = build_service(settings, session_factory)
    fetch = FetchPolicy(
        max_bytes=settings.api.max_upload_bytes,
        timeout_s=settings.api.url_timeout_s,
        allow_private=settings.api.url_allow_private,
    )
    return AppState(settings, engine, session_factory, service, fetch)
