"""The catalog slice's wire types: products, shoppers and their events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from app.domain import (
    MAX_INTERESTS,
    EventType,
    Identifier,
    Interaction,
    Interest,
    Locale,
    Product,
    Segment,
    ShopperName,
)

MAX_CLOCK_SKEW = timedelta(minutes=5)
MAX_PRODUCTS_PER_UPSERT = 1000
MAX_EVENTS_PER_POST = 5000


class ProductPage(BaseModel):
    products: list[Product]
    total: int
    offset: int


class SearchHit(BaseModel):
    product: Product
    score: float


class SearchResults(BaseModel):
    query: str
    results: list[SearchHit]


class ProductUpsert(BaseModel):
    model_config = ConfigDict(extra="forbid")

    products: list[Product] = Field(min_length=1, max_length=MAX_PRODUCTS_PER_UPSERT)

    @field_validator("products")
    @classmethod
    def _unique_ids(cls, products: list[Product]) -> list[Product]:
        seen: set[str] = set()
        for product in products:
            if product.id in seen:
                raise ValueError(f"product id '{product.id}' appears twice")
            seen.add(product.id)
        return products


class SuspiciousText(BaseModel):
    """Product text that looks like markup, chat tokens or instructions. The product is stored
    and sold; its words are never quoted by fallback copy (app/guards.py)."""

    product_id: str
    field: str
    findings: list[str]


class UpsertResult(BaseModel):
    created: list[str]
    updated: list[str]
    unchanged: int
    embedded: int = Field(description="products embedded again because their text changed")
    catalog_size: int
    suspicious_text: list[SuspiciousText] = Field(
        default_factory=list, description="texts to review in the products just written"
    )


class ShopperPut(BaseModel):
    """A shopper's profile. Their history is not sent here: it grows through /v1/events."""

    model_config = ConfigDict(extra="forbid")

    name: ShopperName = ""
    locale: Locale = "en-US"
    segment: Segment = "unknown"
    interests: list[Interest] = Field(default_factory=list, max_length=MAX_INTERESTS)


class ShopperOut(BaseModel):
    id: str
    name: str
    locale: str
    segment: str
    interests: list[str]
    events: int = Field(description="events in the shopper's history")
    recent: list[Interaction] = Field(description="the newest events, newest first")


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shopper_id: Identifier
    product_id: Identifier
    type: EventType
    ts: AwareDatetime | None = Field(default=None, description="default: when received")
    event_id: Identifier | None = Field(
        default=None,
        description="the client's id for this event: an id already recorded is not recorded "
        "again (a retry is safe). Default: `<Idempotency-Key>:<index>` when that header is "
        "sent; with neither, the event is always recorded.",
    )

    @field_validator("ts")
    @classmethod
    def _not_in_future(cls, ts: datetime | None) -> datetime | None:
        if ts is not None and ts > datetime.now(UTC) + MAX_CLOCK_SKEW:
            raise ValueError("ts is in the future")
        return ts


class EventsPost(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS_PER_POST)


class EventsAccepted(BaseModel):
    accepted: int = Field(description="events recorded by this request")
    duplicates: int = Field(description="events whose id was recorded already: left as they were")
    history_sizes: dict[str, int] = Field(description="each shopper's history length after")
