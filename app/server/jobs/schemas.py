"""The jobs slice's wire types. A job is shown as the service's ``JobView``."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.domain import Identifier, Name

# POST /v1/jobs may carry an explicit id list far beyond the API's usual body cap.
MAX_JOB_BODY_BYTES = 32 * 1024 * 1024
MAX_SHOPPER_IDS = 1_000_000

Selection = Annotated[
    str,
    StringConstraints(pattern=r"^(all|ids|segment:[^\s].{0,39})$"),
]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    placement: Name = Field(description="the placement to fill (home_hero, ...)")
    shoppers: Selection = Field(
        default="all", description="all, segment:<name>, or ids (with shopper_ids)"
    )
    shopper_ids: list[Identifier] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SHOPPER_IDS,
        description="the shoppers, for shoppers=ids",
    )
    stale_only: bool = Field(default=False, description="only what is missing or stale")

    @model_validator(mode="after")
    def ids_go_with_ids(self) -> Self:
        if (self.shoppers == "ids") != (self.shopper_ids is not None):
            raise ValueError("shopper_ids is given exactly when shoppers is 'ids'")
        return self
