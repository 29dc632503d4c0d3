"""Banner endpoints: requests in, service calls, responses out."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.openapi import ResponseSpec
from litestar.params import Parameter

from app.domain import Banner
from app.server.auth import actor, require_scope
from app.server.banners.schemas import (
    BannerCreate,
    BannerList,
    FeedbackIn,
    FeedbackOut,
    HomepageCreate,
    HomepageOut,
)
from app.server.banners.service import BannerService
from app.server.errors import problems
from app.server.params import IdPath


def _etag(banners: list[Banner]) -> str:
    """A validator for these banners' contents. A banner's id names its inputs (shopper,
    template, products), not its copy: a generation made again keeps the id with new copy, so
    the id alone would answer 304 to a client holding the old copy. Each generation has its
    own ``created_at``."""
    material = "|".join(f"{b.id}@{b.created_at.isoformat()}" for b in banners)
    return '"' + hashlib.sha256(material.encode()).hexdigest()[:32] + '"'


class BannerController(Controller):
    path = "/v1/banners"
    tags = ["banners"]
    guards = [require_scope("cms")]

    @post(
        "/",
        status_code=200,
        summary="Generate banners for a shopper and a placement",
        opt=problems("not-found", "busy", "engine-unavailable"),
    )
    async def create(
        self, data: BannerCreate, banners: BannerService, request: Request[Any, Any, Any]
    ) -> Response[BannerList]:
        answer = await banners.banners(data, api_key=actor(request))
        # A fallback stands in for a banner still being made: never kept by a client.
        caching = (
            "no-store"
            if answer.source == "fallback"
            else f"private, max-age={int(banners.cache_ttl_s)}"
        )
        return Response(answer, headers={"ETag": _etag(answer.banners), "Cache-Control": caching})

    @get(
        "/{banner_id:str}",
        summary="A stored banner by id",
        opt=problems("not-found"),
        responses={304: ResponseSpec(None, description="Not modified (If-None-Match)")},
    )
    async def fetch(
        self,
        banner_id: IdPath,
        banners: BannerService,
        if_none_match: Annotated[
            str | None, Parameter(header="If-None-Match", description="the ETag you hold")
        ] = None,
    ) -> Response[Banner]:
        banner = await banners.banner(banner_id)
        etag = _etag([banner])
        if if_none_match == etag:
            return Response(None, status_code=304, headers={"ETag": etag})  # type: ignore[arg-type]
        return Response(banner, headers={"ETag": etag, "Cache-Control": "private, max-age=3600"})

    @post(
        "/{banner_id:str}/feedback",
        status_code=202,
        summary="An impression, click or conversion on a served banner (idempotent by event id)",
        opt=problems("not-found"),
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

    @post(
        "/",
        status_code=200,
        summary="An ordered homepage of sections for a shopper",
        opt=problems("not-found", "busy", "engine-unavailable"),
    )
    async def create(
        self, data: HomepageCreate, banners: BannerService, request: Request[Any, Any, Any]
    ) -> HomepageOut:
        return HomepageOut(homepage=await banners.homepage(data, api_key=actor(request)))
