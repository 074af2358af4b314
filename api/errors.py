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
from merchant import errors as merchant_errors
from search import errors

log = logging.getLogger(__name__)

STATUS: list[tuple[type[errors.RoomlensError], int]] = [
    (errors.ImageTooLarge, 413),
    (errors.UnsupportedImageType, 415),
    (errors.InvalidBox, 400),
    (errors.InvalidInput, 400),
    (errors.NotFound, 404),
    (errors.IndexNotReady, 503),
    (errors.ModelMismatch, 503),
    (errors.ModelUnavailable, 503),
    (errors.IndexerBusy, 409),
    (merchant_errors.Unauthorized, 401),
    (merchant_errors.Forbidden, 403),
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


PROBLEM_MEDIA_TYPE = "application/problem+json"
_PROBLEM_REF = "#/components/schemas/Problem"
# FastAPI's own 422 body, which the validation handler never sends (it sends a Problem).
_FASTAPI_422_SCHEMAS = ("HTTPValidationError", "ValidationError")


def problem(status: int, detail: str, code: str) -> JSONResponse:
    body = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail, code=code)
    return JSONResponse(body.model_dump(), status_code=status, media_type=PROBLEM_MEDIA_TYPE)


def install_openapi(app: FastAPI) -> None:
    """Make the OpenAPI schema say what the handlers send: every error response, 422
    included, is a `Problem` served as `application/problem+json`."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operation in _operations(schema):
                for status, response in operation.get("responses", {}).items():
                    if str(status)[0] in "45":
                        _as_problem(response)
            components = schema.get("components", {}).get("schemas", {})
            for body in components.values():
                _optional_files_as_files(body)
            for name in _FASTAPI_422_SCHEMAS:
                components.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _optional_files_as_files(body: dict[str, Any]) -> None:
    """`UploadFile | None` fields: FastAPI writes `anyOf: [binary, null]`, which clients and
    tools read as a text field. A multipart part is never null; optional means not required."""
    for name, prop in body.get("properties", {}).items():
        options = prop.get("anyOf", [])
        files = [o for o in options if o.get("contentMediaType") == "application/octet-stream"]
        if len(files) == 1 and len(options) == 2 and {"type": "null"} in options:
            rest = {k: v for k, v in prop.items() if k != "anyOf"}
            body["properties"][name] = {**files[0], **rest}


def _operations(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for path in schema.get("paths", {}).values() for op in path.values()]


def _as_problem(response: dict[str, Any]) -> None:
    content = response.get("content", {})
    body = content.pop("application/json", None)
    if body is None:
        return
    ref = body.get("schema", {}).get("$ref")
    if ref == _PROBLEM_REF or ref == f"#/components/schemas/{_FASTAPI_422_SCHEMAS[0]}":
        content[PROBLEM_MEDIA_TYPE] = {"schema": {"$ref": _PROBLEM_REF}}
    else:
        content["application/json"] = body


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem body."""
    install_openapi(app)

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
