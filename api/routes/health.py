"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import StateDep
from api.schemas import Health, IndexPublic
from search.errors import RoomlensError

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(state: StateDep) -> Health | JSONResponse:
    """Models loaded and an index being served; 503 with the reason otherwise."""
    try:
        loaded = state.service.live_index.get()
    except RoomlensError as exc:
        body = Health(status="not_ready", detail={"reason": str(exc), "code": exc.code})
        return JSONResponse(body.model_dump(), status_code=503)
    meta = loaded.meta
    index = IndexPublic(
        version=meta.version,
        indexed_at=meta.indexed_at,
        vector_count=meta.count,
        embedder=meta.embedder,
    )
    return Health(status="ready", index=index)
