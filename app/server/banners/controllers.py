"""Banner endpoints: requests in, service calls, responses out."""

from __future__ import annotations

import hashlib
from typing import Any

from litestar import Controller, Request, Response, get, post

from app.domain import Banner
from app.server.auth import require_scope
from app.server.banners.schemas import (
    BannerCreate,
    BannerList,
    FeedbackIn,
    FeedbackOut,
    HomepageCreate,
    HomepageOut,
)
from app.server.banners.service import BannerService
from app.server.params import IdPath


def _etag(ids: list[str]) -> str:
    return '"' + hashlib.sha256("|".join(ids).encode()).hexdigest()[:32] + '"'


class BannerController(Controller):
    path = "/v1/banners"
    tags = ["banners"]
    guards = [require_scope("cms")]

    @post("/", status_code=200, summary="Generate banners for a shopper and a placement")
    async def create(self, data: BannerCreate, banners: BannerService) -> Response[BannerList]:
        made, cached = await banners.banners(data)
        return Response(
            BannerList(banners=made, cached=cached),
            headers={
                "ETag": _etag([b.id for b in made]),
                "Cache-Control": f"private, max-age={int(banners.cache_ttl_s)}",
            },
        )

    @get("/{banner_id:str}", summary="A stored banner by id")
    async def fetch(
        self, banner_id: IdPath, banners: BannerService, request: Request[Any, Any, Any]
    ) -> Response[Banner]:
        banner = await banners.banner(banner_id)
        etag = _etag([banner.id])
        if request.headers.get("If-None-Match") == etag:
            return Response(None, status_code=304, headers={"ETag": etag})  # type: ignore[arg-type]
        return Response(banner, headers={"ETag": etag, "Cache-Control": "private, max-age=3600"})

    @post(
        "/{banner_id:str}/feedback",
        status_code=202,
        summary="An impression, click or conversion on a served banner (idempotent by event id)",
    )
    async def feedback(
        self, banner_id: IdPath, data: FeedbackIn, banners: BannerService
    ) -> FeedbackOut:
        recorded = await banners.record_feedback(banner_id, data.event_id, data.kind)
        return FeedbackOut(banner_id=banner_id, recorded=recorded)


class HomepageController(Controller):
    path = "/v1/homepages"
    tags = ["homepages"]
    guards = [require_scope("cms")]

    @post("/", status_code=200, summary="An ordered homepage of sections for a shopper")
    async def create(self, data: HomepageCreate, banners: BannerService) -> HomepageOut:
        return HomepageOut(homepage=await banners.homepage(data))
