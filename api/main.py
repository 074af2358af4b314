"""The FastAPI application: `create_app(settings)`; models load once in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api import errors
from api.routes import health, products
from api.routes import search as search_routes
from api.state import AppState, build_state
from search.config import Settings

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"


def create_app(settings: Settings | None = None, *, state: AppState | None = None) -> FastAPI:
    """Build the app. Pass `state` to share already-loaded models (tests, benchmarks)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.roomlens = state or build_state(settings)
        try:
            app.state.roomlens.service.live_index.get()
        except Exception as exc:  # the API still starts; /readyz says why it is not ready
            log.warning("index not loaded at start-up: %s", exc)
        yield
        if state is None:
            app.state.roomlens.engine.dispose()

    app = FastAPI(
        title="roomlens",
        version="0.1.0",
        summary="Find every piece of furniture in a room photo and the products that look like it.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(search_routes.router)
    app.include_router(products.router)
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    return app
