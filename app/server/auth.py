"""API keys with scopes, sent in the ``X-API-Key`` header.

``cms`` may generate and read banners and write shoppers and events, ``marketer`` may edit
templates, ``admin`` may do all (and alone writes products).

The studio's pages sign in with a key once and keep a session (``session_middleware``,
``open_session``, ``session_user``): an encrypted cookie with the key's id, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Set
from typing import Any
from urllib.parse import quote

import structlog
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotAuthorizedException, SerializationException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.middleware.session.client_side import (
    ClientSideSessionBackend,
    CookieBackendConfig,
)
from litestar.params import Body
from litestar.response import Redirect

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
        identify(connection, name)  # a refused request's log line names the key too
        if not scopes & {*accepted, "admin"}:
            wanted = " or ".join(f"'{scope}'" for scope in accepted)
            raise Problem("forbidden", f"key '{name}' lacks the {wanted} scope")

    return guard


def identify(connection: ASGIConnection[Any, Any, Any, Any], name: str) -> None:
    """Record who makes this request: the key's (or studio user's) name, never the key. The
    audit log reads it back (``actor``); every later log line of the request carries it."""
    connection.scope.setdefault("state", {})["api_key"] = name
    structlog.contextvars.bind_contextvars(api_key=name)


def actor(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The name of the key (or studio user) that made this request: the audit log's actor."""
    return str(connection.scope.get("state", {}).get("api_key", "unknown"))


# --- the studio's session -------------------------------------------------------------------

SESSION_COOKIE = "marquee_studio"
SESSION_PATH = "/studio"
SESSION_S = 8 * 3600  # from sign-in, however busy the session


class _SessionBackend(ClientSideSessionBackend):
    """Litestar's cookie sessions, reading any cookie it cannot read as no session. Litestar
    treats a cookie that fails decryption so, but parses the expiry stored beside the
    ciphertext first, and a tampered expiry (malformed JSON, no ``expires_at``) escaped as a
    500."""

    async def load_from_connection(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> dict[str, Any]:
        try:
            return await super().load_from_connection(connection)
        except (SerializationException, KeyError, TypeError, ValueError):
            return {}


class _SessionConfig(CookieBackendConfig):
    _backend_class = _SessionBackend


def session_middleware(secret: str, *, secure: bool) -> DefineMiddleware:
    """Sessions kept by the browser: AES-GCM makes the cookie unreadable and unforgeable without
    the secret, and replicas sharing ``studio_secret`` share sessions with no store to run. Its
    key is derived from the secret (which also signs CSRF tokens), so the two uses never share
    a key. The cookie's path keeps it off every request but the studio's."""
    key = hmac.new(secret.encode(), b"marquee studio session", hashlib.sha256).digest()
    config = _SessionConfig(
        secret=key,
        key=SESSION_COOKIE,
        path=SESSION_PATH,
        max_age=SESSION_S,
        httponly=True,
        samesite="strict",
        secure=secure,
    )
    return config.middleware


async def open_session(
    connection: ASGIConnection[Any, Any, Any, Any], key: str, accepted: Set[str]
) -> dict[str, Any] | None:
    """What a session holds for a valid key with one of the ``accepted`` scopes: its id and
    name and when it signed in, never the key. None for any other key."""
    keys = services(connection.app.state).keys
    found = await keys.authenticate(key) if key else None
    if found is None or not accepted & set(found.scopes):
        return None
    return {"key_id": found.id, "name": found.name, "signed_in_at": keys.clock().timestamp()}


async def session_user(
    connection: ASGIConnection[Any, Any, Any, Any], accepted: Set[str]
) -> str | None:
    """The name of the session's key if it signed in under ``SESSION_S`` ago and still works
    (not revoked, not expired) with one of the ``accepted`` scopes: looked up on every call,
    so revoking a key ends its sessions at once."""
    session = connection.session  # empty when absent, tampered with or past the cookie's age
    key_id, since = session.get("key_id"), session.get("signed_in_at")
    if not isinstance(key_id, str) or not isinstance(since, int | float):
        return None
    keys = services(connection.app.state).keys
    # The cookie's own expiry is renewed with every answer; this one counts from sign-in.
    if keys.clock().timestamp() - since >= SESSION_S:
        return None
    found = await keys.active(key_id)
    return found.name if found is not None and accepted & set(found.scopes) else None


# --- the studio's pages -----------------------------------------------------------------------

PAGE_SCOPES = frozenset({"marketer", "admin"})  # who may use the studio's pages
# A page form's body: URL-encoded, as a browser posts it.
FORM = Body(media_type=RequestEncodingType.URL_ENCODED)


async def signed_in(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard of every studio page: a signed-in marketer (their key's name becomes the actor,
    the key is looked up on every page), else the sign-in page."""
    who = await session_user(connection, PAGE_SCOPES)
    if who is None:
        connection.clear_session()  # a refused session is dropped with the redirect
        raise NotAuthorizedException("sign in with a marketer key")
    identify(connection, who)


def to_login(request: Request[Any, Any, Any], _: Exception) -> Response[Any]:
    """What a page answers a visitor who is not signed in: the sign-in page, then back."""
    return Redirect(f"/studio/login?next={quote(request.url.path)}")
