"""HTTP controllers: translate requests to service calls and results to responses."""

from __future__ import annotations

import hashlib
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.response import Response as PlainResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.auth import require_scope
from app.api.errors import Problem
from app.api.metrics import REGISTRY
from app.api.schemas import BannerCreate, BannerList, HomepageCreate, HomepageOut
from app.api.service import BannerService
from app.domain import Banner


def _etag(ids: list[str]) -> str:
    return '"' + hashlib.sha256("|".join(ids).encode()).hexdigest()[:32] + '"'


class BannerController(Controller):
    path = "/v1/banners"
    tags = ["banners"]
    guards = [require_scope("cms")]

    @post("/", status_code=200, summary="Generate banners for a shopper and a placement")
    async def create(
        self, data: BannerCreate, service: BannerService, state: State
    ) -> Response[BannerList]:
        async with state.limit.slot():
            banners, cached = await service.banners(data)
        return Response(
            BannerList(banners=banners, cached=cached),
            headers={
                "ETag": _etag([b.id for b in banners]),
                "Cache-Control": f"private, max-age={int(service.cache_ttl_s)}",
            },
        )

    @get("/{banner_id:str}", summary="A stored banner by id")
    async def fetch(
        self, banner_id: str, service: BannerService, request: Request[Any, Any, Any]
    ) -> Response[Banner]:
        if len(banner_id) > 64:
            raise Problem(
                400,
                "Invalid request",
                "banner_id is at most 64 characters",
                errors=[{"field": "banner_id", "message": "too long"}],
            )
        banner = await service.store.get(banner_id)
        if banner is None:
            raise Problem(404, "Not found", f"no banner '{banner_id}'")
        etag = _etag([banner.id])
        if request.headers.get("If-None-Match") == etag:
            return Response(None, status_code=304, headers={"ETag": etag})  # type: ignore[arg-type]
        return Response(banner, headers={"ETag": etag, "Cache-Control": "private, max-age=3600"})


class HomepageController(Controller):
    path = "/v1/homepages"
    tags = ["homepages"]
    guards = [require_scope("cms")]

    @post("/", status_code=200, summary="An ordered homepage of sections for a shopper")
    async def create(
        self, data: HomepageCreate, service: BannerService, state: State
    ) -> HomepageOut:
        async with state.limit.slot():
            page = await service.homepage(data, state.settings.homepage_sections)
        return HomepageOut(homepage=page)


class HealthController(Controller):
    tags = ["operations"]

    @get("/healthz", summary="Alive")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", summary="Model, index and engine ready")
    async def readyz(self, state: State) -> Response[dict[str, Any]]:
        readiness = state.readiness()
        return Response(readiness, status_code=200 if readiness["ready"] else 503)

    @get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics(self) -> PlainResponse[bytes]:
        return PlainResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
