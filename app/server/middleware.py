"""ASGI middleware around every request."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.server.metrics import REQUEST_SECONDS, REQUESTS

log = logging.getLogger("marquee.server")
_REQUEST_ID = re.compile(r"[\w.:-]{1,64}", re.ASCII)


def observability(app: ASGIApp) -> ASGIApp:
    """Request id (kept from X-Request-ID or made), one JSON log line, request metrics."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        # A caller's id is kept only if it is a plain token: it goes into logs and headers.
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableScopeHeaders(message)["X-Request-ID"] = request_id
            await send(message)

        start = time.perf_counter()
        try:
            await app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = str(scope.get("path_template") or "unmatched")
            REQUESTS.labels(route, str(status)).inc()
            REQUEST_SECONDS.labels(route).observe(elapsed)
            log.info(
                json.dumps(
                    {
                        "event": "request",
                        "request_id": request_id,
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "route": route,
                        "status": status,
                        "ms": round(elapsed * 1000, 1),
                    }
                )
            )

    return middleware
