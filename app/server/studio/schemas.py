"""The studio slice's wire types. Results are the service's own dataclasses (TemplateSummary,
VersionView, ExperimentReport, AuditEntry ...), sent as they are; only what the service does
not already describe is declared here."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.domain import MAX_VERSION, Banner, Identifier, Label, Name
from app.prompting.lint import LintProblem
from app.prompting.templates import MAX_TEMPLATE_BYTES
from app.server.profiles import ShopperProfile
from app.server.studio.service import MAX_PREVIEW_BANNERS, Preview

Source = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEMPLATE_BYTES)]


class VersionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Source
    message: Annotated[str, StringConstraints(max_length=300)] = ""
    draft: bool = False
    base_version: int | None = Field(
        default=None,
        ge=1,
        le=MAX_VERSION,
        description="the version this edit started from (or If-Match)",
    )


class LabelMove(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_VERSION)


class PreviewCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(default=None, ge=1, le=MAX_VERSION)
    label: Label | None = None
    source: Source | None = Field(default=None, description="unsaved text to try")
    shopper_id: Identifier | None = None
    profile: ShopperProfile | None = None
    generate: int = Field(
        default=0,
        ge=0,
        le=MAX_PREVIEW_BANNERS,
        description="banners to generate (0: prompt only); each takes a generation slot",
    )

    @model_validator(mode="after")
    def _one_choice(self) -> PreviewCreate:
        if sum(x is not None for x in (self.version, self.label, self.source)) > 1:
            raise ValueError("give at most one of version, label, source")
        return self


class Message(BaseModel):
    role: str
    content: str


class PreviewOut(BaseModel):
    template: str
    version: int | None
    shopper_id: str
    messages: list[Message]
    problems: list[LintProblem]
    banners: list[Banner]

    @classmethod
    def of(cls, preview: Preview) -> PreviewOut:
        messages = preview.prompt.messages if preview.prompt else ()
        return cls(
            template=preview.template,
            version=preview.version,
            shopper_id=preview.shopper_id,
            messages=[Message(role=role, content=content) for role, content in messages],
            problems=preview.problems,
            banners=preview.banners,
        )


class SplitIn(BaseModel):
    """``split``: ``variant_weight`` of shoppers get the variant. ``thompson``: it is the first
    period's weight, then the bandit sets it every ``period_s`` from the clicks."""

    model_config = ConfigDict(extra="forbid")

    template: Name
    control: Label = "production"
    variant: Label
    variant_weight: float = Field(default=0.5, gt=0.0, lt=1.0)
    strategy: Literal["split", "thompson"] = "split"
    min_share: float = Field(default=0.1, ge=0.01, le=0.5)  # thompson: each arm's least share
    period_s: float = Field(default=86_400.0, ge=60.0, le=90 * 86_400.0)
