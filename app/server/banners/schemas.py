"""The banner slice's wire types: what the CMS sends and what it gets back."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.domain import Banner, FeedbackKind, Homepage, Identifier, Locale, Name
from app.retrieval.selector import CandidateFilters
from app.server.profiles import ShopperProfile


class ShopperRequest(BaseModel):
    """Who the copy is for: a stored shopper by id, or an inline profile."""

    model_config = ConfigDict(extra="forbid")

    shopper_id: Identifier | None = None
    profile: ShopperProfile | None = None
    locale: Locale | None = None
    filters: CandidateFilters = Field(default_factory=CandidateFilters)
    strict: bool = Field(
        default=False, description="503 instead of a fallback when the engine is down or times out"
    )

    @model_validator(mode="after")
    def _someone(self) -> ShopperRequest:
        if self.shopper_id is None and self.profile is None:
            raise ValueError("give a shopper_id or a profile")
        return self


MAX_WAIT_MS = 120_000


class BannerCreate(ShopperRequest):
    placement: Name = "home_hero"
    template: Name | None = Field(default=None, description="default: the placement's template")
    count: int = Field(default=1, ge=1, le=8)
    max_wait_ms: int | None = Field(
        default=None,
        ge=0,
        le=MAX_WAIT_MS,
        description="answer within this time: the shopper's fresh pre-generated banner at "
        "once, else a live one if it is made in time, else the fallback banner while the live "
        "one is finished and stored for the next read (none: wait for the live one)",
    )


Source = Literal["live", "cache", "pregenerated", "fallback"]


class BannerList(BaseModel):
    banners: list[Banner]
    cached: bool = Field(description="made earlier (cache or pre-generated), not for this call")
    source: Source = Field(
        default="live",
        description="live: made for this call; cache: an identical earlier call's; "
        "pregenerated: the shopper's stored banner; fallback: max_wait_ms ran out",
    )
    generating: bool = Field(
        default=False,
        description="the live banner is still being made; it is stored for the next read",
    )


class HomepageCreate(ShopperRequest):
    sections: list[Name] | None = Field(
        default=None, min_length=1, max_length=8, description="template per section, in order"
    )


class HomepageOut(BaseModel):
    homepage: Homepage


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: Identifier = Field(description="the client's id for this event: resending is safe")
    kind: FeedbackKind


class FeedbackOut(BaseModel):
    banner_id: str
    recorded: bool = Field(description="false when this event id was already recorded")
