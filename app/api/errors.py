"""RFC 9457 problem details for every error the API returns; never a bare 500 page."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

log = logging.getLogger("marquee.api")
PROBLEM_JSON = "application/problem+json"


class Problem(HTTPException):
    """An error with a title, a detail, and optionally the field at fault."""

    def __init__(
        self,
        status_code: int,
        title: str,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.title = title
        self.errors = errors
        self.extra_members = extra


def problem_response(
    request: Request[Any, Any, Any],
    status: int,
    title: str,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": "about:blank",
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
            exc.status_code,
            exc.title,
            exc.detail,
            exc.errors,
            exc.headers,
            **exc.extra_members,
        )
    if isinstance(exc, ValidationException):
        errors = _field_errors(exc.extra)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or exc.detail
        return problem_response(request, 400, "Invalid request", detail, errors)
    return problem_response(
        request, exc.status_code, exc.detail or "Error", exc.detail or "", headers=exc.headers
    )


def handle_storage(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """The database failed: a write was not made (nothing changed), the caller may retry."""
    log.error("storage error on %s: %s", request.url.path, exc)
    return problem_response(
        request,
        503,
        "Storage unavailable",
        "the database did not accept the request; nothing was changed, retry shortly",
        headers={"Retry-After": "5"},
    )


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error on %s", request.url.path)
    return problem_response(
        request,
        HTTP_500_INTERNAL_SERVER_ERROR,
        "Internal error",
        "the service failed unexpectedly; the error was logged",
    )
