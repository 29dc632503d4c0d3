"""The template studio over HTTP: versions, labels, previews, diffs, experiments, audit.

``marketer`` writes, ``cms`` (or ``marketer``) reads. Every write says which version it
started from (``If-Match``), so a stale editor gets 409 with the current version.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post, put
from litestar.params import Parameter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.api.auth import require_scope
from app.api.errors import Problem
from app.api.schemas import Name, ShopperProfile
from app.api.service import shopper_from_profile
from app.domain import Banner, Identifier
from app.pipeline import BannerRequest
from app.prompting.lint import LintProblem
from app.prompting.templates import LABEL_PATTERN, MAX_TEMPLATE_BYTES, Split
from app.store.templates import Conflict, StoredVersion
from app.studio import LintFailed, Studio

Label = Annotated[str, StringConstraints(pattern=LABEL_PATTERN)]
_NAME = re.compile(r"^[a-z][a-z0-9_]{1,48}$")
_LABEL = re.compile(LABEL_PATTERN)
Source = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEMPLATE_BYTES)]


# --- wire types --------------------------------------------------------------------------------


class VersionInfo(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read straight off a StoredVersion

    version: int
    author: str
    message: str
    draft: bool
    content_hash: str
    created_at: datetime


class VersionOut(VersionInfo):
    name: str
    source: str
    labels: list[str]
    problems: list[dict[str, Any]] = Field(
        default_factory=list, description="lint findings (drafts may be saved with problems)"
    )


class TemplateSummary(BaseModel):
    name: str
    latest: int
    labels: dict[str, int]
    placement: str | None
    description: str | None


class TemplateDetail(BaseModel):
    name: str
    labels: dict[str, int]
    versions: list[VersionInfo]


class VersionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Source
    message: Annotated[str, StringConstraints(max_length=300)] = ""
    draft: bool = False
    base_version: int | None = Field(
        default=None, ge=1, description="the version this edit started from (or If-Match)"
    )


class LabelMove(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)


class LabelMoved(BaseModel):
    name: str
    label: str
    version: int
    previous: int | None


class PreviewCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(default=None, ge=1)
    label: Label | None = None
    source: Source | None = Field(default=None, description="unsaved text to try")
    shopper_id: Identifier | None = None
    profile: ShopperProfile | None = None
    generate: int = Field(default=0, ge=0, le=4, description="banners to generate (0: prompt only)")

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
    problems: list[dict[str, Any]]
    banners: list[Banner]


class DiffOut(BaseModel):
    name: str
    from_version: int
    to_version: int
    diff: str


class SplitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: Name
    control: Label = "production"
    variant: Label
    variant_weight: float = Field(gt=0.0, lt=1.0)


class RateOut(BaseModel):
    value: float
    low: float
    high: float


class ArmOut(BaseModel):
    template: str
    version: int
    label: str
    impressions: int
    clicks: int
    conversions: int
    ctr: RateOut
    conversion_rate: RateOut


class ExperimentOut(BaseModel):
    placement: str
    split: SplitIn | None
    arms: list[ArmOut]
    ctr_verdict: str | None
    conversion_verdict: str | None


class AuditOut(BaseModel):
    at: datetime
    actor: str
    action: str
    template: str
    detail: dict[str, Any]


# --- helpers ------------------------------------------------------------------------------------


def _problems(problems: list[LintProblem]) -> list[dict[str, Any]]:
    return [{"field": "source", "line": p.line, "message": p.message} for p in problems]


def _checked(value: str, pattern: re.Pattern[str], field: str, rule: str) -> str:
    if not pattern.fullmatch(value):
        raise Problem(
            400, "Invalid request", f"{field}: {rule}", errors=[{"field": field, "message": rule}]
        )
    return value


def _name(name: str) -> str:
    return _checked(name, _NAME, "name", "2-49 lowercase letters, digits or '_', from a letter")


def _label(label: str) -> str:
    return _checked(label, _LABEL, "label", "2-40 lowercase letters, digits, '_' or '-'")


def _if_match(request: Request[Any, Any, Any]) -> int | None:
    """``If-Match: "3"`` (or 3): the version the client holds."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    value = raw.strip().removeprefix("W/").strip('"')
    if not value.isdigit():
        raise Problem(
            400,
            "Invalid request",
            "If-Match must be a version number",
            errors=[{"field": "If-Match", "message": "not a version number"}],
        )
    return int(value)


def _actor(request: Request[Any, Any, Any]) -> str:
    return str(request.scope.get("state", {}).get("api_key", "unknown"))


def _version_out(
    stored: StoredVersion, labels: dict[str, int], problems: list[LintProblem]
) -> VersionOut:
    return VersionOut(
        **VersionInfo.model_validate(stored).model_dump(),
        name=stored.name,
        source=stored.source,
        labels=sorted(label for label, v in labels.items() if v == stored.version),
        problems=_problems(problems),
    )


def _conflict(error: Conflict) -> Problem:
    return Problem(409, "Conflict", str(error), current_version=error.current)


def _not_found(error: LookupError) -> Problem:
    return Problem(404, "Not found", str(error.args[0]) if error.args else "not found")


# --- controllers --------------------------------------------------------------------------------


class TemplateController(Controller):
    path = "/v1/templates"
    tags = ["templates"]
    guards = [require_scope("cms", "marketer")]

    @get("/", summary="Every template, its newest version and its labels")
    async def list_templates(self, studio: Studio) -> list[TemplateSummary]:
        return [TemplateSummary(**found.__dict__) for found in await studio.summaries()]

    @get("/{name:str}", summary="A template's versions (newest first) and labels")
    async def detail(self, name: str, studio: Studio) -> TemplateDetail:
        versions = await studio.store.versions(_name(name))
        if not versions:
            raise Problem(404, "Not found", f"no template '{name}'")
        return TemplateDetail(
            name=name,
            labels=(await studio.store.labels(name)).get(name, {}),
            versions=[VersionInfo.model_validate(v) for v in versions],
        )

    @get("/{name:str}/versions/{version:int}", summary="One version, with its source")
    async def version(self, name: str, version: int, studio: Studio) -> Response[VersionOut]:
        stored = await studio.store.get(_name(name), version)
        if stored is None:
            raise Problem(404, "Not found", f"template '{name}' has no version {version}")
        labels = (await studio.store.labels(name)).get(name, {})
        return Response(_version_out(stored, labels, []), headers={"ETag": f'"{version}"'})

    @get(
        "/{name:str}/versions/{version:int}/file",
        summary="Export a version as a template file (the prompts/ format)",
        media_type="text/plain; charset=utf-8",
    )
    async def export(self, name: str, version: int, studio: Studio) -> Response[str]:
        stored = await studio.store.get(_name(name), version)
        if stored is None:
            raise Problem(404, "Not found", f"template '{name}' has no version {version}")
        return Response(
            stored.source,
            media_type="text/plain; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}.j2"'},
        )

    async def _save(
        self,
        name: str,
        source: str,
        message: str,
        draft: bool,
        base: int | None,
        studio: Studio,
        request: Request[Any, Any, Any],
    ) -> Response[VersionOut]:
        expected = _if_match(request) or base
        try:
            stored, problems = await studio.save(
                _name(name),
                source,
                author=_actor(request),
                message=message,
                draft=draft,
                expected_latest=expected,
            )
        except LintFailed as failed:
            raise Problem(
                422,
                "Template does not pass lint",
                f"{len(failed.problems)} problem(s); nothing was saved",
                errors=_problems(failed.problems),
            ) from None
        except Conflict as error:
            raise _conflict(error) from None
        labels = (await studio.store.labels(name)).get(name, {})
        return Response(
            _version_out(stored, labels, problems),
            status_code=201,
            headers={"ETag": f'"{stored.version}"'},
        )

    @post(
        "/{name:str}/versions",
        summary="Save a new version (lint first; If-Match: the version you started from)",
        guards=[require_scope("marketer")],
    )
    async def create_version(
        self, name: str, data: VersionCreate, studio: Studio, request: Request[Any, Any, Any]
    ) -> Response[VersionOut]:
        return await self._save(
            name, data.source, data.message, data.draft, data.base_version, studio, request
        )

    @post(
        "/{name:str}/import",
        summary="Import a template file as a new version (body: the file, text/plain)",
        guards=[require_scope("marketer")],
    )
    async def import_file(
        self,
        name: str,
        studio: Studio,
        request: Request[Any, Any, Any],
        message: Annotated[str, Parameter(max_length=300)] = "imported",
    ) -> Response[VersionOut]:
        body = await request.body()
        try:
            source = body.decode("utf-8")
        except UnicodeDecodeError:
            raise Problem(
                400,
                "Invalid request",
                "the file is not UTF-8 text",
                errors=[{"field": "body", "message": "not UTF-8"}],
            ) from None
        if not source.strip() or len(body) > MAX_TEMPLATE_BYTES:
            raise Problem(
                400,
                "Invalid request",
                f"the file must be 1 to {MAX_TEMPLATE_BYTES} bytes",
                errors=[{"field": "body", "message": "empty or too large"}],
            )
        # A file import is a deliberate replacement: without If-Match it goes on top of the
        # newest version (the audit log and the version history keep what was there).
        latest = await studio.store.latest(_name(name))
        return await self._save(name, source, message, False, latest, studio, request)

    @get("/{name:str}/diff", summary="Unified diff between two versions")
    async def diff(
        self,
        name: str,
        studio: Studio,
        from_version: Annotated[int, Parameter(ge=1)],
        to_version: Annotated[int, Parameter(ge=1)],
    ) -> DiffOut:
        try:
            text = await studio.diff(_name(name), from_version, to_version)
        except LookupError as error:
            raise _not_found(error) from None
        return DiffOut(name=name, from_version=from_version, to_version=to_version, diff=text)

    @put(
        "/{name:str}/labels/{label:str}",
        summary="Move a label (publish = production; rollback = move it back)",
        guards=[require_scope("marketer")],
    )
    async def move_label(
        self,
        name: str,
        label: str,
        data: LabelMove,
        studio: Studio,
        request: Request[Any, Any, Any],
    ) -> LabelMoved:
        expected = _if_match(request)
        try:
            previous = await studio.move_label(
                _name(name),
                _label(label),
                data.version,
                actor=_actor(request),
                expected_current=expected,
                check_expected=expected is not None,
            )
        except LookupError as error:
            raise _not_found(error) from None
        except Conflict as error:
            raise _conflict(error) from None
        except ValueError as error:
            raise Problem(
                422,
                "Cannot label a draft",
                str(error),
                errors=[{"field": "version", "message": str(error)}],
            ) from None
        return LabelMoved(name=name, label=label, version=data.version, previous=previous)

    @post(
        "/{name:str}/preview",
        status_code=200,
        summary="Render the prompt for a shopper (and optionally generate banners)",
        guards=[require_scope("marketer")],
    )
    async def preview(self, name: str, data: PreviewCreate, studio: Studio) -> PreviewOut:
        shopper_id = data.shopper_id or (data.profile.id if data.profile else "anonymous")
        request = BannerRequest(
            shopper_id=shopper_id, shopper=shopper_from_profile(data.profile, None)
        )
        try:
            preview = await studio.preview(
                _name(name),
                request,
                version=data.version,
                label=data.label,
                source=data.source,
                generate=data.generate,
            )
        except (LookupError, KeyError) as error:
            raise _not_found(error) from None
        messages = preview.prompt.messages if preview.prompt else ()
        return PreviewOut(
            template=name,
            version=preview.version,
            shopper_id=preview.shopper_id,
            messages=[Message(role=role, content=content) for role, content in messages],
            problems=_problems(preview.problems),
            banners=preview.banners,
        )


class AuditController(Controller):
    path = "/v1/audit"
    tags = ["templates"]
    guards = [require_scope("cms", "marketer")]

    @get("/", summary="Every save, label move and split, newest first")
    async def audit(
        self,
        studio: Studio,
        template: Annotated[str | None, Parameter(max_length=64)] = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    ) -> list[AuditOut]:
        entries = await studio.store.audit(template, limit)
        return [AuditOut(**entry.__dict__) for entry in entries]


class ExperimentController(Controller):
    path = "/v1/experiments"
    tags = ["experiments"]
    guards = [require_scope("cms", "marketer")]

    @get("/{placement:str}", summary="Impressions, CTR and conversion per version and label")
    async def report(self, placement: str, studio: Studio) -> ExperimentOut:
        report = await studio.experiment(
            _checked(placement, _NAME, "placement", "a placement name")
        )
        split = report.split
        return ExperimentOut(
            placement=placement,
            split=SplitIn(**split.__dict__) if split else None,
            arms=[
                ArmOut(
                    template=arm.template,
                    version=arm.version,
                    label=arm.label,
                    impressions=arm.impressions,
                    clicks=arm.ctr.successes,
                    conversions=arm.conversion.successes,
                    ctr=RateOut(value=arm.ctr.value, low=arm.ctr.low, high=arm.ctr.high),
                    conversion_rate=RateOut(
                        value=arm.conversion.value,
                        low=arm.conversion.low,
                        high=arm.conversion.high,
                    ),
                )
                for arm in report.arms
            ],
            ctr_verdict=report.ctr_verdict,
            conversion_verdict=report.conversion_verdict,
        )

    @put(
        "/{placement:str}",
        summary="Split a placement's traffic between two labels of its template",
        guards=[require_scope("marketer")],
    )
    async def start(
        self, placement: str, data: SplitIn, studio: Studio, request: Request[Any, Any, Any]
    ) -> SplitIn:
        placement = _checked(placement, _NAME, "placement", "a placement name")
        try:
            await studio.set_split(
                placement,
                Split(data.template, data.control, data.variant, data.variant_weight),
                actor=_actor(request),
            )
        except (LookupError, KeyError) as error:
            raise _not_found(error) from None
        except ValueError as error:
            raise Problem(
                422,
                "Invalid experiment",
                str(error),
                errors=[{"field": "template", "message": str(error)}],
            ) from None
        return data

    @delete(
        "/{placement:str}",
        summary="Stop a placement's split: everyone gets production again",
        guards=[require_scope("marketer")],
    )
    async def stop(self, placement: str, studio: Studio, request: Request[Any, Any, Any]) -> None:
        placement = _checked(placement, _NAME, "placement", "a placement name")
        await studio.set_split(placement, None, actor=_actor(request))
