"""The FastAPI application: `create_app(settings)`; models load once in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api import errors
from api.limits import FORM_OVERHEAD, BodyLimitMiddleware
from api.metrics import Metrics, MetricsMiddleware
from api.pool import InferencePool
from api.routes import admin, health, products
from api.routes import search as search_routes
from api.routes import segment as segment_routes
from api.state import AppState, build_state
from search.config import Settings

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"

DESCRIPTION = """\
Upload a room photo: every piece of furniture in it is segmented, and each instance comes
back with the catalog products that look most like it (`/v1/search`), or with its colours and
its relations to the others, as facts (`/v1/segment`).

Errors are `application/problem+json` bodies (RFC 9457) with a machine-readable `code`.
"""


def create_app(settings: Settings | None = None, *, state: AppState | None = None) -> FastAPI:
    """Build the app. Pass `state` to share already-loaded models (tests, benchmarks)."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        roomlens = state or build_state(settings)
        app.state.roomlens = roomlens
        app.state.pool = InferencePool(roomlens.settings.api.inference_workers, metrics)
        try:
            roomlens.service.live_index.get()
        except Exception as exc:  # the API still starts; /readyz says why it is not ready
            log.warning("index not loaded at start-up: %s", exc)
        yield
        if state is None:
            roomlens.engine.dispose()

    app = FastAPI(
        title="roomlens",
        version="0.1.0",
        summary="Find every piece of furniture in a room photo and the products that look like it.",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    errors.install(app)
    body_limit = (state.settings if state else settings).api.max_upload_bytes + FORM_OVERHEAD
    app.add_middleware(BodyLimitMiddleware, max_bytes=body_limit)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: sees every answer
    app.include_router(health.router)
    app.include_router(search_routes.router)
    app.include_router(segment_routes.router)
    app.include_router(products.router)
    app.include_router(admin.router)
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    return app
