"""FastAPI dependencies as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api.metrics import Metrics
from api.pool import InferencePool
from api.state import AppState
from search.config import Settings
from search.service import SearchService


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.roomlens
    return state


def get_session(state: Annotated[AppState, Depends(get_state)]) -> Iterator[Session]:
    with state.session_factory() as session:
        yield session


StateDep = Annotated[AppState, Depends(get_state)]
SessionDep = Annotated[Session, Depends(get_session)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


def get_service(state: StateDep) -> SearchService:
    return state.service


def get_pool(request: Request) -> InferencePool:
    pool: InferencePool = request.app.state.pool
    return pool


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
SearchServiceDep = Annotated[SearchService, Depends(get_service)]
PoolDep = Annotated[InferencePool, Depends(get_pool)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
