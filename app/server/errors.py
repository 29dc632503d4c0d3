"""RFC 9457 problem details for every error the service returns; never a bare 500 page.

Each kind of problem has a stable ``type`` URI (``urn:marquee:problem:<slug>``), so a client
tells "busy" from "not ready" from "engine unavailable" without reading titles. The table below
is the one list of them; docs/architecture.md shows it to clients.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from pydantic import BaseModel, Field

log = logging.getLogger("marquee.server")
PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:marquee:problem:"

# slug: (status, title)
PROBLEM_TYPES: dict[str, tuple[int, str]] = {
    "invalid-request": (400, "Invalid request"),
    "unauthorized": (401, "Unauthorized"),
    "forbidden": (403, "Forbidden"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "conflict": (409, "Conflict"),
    "too-large": (413, "Request too large"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "lint-failed": (422, "Template does not pass lint"),
    "draft-not-labelled": (422, "Cannot label a draft"),
    "invalid-experiment": (422, "Invalid experiment"),
    "rate-limited": (429, "Too many requests"),
    "internal-error": (500, "Internal error"),
    "busy": (503, "Busy"),
    "not-ready": (503, "Not ready"),
    "engine-unavailable": (503, "Engine unavailable"),
    "storage-unavailable": (503, "Storage unavailable"),
}
_BY_STATUS = {status: slug for slug, (status, _) in reversed(PROBLEM_TYPES.items())}
PROBLEMS_OPT = "problems"  # the key in a handler's ``opt``: see problems()


def problems(*kinds: str) -> dict[str, tuple[str, ...]]:
    """A handler's ``opt``: the kinds its service answers with beyond those every handler of its
    build meets (invalid input, the key guard, not-ready ...: app/server/openapi.py derives
    those). OpenAPI documents them all, so a client sees every status it can get."""
    unknown = [kind for kind in kinds if kind not in PROBLEM_TYPES]
    if unknown:  # a typo would silently leave a status undocumented
        raise ValueError(f"unknown problem kind(s): {', '.join(unknown)}")
    return {PROBLEMS_OPT: kinds}


class FieldError(BaseModel):
    field: str
    message: str
    line: int | None = Field(default=None, description="the template line (lint-failed)")


# Every problem type, for the OpenAPI description of ``type`` (Litestar does not show a model's
# docstring, a field's description it does).
_TYPE_LIST = "\n".join(
    f"- {TYPE_PREFIX}{slug}: {status} {title}" for slug, (status, title) in PROBLEM_TYPES.items()
)


class ProblemDetails(BaseModel):
    """The body of every error (``application/problem+json``, RFC 9457), as OpenAPI documents it."""

    type: str = Field(
        description=f"which problem it is (branch on this, not on the title):\n{_TYPE_LIST}",
        # The exact URIs, so a client (and the contract test) can rely on the list.
        json_schema_extra={"enum": [TYPE_PREFIX + slug for slug in PROBLEM_TYPES]},
    )
    title: str
    status: int
    detail: str
    instance: str = Field(description="the request's path")
    errors: list[FieldError] | None = Field(default=None, description="the fields at fault")
    request_id: str | None = None
    # Members some kinds add (Problem's keyword arguments):
    current_version: int | None = Field(
        default=None, description="conflict: the version the template is at now"
    )
    templates: list[str] | None = Field(
        default=None, description="not-found of a template: the templates there are"
    )
    job: str | None = Field(default=None, description="conflict of a job: the job running now")


class Problem(HTTPException):
    """An error of one of the known kinds, with a detail and optionally the fields at fault.

    Extra keyword arguments become members of the body (``current_version`` on a conflict).
    """

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        status, title = PROBLEM_TYPES[kind]
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.kind = kind
        self.title = title
        self.errors = errors
        self.extra_members = extra


def field_name(loc: tuple[int | str, ...], whole: str = "body") -> str:
    """A pydantic error's place as the API names fields: ``products[1]``, ``a.b``; ``whole``
    when the error is about the input as a whole."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or whole


def invalid(field: str, message: str, detail: str | None = None) -> Problem:
    """A 400 naming the field at fault."""
    return Problem(
        "invalid-request",
        detail or f"{field}: {message}",
        errors=[{"field": field, "message": message}],
    )


def problem_response(
    request: Request[Any, Any, Any],
    kind: str,
    detail: str,
    *,
    status: int | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    known_status, title = PROBLEM_TYPES[kind]
    status = status or known_status
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + kind,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if errors:
        body["errors"] = errors
    body.update(extra)
    request_id = request.scope.get("state", {}).get("request_id")
    if request_id:
        body["request_id"] = request_id
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_errors(extra: Any) -> list[dict[str, str]]:
    errors = []
    for item in extra if isinstance(extra, list) else []:
        if isinstance(item, dict):
            errors.append(
                {
                    "field": str(item.get("key") or item.get("source") or "body"),
                    "message": str(item.get("message", "invalid")),
                }
            )
    return errors


def handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    if isinstance(exc, Problem):
        return problem_response(
            request,
            exc.kind,
            exc.detail,
            errors=exc.errors,
            headers=exc.headers,
            **exc.extra_members,
        )
    if isinstance(exc, ValidationException):
        errors = _field_errors(exc.extra)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or exc.detail
        return problem_response(request, "invalid-request", detail, errors=errors)
    # Litestar's own (404 route, 405, 413, 429 ...): the kind for its status, its status kept.
    kind = _BY_STATUS.get(exc.status_code, "invalid-request" if exc.status_code < 500 else "")
    headers = dict(exc.headers or {})
    if exc.status_code == 429 and "RateLimit-Reset" in headers:  # the budget's window ends
        headers["Retry-After"] = str(max(1, int(headers["RateLimit-Reset"])))
    return problem_response(
        request,
        kind or "internal-error",
        exc.detail or "",
        status=exc.status_code,
        headers=headers,
    )


def handle_bad_encoding(
    request: Request[Any, Any, Any], exc: UnicodeDecodeError
) -> Response[dict[str, Any]]:
    """A body that is not UTF-8 fails in the JSON decoder, before any handler runs."""
    return problem_response(
        request,
        "invalid-request",
        "the request body is not valid UTF-8",
        errors=[{"field": "body", "message": f"not UTF-8 at byte {exc.start}"}],
    )


def handle_storage(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """The database failed: a write was not made (nothing changed), the caller may retry."""
    log.error("storage error on %s: %s", request.url.path, exc)
    return problem_response(
        request,
        "storage-unavailable",
        "the database did not accept the request; nothing was changed, retry shortly",
        headers={"Retry-After": "5"},
    )


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error on %s", request.url.path)
    return problem_response(
        request, "internal-error", "the service failed unexpectedly; the error was logged"
    )
