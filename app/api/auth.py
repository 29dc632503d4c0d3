"""API keys with scopes, sent in the ``X-API-Key`` header.

``cms`` may generate and read banners and write shoppers and events, ``marketer`` may edit
templates, ``admin`` may do all (and alone writes products).
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from app.api.errors import Problem

HEADER = "X-API-Key"


def require_scope(*accepted: str) -> Any:
    """A guard letting through keys with any of the ``accepted`` scopes (or ``admin``)."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        key = connection.headers.get(HEADER)
        if not key:
            raise Problem(
                401,
                "Unauthorized",
                f"send an API key in the {HEADER} header",
                headers={"WWW-Authenticate": HEADER},
            )
        found = await connection.app.state.api_keys.verify(key)
        if found is None:
            raise Problem(
                401,
                "Unauthorized",
                "unknown or revoked API key",
                headers={"WWW-Authenticate": HEADER},
            )
        name, scopes = found
        if not scopes & {*accepted, "admin"}:
            wanted = " or ".join(f"'{scope}'" for scope in accepted)
            raise Problem(403, "Forbidden", f"key '{name}' lacks the {wanted} scope")
        connection.scope.setdefault("state", {})["api_key"] = name

    return guard
