"""Wire types of the campaigns slice."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from app.campaigns import MAX_CAMPAIGN_PRODUCTS, Campaign

Status = Literal["planned", "running", "ended"]


class CampaignIn(BaseModel):
    """A campaign as ``PUT /v1/campaigns/{id}`` takes it (the id is the path's)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=3,
        max_length=60,
        pattern=r"^[\w][\w '&-]*[\w]$",
        description="what copy may call it: letters, digits, spaces, ' & -",
        examples=["Winter Coffee Week"],
    )
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    discount_percent: int | None = Field(default=None, ge=1, le=90)
    message: str | None = Field(
        default=None, min_length=3, max_length=120, examples=["two bags for the price of one"]
    )
    products: list[str] = Field(default_factory=list, max_length=MAX_CAMPAIGN_PRODUCTS)
    categories: list[str] = Field(default_factory=list, max_length=50)


class CampaignOut(BaseModel):
    campaign: Campaign
    status: Status  # at the time of the answer
    updated: bool = False  # PUT: it existed before (else it was created)


class CampaignList(BaseModel):
    campaigns: list[CampaignOut]
    now: datetime
