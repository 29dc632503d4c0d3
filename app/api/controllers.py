"""HTTP controllers: translate requests to service calls and results to responses."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import Parameter
from litestar.response import Response as PlainResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.auth import require_scope
from app.api.errors import Problem
from app.api.metrics import REGISTRY
from app.api.schemas import (
    BannerCreate,
    BannerList,
    HomepageCreate,
    HomepageOut,
    ProductPage,
    SearchHit,
    SearchResults,
)
from app.api.service import BannerService
from app.domain import Banner, Product
from app.retrieval.selector import CandidateFilters


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


class ProductController(Controller):
    path = "/v1/products"
    tags = ["catalog"]
    guards = [require_scope("cms")]

    @get("/", summary="The catalog, a page at a time")
    async def list_products(
        self,
        service: BannerService,
        offset: Annotated[int, Parameter(ge=0, le=10_000_000)] = 0,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
        category: Annotated[str | None, Parameter(max_length=80)] = None,
    ) -> ProductPage:
        products = service.pipeline.catalog.products
        if category:
            products = tuple(p for p in products if p.category.casefold() == category.casefold())
        return ProductPage(
            products=list(products[offset : offset + limit]), total=len(products), offset=offset
        )

    @get("/search", summary="Semantic search over the catalog")
    async def search(
        self,
        service: BannerService,
        q: Annotated[str, Parameter(min_length=1, max_length=200)],
        limit: Annotated[int, Parameter(ge=1, le=50)] = 10,
        category: Annotated[str | None, Parameter(max_length=80)] = None,
        max_price: Annotated[float | None, Parameter(ge=0)] = None,
        in_stock_only: bool = True,
    ) -> SearchResults:
        filters = CandidateFilters(
            in_stock_only=in_stock_only,
            exclude_purchased=False,
            include_categories=(category,) if category else (),
            max_price=max_price,
        )
        hits = service.pipeline.selector.search(q, limit, filters)
        return SearchResults(
            query=q, results=[SearchHit(product=p, score=round(s, 4)) for p, s in hits]
        )

    @get("/{product_id:str}", summary="One product")
    async def get_product(self, product_id: str, service: BannerService) -> Product:
        product = service.pipeline.catalog.get(product_id[:64])
        if product is None:
            raise Problem(404, "Not found", f"no product '{product_id[:64]}'")
        return product
