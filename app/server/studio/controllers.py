"""The template studio over HTTP: versions, labels, previews, diffs, experiments, audit.

``marketer`` writes, ``cms`` (or ``marketer``) reads. Every write says which version it
started from (``If-Match``), so a stale editor gets 409 with the current version.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post, put
from litestar.params import Parameter

from app.pipeline import BannerRequest
from app.prompting.templates import Split
from app.server.auth import actor, require_scope
from app.server.banners.service import shopper_from_profile
from app.server.errors import invalid
from app.server.params import LabelPath, NamePath
from app.server.studio.schemas import LabelMove, PreviewCreate, PreviewOut, SplitIn, VersionCreate
from app.server.studio.service import (
    Diff,
    ExperimentReport,
    LabelMoved,
    StudioService,
    TemplateDetail,
    TemplateSummary,
    VersionView,
)
from app.store.templates import AuditEntry


def _if_match(request: Request[Any, Any, Any]) -> int | None:
    """``If-Match: "3"`` (or 3): the version the client holds."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    value = raw.strip().removeprefix("W/").strip('"')
    if not value.isdigit():
        raise invalid("If-Match", "not a version number", "If-Match must be a version number")
    return int(value)


def _created(view: VersionView) -> Response[VersionView]:
    return Response(view, status_code=201, headers={"ETag": f'"{view.version}"'})


class TemplateController(Controller):
    path = "/v1/templates"
    tags = ["templates"]
    guards = [require_scope("cms", "marketer")]

    @get("/", summary="Every template, its newest version and its labels")
    async def list_templates(self, studio: StudioService) -> list[TemplateSummary]:
        return await studio.summaries()

    @get("/{name:str}", summary="A template's versions (newest first) and labels")
    async def detail(self, name: NamePath, studio: StudioService) -> TemplateDetail:
        return await studio.detail(name)

    @get("/{name:str}/versions/{version:int}", summary="One version, with its source")
    async def version(
        self, name: NamePath, version: int, studio: StudioService
    ) -> Response[VersionView]:
        view = await studio.version(name, version)
        return Response(view, headers={"ETag": f'"{version}"'})

    @get(
        "/{name:str}/versions/{version:int}/file",
        summary="Export a version as a template file (the prompts/ format)",
        media_type="text/plain; charset=utf-8",
    )
    async def export(self, name: NamePath, version: int, studio: StudioService) -> Response[str]:
        view = await studio.version(name, version)
        return Response(
            view.source,
            media_type="text/plain; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}.j2"'},
        )

    @post(
        "/{name:str}/versions",
        summary="Save a new version (lint first; If-Match: the version you started from)",
        guards=[require_scope("marketer")],
    )
    async def create_version(
        self,
        name: NamePath,
        data: VersionCreate,
        studio: StudioService,
        request: Request[Any, Any, Any],
    ) -> Response[VersionView]:
        view = await studio.save(
            name,
            data.source,
            author=actor(request),
            message=data.message,
            draft=data.draft,
            expected_latest=_if_match(request) or data.base_version,
        )
        return _created(view)

    @post(
        "/{name:str}/import",
        summary="Import a template file as a new version (body: the file, text/plain)",
        guards=[require_scope("marketer")],
    )
    async def import_file(
        self,
        name: NamePath,
        studio: StudioService,
        request: Request[Any, Any, Any],
        message: Annotated[str, Parameter(max_length=300)] = "imported",
    ) -> Response[VersionView]:
        view = await studio.import_file(
            name, await request.body(), author=actor(request), message=message
        )
        return _created(view)

    @get("/{name:str}/diff", summary="Unified diff between two versions")
    async def diff(
        self,
        name: NamePath,
        studio: StudioService,
        from_version: Annotated[int, Parameter(ge=1)],
        to_version: Annotated[int, Parameter(ge=1)],
    ) -> Diff:
        return await studio.diff(name, from_version, to_version)

    @put(
        "/{name:str}/labels/{label:str}",
        summary="Move a label (publish = production; rollback = move it back)",
        guards=[require_scope("marketer")],
    )
    async def move_label(
        self,
        name: NamePath,
        label: LabelPath,
        data: LabelMove,
        studio: StudioService,
        request: Request[Any, Any, Any],
    ) -> LabelMoved:
        expected = _if_match(request)
        return await studio.move_label(
            name,
            label,
            data.version,
            actor=actor(request),
            expected_current=expected,
            check_expected=expected is not None,
        )

    @post(
        "/{name:str}/preview",
        status_code=200,
        summary="Render the prompt for a shopper (and optionally generate banners)",
        guards=[require_scope("marketer")],
    )
    async def preview(
        self, name: NamePath, data: PreviewCreate, studio: StudioService
    ) -> PreviewOut:
        shopper_id = data.shopper_id or (data.profile.id if data.profile else "anonymous")
        request = BannerRequest(
            shopper_id=shopper_id, shopper=shopper_from_profile(data.profile, None)
        )
        preview = await studio.preview(
            name,
            request,
            version=data.version,
            label=data.label,
            source=data.source,
            generate=data.generate,
        )
        return PreviewOut.of(preview)


class AuditController(Controller):
    path = "/v1/audit"
    tags = ["templates"]
    guards = [require_scope("cms", "marketer")]

    @get("/", summary="Every save, label move and split, newest first")
    async def audit(
        self,
        studio: StudioService,
        template: Annotated[str | None, Parameter(max_length=64)] = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    ) -> list[AuditEntry]:
        return await studio.audit(template, limit)


class ExperimentController(Controller):
    path = "/v1/experiments"
    tags = ["experiments"]
    guards = [require_scope("cms", "marketer")]

    @get("/{placement:str}", summary="Impressions, CTR and conversion per version and label")
    async def report(self, placement: NamePath, studio: StudioService) -> ExperimentReport:
        return await studio.experiment(placement)

    @put(
        "/{placement:str}",
        summary="Split a placement's traffic between two labels of its template",
        guards=[require_scope("marketer")],
    )
    async def start(
        self,
        placement: NamePath,
        data: SplitIn,
        studio: StudioService,
        request: Request[Any, Any, Any],
    ) -> SplitIn:
        split = Split(data.template, data.control, data.variant, data.variant_weight)
        await studio.set_split(placement, split, actor=actor(request))
        return data

    @delete(
        "/{placement:str}",
        summary="Stop a placement's split: everyone gets production again",
        guards=[require_scope("marketer")],
    )
    async def stop(
        self, placement: NamePath, studio: StudioService, request: Request[Any, Any, Any]
    ) -> None:
        await studio.set_split(placement, None, actor=actor(request))
