"""The keys slice's wire types. Results are the service's own dataclasses (KeyView, NewKey)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.domain import KeyName

# app.store.repositories.SCOPES, as a type the schema can list (a test keeps them equal).
Scope = Literal["cms", "marketer", "admin"]
# As `marquee keys --expires-days`: 100 years is beyond any sensible lifetime.
MAX_DAYS = 36500


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: KeyName = Field(description="1-80 of [A-Za-z0-9_.@:-], from a letter or digit")
    scopes: list[Scope] = Field(min_length=1, max_length=3)
    expires_in_days: int | None = Field(
        default=None, ge=1, le=MAX_DAYS, description="days until it stops working (none: never)"
    )
