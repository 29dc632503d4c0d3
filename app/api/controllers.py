"""HTTP controllers: translate requests to service calls and results to responses."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post, put
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
    EventsAccepted,
    EventsPost,
    FeedbackIn,
    FeedbackOut,
    HomepageCreate,
    HomepageOut,
    ProductPage,
    ProductUpsert,
    SearchHit,
    SearchResults,
    ShopperOut,
    ShopperPut,
    UpsertSummary,
)
from app.api.service import BannerService
from app.catalog.updates import CatalogUpdater, ShopperEvent
from app.domain import Banner, Interaction, Product, Shopper
from app.retrieval.selector import CandidateFilters

# Bulk writes are larger than the 64 KiB every other request is held to.
MAX_BULK_BODY_BYTES = 8 * 1024 * 1024
RECENT_EVENTS_SHOWN = 20


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

    @post(
        "/{banner_id:str}/feedback",
        status_code=202,
        summary="An impression, click or conversion on a served banner (idempotent by event id)",
    )
    async def feedback(
        self, banner_id: str, data: FeedbackIn, service: BannerService, state: State
    ) -> FeedbackOut:
        banner = await service.store.get(banner_id[:64])
        if banner is None:
            raise Problem(404, "Not found", f"no banner '{banner_id[:64]}'")
        recorded = await state.feedback.record(data.event_id, banner, data.kind)
        return FeedbackOut(banner_id=banner.id, recorded=recorded)


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
        products = service.pipeline.catalog.on_sale_products
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

    @put(
        "/",
        summary="Create or replace products (bulk); only changed texts are embedded again",
        guards=[require_scope("admin")],
        request_max_body_size=MAX_BULK_BODY_BYTES,
    )
    async def upsert(self, data: ProductUpsert, updater: CatalogUpdater) -> UpsertSummary:
        result = await updater.upsert_products(data.products)
        return UpsertSummary(
            created=result.created,
            updated=result.updated,
            unchanged=result.unchanged,
            embedded=result.embedded,
            catalog_size=result.catalog_size,
        )

    @get("/{product_id:str}", summary="One product")
    async def get_product(self, product_id: str, service: BannerService) -> Product:
        catalog = service.pipeline.catalog
        product = catalog.get(product_id[:64])
        if product is None or not catalog.on_sale(product.id):
            raise Problem(404, "Not found", f"no product '{product_id[:64]}' on sale")
        return product

    @delete(
        "/{product_id:str}",
        summary="Withdraw a product from sale (PUT it again to bring it back)",
        guards=[require_scope("admin")],
        status_code=204,
    )
    async def withdraw(self, product_id: str, updater: CatalogUpdater) -> None:
        try:
            await updater.withdraw_product(product_id[:64])
        except LookupError:
            raise Problem(404, "Not found", f"no product '{product_id[:64]}' on sale") from None


def _shopper_out(shopper: Shopper) -> ShopperOut:
    return ShopperOut(
        id=shopper.id,
        name=shopper.name,
        locale=shopper.locale,
        segment=shopper.segment,
        interests=list(shopper.interests),
        events=len(shopper.history),
        recent=list(reversed(shopper.history[-RECENT_EVENTS_SHOWN:])),
    )


def _shopper_id(shopper_id: str) -> str:
    try:
        Shopper(id=shopper_id)
    except ValueError:
        raise Problem(
            400,
            "Invalid request",
            "shopper_id: 1-64 letters, digits, '_', '.', ':' or '-'",
            errors=[{"field": "shopper_id", "message": "invalid identifier"}],
        ) from None
    return shopper_id


class ShopperController(Controller):
    path = "/v1/shoppers"
    tags = ["shoppers"]
    guards = [require_scope("cms")]

    @get("/{shopper_id:str}", summary="A shopper's profile and recent events")
    async def get_shopper(self, shopper_id: str, updater: CatalogUpdater) -> ShopperOut:
        shoppers = updater.pipeline.shoppers
        if not shoppers.known(_shopper_id(shopper_id)):
            raise Problem(404, "Not found", f"no shopper '{shopper_id}'")
        return _shopper_out(shoppers.get(shopper_id))

    @put("/{shopper_id:str}", summary="Create or replace a shopper's profile (history is kept)")
    async def put_shopper(
        self, shopper_id: str, data: ShopperPut, updater: CatalogUpdater
    ) -> ShopperOut:
        profile = Shopper(id=_shopper_id(shopper_id), **data.model_dump())
        return _shopper_out(await updater.put_profile(profile))


class EventController(Controller):
    path = "/v1/events"
    tags = ["shoppers"]
    guards = [require_scope("cms")]

    @post(
        "/",
        status_code=202,
        summary="Record views, add-to-carts and purchases; shoppers' vectors follow",
        request_max_body_size=MAX_BULK_BODY_BYTES,
    )
    async def record(self, data: EventsPost, updater: CatalogUpdater) -> EventsAccepted:
        catalog = updater.pipeline.catalog
        unknown = [
            {"field": f"events[{i}].product_id", "message": f"unknown product '{e.product_id}'"}
            for i, e in enumerate(data.events)
            if e.product_id not in catalog
        ]
        if unknown:
            raise Problem(
                400,
                "Invalid request",
                f"{len(unknown)} event(s) name products not in the catalog; nothing was recorded",
                errors=unknown[:50],
            )
        now = datetime.now(UTC)
        sizes = await updater.record_events(
            [
                ShopperEvent(
                    e.shopper_id, Interaction(product_id=e.product_id, type=e.type, ts=e.ts or now)
                )
                for e in data.events
            ]
        )
        return EventsAccepted(accepted=len(data.events), history_sizes=sizes)
