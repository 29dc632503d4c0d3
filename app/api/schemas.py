"""The wire types of the banner API: what the CMS sends and what it gets back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from app.domain import Banner, EventType, Homepage, Identifier, Interaction, Product
from app.retrieval.selector import CandidateFilters
from app.store.feedback import FeedbackKind

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,48}$")]


class ShopperProfile(BaseModel):
    """An inline profile, for shoppers the service does not store."""

    model_config = ConfigDict(extra="forbid")

    id: Identifier = "inline"
    segment: Annotated[str, StringConstraints(max_length=40)] = "unknown"
    interests: list[Annotated[str, StringConstraints(min_length=1, max_length=80)]] = Field(
        default_factory=list, max_length=20
    )
    history: list[Interaction] = Field(default_factory=list, max_length=500)


class _ShopperRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shopper_id: Identifier | None = None
    profile: ShopperProfile | None = None
    locale: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")] | None = None
    filters: CandidateFilters = Field(default_factory=CandidateFilters)
    strict: bool = Field(
        default=False, description="503 instead of a fallback when the engine is down or times out"
    )

    @model_validator(mode="after")
    def _someone(self) -> _ShopperRequest:
        if self.shopper_id is None and self.profile is None:
            raise ValueError("give a shopper_id or a profile")
        return self


class BannerCreate(_ShopperRequest):
    placement: Name = "home_hero"
    template: Name | None = Field(default=None, description="default: the placement's template")
    count: int = Field(default=1, ge=1, le=8)


class BannerList(BaseModel):
    banners: list[Banner]
    cached: bool


class HomepageCreate(_ShopperRequest):
    sections: list[Name] | None = Field(
        default=None, min_length=1, max_length=8, description="template per section, in order"
    )


class HomepageOut(BaseModel):
    homepage: Homepage


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


# --- catalog and shopper writes ---------------------------------------------------------------

MAX_CLOCK_SKEW = timedelta(minutes=5)
MAX_PRODUCTS_PER_UPSERT = 1000
MAX_EVENTS_PER_POST = 5000


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


class UpsertSummary(BaseModel):
    created: list[str]
    updated: list[str]
    unchanged: int
    embedded: int = Field(description="products embedded again because their text changed")
    catalog_size: int


class ShopperPut(BaseModel):
    """A shopper's profile. Their history is not sent here: it grows through /v1/events."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=80)] = ""
    locale: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")] = "en-US"
    segment: Annotated[str, StringConstraints(strip_whitespace=True, max_length=40)] = "unknown"
    interests: list[Annotated[str, StringConstraints(min_length=1, max_length=80)]] = Field(
        default_factory=list, max_length=20
    )


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
    accepted: int
    history_sizes: dict[str, int] = Field(description="each shopper's history length after")


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: Identifier = Field(description="the client's id for this event: resending is safe")
    kind: FeedbackKind


class FeedbackOut(BaseModel):
    banner_id: str
    recorded: bool = Field(description="false when this event id was already recorded")
