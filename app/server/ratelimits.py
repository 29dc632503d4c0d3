"""Per-key rate limits on Litestar's rate-limit middleware: one budget for generations, one for
the read path (what a CMS asks on every page view), one for everything else on /v1. Keyed by
the API key the request presents (a hash of it, so a wrong secret for someone's key id spends
its own budget, not theirs), else the client's address.

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


READ_PATH_OPT = "read_path"  # a handler's ``opt``: it is the read path (see budget())


def budget(request: Request[Any, Any, Any]) -> str:
    """Which budget a request spends. A handler that may answer ``busy`` takes a generation
    slot (the same declaration documents the 503 in OpenAPI); the read path is marked in its
    ``opt``; everything else spends ``requests``."""
    opt = getattr(request.scope.get("route_handler"), "opt", {}) or {}
    if "busy" in opt.get(PROBLEMS_OPT, ()):
        return "generations"
    return "reads" if opt.get(READ_PATH_OPT) else "requests"


def _budget(name: str, per_minute: int) -> Middleware:
    async def check(request: Request[Any, Any, Any]) -> bool:
        return request.url.path.startswith(API_PREFIX) and budget(request) == name

    return RateLimitConfig(
        rate_limit=("minute", per_minute),
        identifier_for_request=lambda request: f"{name}:{_caller(request)}",
        check_throttle_handler=check,
        store=f"rate_limit_{name}",
    ).middleware


def rate_limits(settings: Settings) -> list[Middleware]:
    budgets = [
        ("generations", settings.rate_limit_generations_per_minute),
        ("reads", settings.rate_limit_reads_per_minute),
        ("requests", settings.rate_limit_requests_per_minute),
    ]
    return [_budget(name, limit) for name, limit in budgets if limit > 0]
