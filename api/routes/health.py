"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import MetricsDep, StateDep
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


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text exposition format",
        }
    },
)
def metrics(metrics: MetricsDep) -> Response:
    """Request counts, request latency and search time per stage, for Prometheus."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
