"""Operations endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from prometheus_client import CONTENT_TYPE_LATEST

from app.server.metrics import exposition
from app.server.services import services


class HealthController(Controller):
    tags = ["operations"]

    @get("/healthz", summary="Alive")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @get(
        "/readyz",
        summary="Model, index and engine ready",
        responses={
            503: ResponseSpec(
                dict[str, Any], description="Not ready yet: the same body", generate_examples=False
            )
        },
    )
    async def readyz(self, state: State) -> Response[dict[str, Any]]:
        readiness = services(state).readiness()
        return Response(readiness, status_code=200 if readiness["ready"] else 503)

    @get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics(self) -> Response[bytes]:
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
