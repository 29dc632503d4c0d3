"""API keys with scopes, sent in the ``X-API-Key`` header.

``cms`` may generate and read banners and write shoppers and events, ``marketer`` may edit
templates, ``admin`` may do all (and alone writes products).
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from app.server.errors import Problem
from app.server.services import services

HEADER = "X-API-Key"
# RFC 9110 challenge: the scheme name, then a realm parameter.
CHALLENGE = f'{HEADER} realm="marquee"'


def require_scope(*accepted: str) -> Any:
    """A guard letting through keys with any of the ``accepted`` scopes (or ``admin``)."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        key = connection.headers.get(HEADER)
        if not key:
            raise Problem(
                "unauthorized",
                f"send an API key in the {HEADER} header",
                headers={"WWW-Authenticate": CHALLENGE},
            )
        found = await services(connection.app.state).keys.verify(key)
        if found is None:
            raise Problem(
                "unauthorized",
                "unknown, expired or revoked API key",
                headers={"WWW-Authenticate": CHALLENGE},
            )
        name, scopes = found
        if not scopes & {*accepted, "admin"}:
            wanted = " or ".join(f"'{scope}'" for scope in accepted)
            raise Problem("forbidden", f"key '{name}' lacks the {wanted} scope")
        connection.scope.setdefault("state", {})["api_key"] = name

    return guard


def actor(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The name of the key (or studio user) that made this request: the audit log's actor."""
    return str(connection.scope.get("state", {}).get("api_key", "unknown"))
