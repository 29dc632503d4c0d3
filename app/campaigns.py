"""Campaigns: the running sales a banner may talk about, and only where they apply.

A marketer states a campaign (a name, when it runs, a discount or a message, and the products
or categories it covers). The pipeline gives a template the campaigns that are running now and
cover one of its candidates; the guards let copy name a campaign, its discount or its offer
words only when a running campaign covers a product the banner shows. A campaign that ended,
or covers none of the shown products, is an invented claim like any other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from app.domain import Name, Product

MAX_CAMPAIGN_PRODUCTS = 5_000
MAX_CAMPAIGNS_IN_PROMPT = 3  # more would crowd the products out of a small model's prompt


class Campaign(BaseModel):
    """One sale or promotion as the marketer states it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Name
    name: str = Field(min_length=3, max_length=60, pattern=r"^[\w][\w '&-]*[\w]$")
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    discount_percent: int | None = Field(default=None, ge=1, le=90)
    message: str | None = Field(default=None, min_length=3, max_length=120, validate_default=True)
    products: tuple[str, ...] = Field(default=(), max_length=MAX_CAMPAIGN_PRODUCTS)
    categories: tuple[str, ...] = Field(default=(), max_length=50, validate_default=True)

    # Rules across fields, each checked on the field a marketer would fix (its error names it).
    @field_validator("ends_at")
    @classmethod
    def _after_start(cls, value: datetime, info: ValidationInfo) -> datetime:
        starts = info.data.get("starts_at")
        if starts is not None and value <= starts:
            raise ValueError("must be after starts_at")
        return value

    @field_validator("message")
    @classmethod
    def _an_offer(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("discount_percent") is None:
            raise ValueError("a campaign states a discount_percent or a message (or both)")
        return value

    @field_validator("categories")
    @classmethod
    def _covers_something(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if not value and not info.data.get("products"):
            raise ValueError("a campaign covers products or categories (or both)")
        return value

    def running(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def covers(self, product: Product) -> bool:
        return product.id in self.products or product.category.casefold() in {
            c.casefold() for c in self.categories
        }

    @property
    def offer(self) -> str:
        """What the copy may say about it: its message, else the discount."""
        if self.message:
            return self.message
        return f"{self.discount_percent}% off"

    @property
    def facts(self) -> str:
        """Its own words, which the copy may repeat about the products it covers."""
        discount = f" {self.discount_percent}% off" if self.discount_percent else ""
        return f"{self.name} {self.message or ''}{discount}"


def _name_pattern(name: str) -> re.Pattern[str]:
    words = r"\s+".join(re.escape(word) for word in name.split())
    return re.compile(rf"(?<!\w){words}(?!\w)", re.IGNORECASE)


@dataclass(frozen=True)
class CampaignBook:
    """Every campaign the store knows (running, planned or ended), as of one read. Immutable:
    a change is a new book, swapped into the pipeline in one assignment."""

    campaigns: tuple[Campaign, ...] = ()
    _patterns: dict[str, re.Pattern[str]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for campaign in self.campaigns:
            self._patterns[campaign.id] = _name_pattern(campaign.name)

    @classmethod
    def of(cls, campaigns: Iterable[Campaign]) -> CampaignBook:
        return cls(tuple(sorted(campaigns, key=lambda c: c.id)))

    def __len__(self) -> int:
        return len(self.campaigns)

    def covering(self, products: Sequence[Product], now: datetime | None = None) -> list[Campaign]:
        """The campaigns running at ``now`` that cover at least one of ``products``; the
        ones covering more of them first, then the bigger discount."""
        now = now or datetime.now(UTC)
        found = []
        for campaign in self.campaigns:
            if not campaign.running(now):
                continue
            covered = sum(campaign.covers(p) for p in products)
            if covered:
                found.append((covered, campaign.discount_percent or 0, campaign))
        found.sort(key=lambda item: (-item[0], -item[1], item[2].id))
        return [campaign for _, _, campaign in found]

    def named_in(self, text: str) -> list[Campaign]:
        """Every campaign whose name the text mentions, running or not."""
        return [c for c in self.campaigns if self._patterns[c.id].search(text)]


NO_CAMPAIGNS = CampaignBook()
