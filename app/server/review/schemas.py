"""The review slice's wire types. Results are the service's own dataclasses (ReviewQueue,
DecisionReport, ReviewSetting), sent as they are; only the inputs are declared here."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from app.domain import Audience, Identifier, Name

MAX_DECISIONS = 500  # per call: one transaction
# 500 decisions with a reason each are well beyond the API's usual body cap.
MAX_DECISIONS_BODY_BYTES = 512 * 1024
MAX_QUEUE_LIMIT = 200

DecisionValue = Literal["approved", "rejected"]
# The queue's review states; "all": any.
QueueState = Literal["pending", "approved", "rejected", "none", "all"]
Flag = Literal["fallback", "stale"]  # only fallback copy / only banners marked stale
Reason = Annotated[str, StringConstraints(strip_whitespace=True, max_length=300)]
SubjectKey = Annotated[str, StringConstraints(max_length=64)]


class DecisionIn(BaseModel):
    """A decision on one stored banner, named by its row and the banner the reviewer saw."""

    model_config = ConfigDict(extra="forbid")

    placement: Name
    audience: Audience
    subject: SubjectKey = Field(
        default="", description="the shopper id or segment name; empty for popular"
    )
    banner_id: Identifier = Field(description="the banner reviewed (a replaced one: stale)")
    generated_at: AwareDatetime | None = Field(
        default=None,
        description="when the banner reviewed was made (from the queue): a banner made again "
        "since, even under the same id, is then stale too",
    )
    decision: DecisionValue
    reason: Reason | None = Field(
        default=None,
        validate_default=True,
        description="why (required to reject; shown to whoever regenerates it)",
    )

    @field_validator("reason")
    @classmethod
    def _a_rejection_says_why(cls, reason: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("decision") == "rejected" and not reason:
            raise ValueError("a rejection needs a reason")
        return reason or None


class DecisionsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decisions: list[DecisionIn] = Field(min_length=1, max_length=MAX_DECISIONS)


class ReviewRequirement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    required: bool = Field(description="true: the placement's next jobs store banners pending")
