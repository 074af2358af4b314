"""What the app builds once at start-up and keeps on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from search.config import Settings
from search.db import make_engine, make_session_factory
from search.factory import build_service
from search.fetch import Fetcher, FetchPolicy
from search.service import SearchService

API_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")


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
    fetcher: Fetcher  # for `image_url`s (one HTTP client, shared)


def build_state(settings: Settings) -> AppState:
    """Load the models and open the database; the index itself loads on first use."""
    engine = make_engine(settings.database_url)
    session_factory = make_session_factory(engine)
    service = build_service(settings, session_factory)
    return AppState(settings, engine, session_factory, service, Fetcher(api_fetch_policy(settings)))


def api_fetch_policy(settings: Settings) -> FetchPolicy:
    """How the API fetches an `image_url`: a shopper waits, so one deadline for the whole
    fetch and no retries; the upload cap; JPEG, PNG or WebP only."""
    deadline = settings.api.url_timeout_s
    return settings.fetch.policy(
        connect_timeout_s=min(settings.fetch.connect_timeout_s, deadline),
        read_timeout_s=min(settings.fetch.read_timeout_s, deadline),
        deadline_s=deadline,
        retries=0,
        max_bytes=settings.api.max_upload_bytes,
        content_types=API_IMAGE_TYPES,
    )
