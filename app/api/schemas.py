"""The wire types of the banner API: what the CMS sends and what it gets back."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.domain import Banner, Homepage, Identifier, Interaction, Product
from app.retrieval.selector import CandidateFilters

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
