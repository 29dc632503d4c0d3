"""Catalog endpoints: products, shoppers and their events."""

from __future__ import annotations

import re
from typing import Annotated

from litestar import Controller, delete, get, post, put
from litestar.params import Parameter

from app.domain import IDENTIFIER_CHARS, IDENTIFIER_PATTERN, Product
from app.server.auth import require_scope
from app.server.catalog.schemas import (
    EventsAccepted,
    EventsPost,
    ProductPage,
    ProductUpsert,
    SearchResults,
    ShopperOut,
    ShopperPut,
    UpsertResult,
)
from app.server.catalog.service import CatalogService
from app.server.errors import invalid, problems
from app.server.params import IdPath

# Bulk writes are larger than the 64 KiB every other request is held to.
MAX_BULK_BODY_BYTES = 8 * 1024 * 1024
IDEMPOTENCY_KEY = "Idempotency-Key"


class ProductController(Controller):
    path = "/v1/products"
    tags = ["catalog"]
    guards = [require_scope("cms")]

    @get("/", summary="The catalog, a page at a time")
    async def list_products(
        self,
        catalog: CatalogService,
        offset: Annotated[int, Parameter(ge=0, le=10_000_000)] = 0,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
        category: Annotated[str | None, Parameter(max_length=80)] = None,
    ) -> ProductPage:
        return catalog.products(offset, limit, category)

    @get("/search", summary="Semantic search over the catalog")
    async def search(
        self,
        catalog: CatalogService,
        q: Annotated[str, Parameter(min_length=1, max_length=200)],
        limit: Annotated[int, Parameter(ge=1, le=50)] = 10,
        category: Annotated[str | None, Parameter(max_length=80)] = None,
        # schema_extra: Litestar 2.25 drops a 0 bound from an optional parameter's schema.
        max_price: Annotated[float | None, Parameter(ge=0, schema_extra={"minimum": 0})] = None,
        in_stock_only: bool = True,
    ) -> SearchResults:
        return catalog.search(
            q, limit, category=category, max_price=max_price, in_stock_only=in_stock_only
        )

    @put(
        "/",
        summary="Create or replace products (bulk); only changed texts are embedded again",
        guards=[require_scope("admin")],
        request_max_body_size=MAX_BULK_BODY_BYTES,
    )
    async def upsert(self, data: ProductUpsert, catalog: CatalogService) -> UpsertResult:
        return await catalog.upsert_products(data.products)

    @get("/{product_id:str}", summary="One product", opt=problems("not-found"))
    async def get_product(self, product_id: IdPath, catalog: CatalogService) -> Product:
        return catalog.product(product_id)

    @delete(
        "/{product_id:str}",
        summary="Withdraw a product from sale (PUT it again to bring it back)",
        guards=[require_scope("admin")],
        status_code=204,
        opt=problems("not-found"),
    )
    async def withdraw(self, product_id: IdPath, catalog: CatalogService) -> None:
        await catalog.withdraw_product(product_id)


class ShopperController(Controller):
    path = "/v1/shoppers"
    tags = ["shoppers"]
    guards = [require_scope("cms")]

    @get(
        "/{shopper_id:str}",
        summary="A shopper's profile and recent events",
        opt=problems("not-found"),
    )
    async def get_shopper(self, shopper_id: IdPath, catalog: CatalogService) -> ShopperOut:
        return catalog.shopper(shopper_id)

    @put("/{shopper_id:str}", summary="Create or replace a shopper's profile (history is kept)")
    async def put_shopper(
        self, shopper_id: IdPath, data: ShopperPut, catalog: CatalogService
    ) -> ShopperOut:
        return await catalog.put_profile(shopper_id, data)


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
    async def record(
        self,
        data: EventsPost,
        catalog: CatalogService,
        idempotency_key: Annotated[
            str | None,
            Parameter(
                header=IDEMPOTENCY_KEY,
                description=f"1-64 of [{IDENTIFIER_CHARS}]: events without an `event_id` get "
                "`<key>:<index>`, so the same batch sent again with the same key is recorded "
                "once",
                # Documented here, checked below: Litestar's own check would name the
                # argument (idempotency_key), not the header the client sent.
                schema_extra={"pattern": IDENTIFIER_PATTERN},
            ),
        ] = None,
    ) -> EventsAccepted:
        if idempotency_key is not None and not re.fullmatch(IDENTIFIER_PATTERN, idempotency_key):
            raise invalid(IDEMPOTENCY_KEY, "must be 1-64 of A-Z a-z 0-9 _ . : -")
        return await catalog.record_events(data.events, idempotency_key)
