"""The inline shopper profile, shared by the banner and studio slices' wire types."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.domain import MAX_INTERESTS, Identifier, Interaction, Interest, Segment, Shopper


class ShopperProfile(BaseModel):
    """An inline profile, for shoppers the service does not store."""

    model_config = ConfigDict(extra="forbid")

    id: Identifier = "inline"
    segment: Segment = "unknown"
    interests: list[Interest] = Field(default_factory=list, max_length=MAX_INTERESTS)
    history: list[Interaction] = Field(default_factory=list, max_length=500)

    def shopper(self, locale: str | None = None) -> Shopper:
        fields = self.model_dump()
        if locale:
            fields["locale"] = locale
        return Shopper.model_validate(fields)
