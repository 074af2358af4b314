"""Domain errors to HTTP, in one place. Every error leaves as an `application/problem+json` body."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.schemas import Problem
from search import errors

log = logging.getLogger(__name__)

STATUS: list[tuple[type[errors.RoomlensError], int]] = [
    (errors.ImageTooLarge, 413),
    (errors.UnsupportedImageType, 415),
    (errors.InvalidInput, 400),
    (errors.NotFound, 404),
    (errors.IndexNotReady, 503),
    (errors.ModelMismatch, 503),
    (errors.ModelUnavailable, 503),
    (errors.IndexerBusy, 409),
]


def status_for(exc: errors.RoomlensError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the problem bodies a route can return."""
    return {
        status: {"model": Problem, "description": HTTPStatus(status).phrase} for status in statuses
    }


def problem(status: int, detail: str, code: str) -> JSONResponse:
    body = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail, code=code)
    return JSONResponse(
        body.model_dump(), status_code=status, media_type="application/problem+json"
    )


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem body."""

    @app.exception_handler(errors.RoomlensError)
    async def _domain(_: Request, exc: errors.RoomlensError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            log.warning("%s: %s", exc.code, exc)
        return problem(status, str(exc), exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{where}: {err.get('msg')}")
        return problem(422, "; ".join(parts) or "invalid request", "validation_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        return problem(exc.status_code, str(exc.detail), code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return problem(500, "internal error", "internal_error")
