"""What the OpenAPI document says the routes answer besides their own success: the error
body every refusal carries, the error statuses the routes share, the media types of the
bodies that are not JSON, and who may ask (``declare_access``).

A route's decorator names its answers from here (``responses=NOT_FOUND | DATABASE_BUSY``),
so that a client generated from ``/openapi.json``, or Schemathesis, learns every status and
media type the service sends (``tests/test_openapi.py`` checks that it does).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from exporter.auth import OPEN_PATHS
from exporter.config import Settings
from exporter.formats import FORMATS
from exporter.jobs import GZIP_MEDIA_TYPE

Responses = dict[int | str, dict[str, Any]]

BEARER_SCHEME = "bearer"
# What FastAPI documents for a 422 of its own, which app.py answers with an ErrorBody.
FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
FASTAPI_VALIDATION_REF = "#/components/schemas/HTTPValidationError"


class ErrorBody(BaseModel):
    """Every error the service answers: a code a client can act on, a message naming the
    bad value and what would be valid, and details that depend on the error (``parameter``,
    ``value`` and ``valid`` for a 422, ``size`` for a 416...)."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="What went wrong, for programs: invalid_parameter, "
                                   "not_found, conflict, gone, exports_busy...")
    message: str = Field(description="What went wrong, for people: the bad value and the fix.")


ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """One error answer: the JSON error body, and the headers that come with it."""
    answer: dict[str, Any] = {"model": ErrorBody, "description": description}
    if headers:
        answer["headers"] = headers
    return answer


def header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A response header the service always sends with that answer."""
    return {"description": description, "required": True,
            "schema": schema or {"type": "string"}}


RETRY_AFTER = {"Retry-After": header("Seconds to wait before asking again.",
                                     {"type": "integer", "minimum": 0})}

# The media types of exports, without parameters (text/csv; charset=utf-8 is text/csv).
EXPORT_MEDIA_TYPES = [fmt.media_type.split(";")[0] for fmt in FORMATS.values()]
JOB_FILE_MEDIA_TYPES = [*EXPORT_MEDIA_TYPES, GZIP_MEDIA_TYPE]
MULTIPART_RANGES = "multipart/byteranges"

DATABASE_BUSY: Responses = {503: error(
    "The database could not be reached, was busy, or had no free connection; ask again "
    "after Retry-After. GET /ready tells whether it is reachable and migrated.",
    RETRY_AFTER,
)}
EXPORTS_BUSY: Responses = {503: error(
    "Every export slot is taken (EXPORTER_MAX_CONCURRENT_EXPORTS), or the database is busy; "
    "ask again after Retry-After.",
    RETRY_AFTER,
)}
BAD_BODY: Responses = {
    400: error("The body is not JSON text in UTF-8."),
    422: error("The body is not valid JSON, or a field is missing, unknown or has a bad "
               "value: `parameter` names it (body.format), `valid` lists what would do."),
}
BAD_PARAMETER: Responses = {422: error(
    "A parameter is unknown or has a bad value: `parameter` names it, `valid` lists what "
    "would do."
)}


def not_found(what: str) -> Responses:
    return {404: error(what)}


def file_responses(media_types: list[str], what: str) -> Responses:
    """The answers of a file download (``FileSender``): whole, ranges, or validators."""
    content: dict[str, dict[str, Any]] = {media_type: {} for media_type in media_types}
    return {
        200: {"description": what, "content": content},
        206: {"description": "The ranges asked for: one as itself (with Content-Range), "
                             "several as multipart/byteranges.",
              "content": content | {MULTIPART_RANGES: {}}},
        304: {"description": "If-None-Match or If-Modified-Since: the client's copy is "
                             "current."},
        412: error("If-Match or If-Unmodified-Since does not hold for the file."),
        416: error("No range of the Range header overlaps the file.",
                   {"Content-Range": header("bytes */<size>")}),
    }


def complete_document(app: FastAPI, settings: Settings) -> None:
    """Make the app's document say two things FastAPI's does not. Its 422s carry the
    service's error body (``app.py`` answers validation errors with one), not FastAPI's
    ``{"detail": [...]}``. And every operation has what the access check (``auth.Access``)
    answers in front of it: with API keys, a 401 and the bearer scheme; without, unless
    open, the 403 a request from another address gets. Done to the document, not to the
    routes, which every app shares."""
    generate = app.openapi
    refusals: Responses = {}
    if settings.api_keys:
        refusals[401] = error(
            "No valid `Authorization: Bearer <key>` header.",
            {"WWW-Authenticate": header('Bearer realm="exporter", and why.')},
        )
    elif not settings.allow_open:
        refusals[403] = error(
            "The service has no API keys and is not open: it answers on loopback addresses "
            "only."
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for path, operations in schema["paths"].items():
                for operation in operations.values():
                    _own_validation_error(operation)
                    _add_refusals(operation, path, refusals, bool(settings.api_keys))
            for unused in FASTAPI_VALIDATION_SCHEMAS:
                schema.get("components", {}).get("schemas", {}).pop(unused, None)
            if settings.api_keys:  # ErrorBody is in the schemas already: routes use it
                schema.setdefault("components", {})["securitySchemes"] = {BEARER_SCHEME: {
                    "type": "http", "scheme": "bearer", "description": "One of EXPORTER_API_KEYS.",
                }}
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _own_validation_error(operation: dict[str, Any]) -> None:
    answer = operation["responses"].get("422")
    if answer and FASTAPI_VALIDATION_REF in json.dumps(answer):
        operation["responses"]["422"] = {
            "description": BAD_PARAMETER[422]["description"], "content": ERROR_CONTENT,
        }


def _add_refusals(
    operation: dict[str, Any], path: str, refusals: Responses, keys: bool
) -> None:
    if keys and path in OPEN_PATHS:
        return
    for status, answer in refusals.items():
        response = {key: value for key, value in answer.items() if key != "model"}
        response["content"] = ERROR_CONTENT
        operation["responses"].setdefault(str(status), response)
    if keys:
        operation["security"] = [{BEARER_SCHEME: []}]
