"""ASGI middleware around every request."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, StatusCode

from app.domain import IDENTIFIER_PATTERN
from app.logs import get_logger
from app.server.metrics import REQUEST_SECONDS, REQUESTS
from app.tracing import REQUEST_ID, tracer

log = get_logger("marquee.server")
_REQUEST_ID = re.compile(IDENTIFIER_PATTERN, re.ASCII)


def observability(app: ASGIApp) -> ASGIApp:
    """Request id (kept from X-Request-ID or made) bound to every log line of the request and
    to the engine's calls, a server span (a child of the caller's ``traceparent``), one
    ``request`` log event, request metrics."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        # A caller's id is kept only if it is a plain token: it goes into logs and headers.
        incoming = headers.get("x-request-id", "")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex[:16]
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        method = str(scope.get("method", "HTTP"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableScopeHeaders(message)["X-Request-ID"] = request_id
            await send(message)

        # This request's context is its own: nothing bound by an earlier one is carried over.
        # The auth guard adds api_key once it knows the key.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        request_token = REQUEST_ID.set(request_id)
        start = time.perf_counter()
        with tracer.start_as_current_span(
            method, context=propagate.extract(headers), kind=SpanKind.SERVER
        ) as span:
            try:
                await app(scope, receive, send_with_id)
            finally:
                elapsed = time.perf_counter() - start
                route = str(scope.get("path_template") or "unmatched")
                REQUESTS.labels(route, str(status)).inc()
                REQUEST_SECONDS.labels(route).observe(elapsed)
                if span.is_recording():  # attributes cost nothing to skip when tracing is off
                    span.update_name(f"{method} {route}")
                    span.set_attributes(
                        {
                            "http.request.method": method,
                            "http.route": route,
                            "url.path": str(scope.get("path", "")),
                            "http.response.status_code": status,
                            "marquee.request_id": request_id,
                            "marquee.api_key": str(state.get("api_key", "")),
                        }
                    )
                    if status >= 500:
                        span.set_status(StatusCode.ERROR)
                log.info(
                    "request",
                    method=method,
                    path=scope.get("path"),
                    route=route,
                    status=status,
                    ms=round(elapsed * 1000, 1),
                )
                REQUEST_ID.reset(request_token)
                structlog.contextvars.clear_contextvars()

    return middleware
