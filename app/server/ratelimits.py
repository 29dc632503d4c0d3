"""Per-key rate limits on Litestar's rate-limit middleware: one budget for generations, one for
everything else on /v1. Keyed by the API key the request presents (a hash of it, so a wrong
secret for someone's key id spends its own budget, not theirs), else the client's address.

The budgets live in the app's memory store: per process. Behind several replicas each has its
own; point ``stores`` at a shared store (Redis) to make them global.
"""

from __future__ import annotations

import hashlib
from typing import Any

from litestar import Request
from litestar.middleware.rate_limit import RateLimitConfig, get_remote_address
from litestar.types import Middleware

from app.config import Settings
from app.server.auth import HEADER
from app.server.errors import PROBLEMS_OPT

API_PREFIX = "/v1/"


def _caller(request: Request[Any, Any, Any]) -> str:
    key = request.headers.get(HEADER)
    if key:
        return "key:" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:32]
    return "addr:" + get_remote_address(request)


def generates(request: Request[Any, Any, Any]) -> bool:
    """A handler that may answer ``busy`` takes a generation slot: it spends the generation
    budget (the same declaration documents the 503 in OpenAPI)."""
    handler = request.scope.get("route_handler")
    return "busy" in (getattr(handler, "opt", {}) or {}).get(PROBLEMS_OPT, ())


def _budget(name: str, per_minute: int, applies: bool) -> Middleware:
    async def check(request: Request[Any, Any, Any]) -> bool:
        return request.url.path.startswith(API_PREFIX) and generates(request) is applies

    return RateLimitConfig(
        rate_limit=("minute", per_minute),
        identifier_for_request=lambda request: f"{name}:{_caller(request)}",
        check_throttle_handler=check,
        store=f"rate_limit_{name}",
    ).middleware


def rate_limits(settings: Settings) -> list[Middleware]:
    budgets = [
        ("generations", settings.rate_limit_generations_per_minute, True),
        ("requests", settings.rate_limit_requests_per_minute, False),
    ]
    return [_budget(name, limit, applies) for name, limit, applies in budgets if limit > 0]
