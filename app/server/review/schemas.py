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


# A field of copy as a marketer types it: the template's schema holds it to its own caps (a
# hero's headline is shorter than this); this is the edge's bound.
EditedText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class CopyEdit(BaseModel):
    """A marketer's copy in place of the model's: any of the three fields (the others stay).
    Held to what the model's copy is held to (the schema, the guards, the rubric's hard
    findings); the products, layout and tone stay as made."""

    model_config = ConfigDict(extra="forbid")

    headline: EditedText | None = None
    subheadline: EditedText | None = None
    cta: EditedText | None = None

    def fields(self) -> dict[str, str]:
        return self.model_dump(exclude_none=True)


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

    edit: CopyEdit | None = Field(
        default=None,
        description="approve with this copy in place of the model's (it is served; the "
        "model's is kept beside it and audited)",
    )

    @field_validator("reason")
    @classmethod
    def _a_rejection_says_why(cls, reason: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("decision") == "rejected" and not reason:
            raise ValueError("a rejection needs a reason")
        return reason or None

    @field_validator("edit")
    @classmethod
    def _an_edit_is_approved(cls, edit: CopyEdit | None, info: ValidationInfo) -> CopyEdit | None:
        if edit is None:
            return None
        if info.data.get("decision") != "approved":
            raise ValueError("only an approval carries an edit")
        if not edit.fields():
            raise ValueError("an edit changes at least one of headline, subheadline, cta")
        return edit


class DecisionsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decisions: list[DecisionIn] = Field(min_length=1, max_length=MAX_DECISIONS)


class ReviewRequirement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    required: bool = Field(description="true: the placement's next jobs store banners pending")
