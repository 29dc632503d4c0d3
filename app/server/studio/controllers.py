"""The template studio over HTTP: versions, labels, previews, diffs, experiments, audit.

``marketer`` writes, ``cms`` (or ``marketer``) reads. Every write says which version it
started from (``If-Match``), so a stale editor gets 409 with the current version.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post, put
from litestar.params import Parameter

from app.server.auth import actor, require_scope
from app.server.errors import problems
from app.server.params import LabelPath, NamePath, TextBody, VersionParam
from app.server.studio.schemas import LabelMove, PreviewCreate, PreviewOut, SplitIn, VersionCreate
from app.server.studio.service import (
    AuditEntry,
    Diff,
    ExperimentReport,
    LabelMoved,
    Split,
    StudioService,
    TemplateDetail,
    TemplateSummary,
    VersionView,
)

# Its shape is checked with the other parameters (a 400 naming it); ASCII digits only, since
# str.isdigit() also takes digits int() refuses ("²").
IfMatch = Annotated[
    str | None,
    Parameter(
        header="If-Match",
        pattern=r'^(W/)?"?[0-9]{1,9}"?$',
        description='the version you started from: "3" (or 3)',
    ),
]


def _if_match(raw: str | None) -> int | None:
    """``If-Match: "3"`` (or 3): the version the client holds."""
    return None if raw is None else int(raw.removeprefix("W/").strip('"'))


def _created(view: VersionView) -> Response[VersionView]:
    return Response(view, status_code=201, headers={"ETag": f'"{view.version}"'})


class TemplateController(Controller):
    path = "/v1/templates"
    tags = ["templates"]
    guards = [require_scope("cms", "marketer")]

    @get("/", summary="Every template, its newest version and its labels")
    async def list_templates(self, studio: StudioService) -> list[TemplateSummary]:
        return await studio.summaries()

    @get(
        "/{name:str}",
        summary="A template's versions (newest first) and labels",
        opt=problems("not-found"),
    )
    async def detail(self, name: NamePath, studio: StudioService) -> TemplateDetail:
        return await studio.detail(name)

    @get(
        "/{name:str}/versions/{version:int}",
        summary="One version, with its source",
        opt=problems("not-found"),
    )
    async def version(
        self, name: NamePath, version: VersionParam, studio: StudioService
    ) -> Response[VersionView]:
        view = await studio.version(name, version)
        return Response(view, headers={"ETag": f'"{version}"'})

    @get(
        "/{name:str}/versions/{version:int}/file",
        summary="Export a version as its file in prompts/ (NAME.j2; brand.yaml for the brand)",
        media_type="text/plain; charset=utf-8",
        opt=problems("not-found"),
    )
    async def export(
        self, name: NamePath, version: VersionParam, studio: StudioService
    ) -> Response[str]:
        view = await studio.version(name, version)
        return Response(
            view.source,
            media_type="text/plain; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{studio.file_name(name)}"'},
        )

    @post(
        "/{name:str}/versions",
        summary="Save a new version (lint first; If-Match: the version you started from)",
        guards=[require_scope("marketer")],
        opt=problems("conflict", "lint-failed"),
    )
    async def create_version(
        self,
        name: NamePath,
        data: VersionCreate,
        studio: StudioService,
        request: Request[Any, Any, Any],
        if_match: IfMatch = None,
    ) -> Response[VersionView]:
        view = await studio.save(
            name,
            data.source,
            author=actor(request),
            message=data.message,
            draft=data.draft,
            expected_latest=_if_match(if_match) or data.base_version,
        )
        return _created(view)

    @post(
        "/{name:str}/import",
        summary="Import a template file as a new version (body: the file, text/plain)",
        guards=[require_scope("marketer")],
        opt=problems("conflict", "lint-failed"),
        operation_class=TextBody,  # the body is read below, not a ``data`` argument
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

    @get(
        "/{name:str}/diff",
        summary="Unified diff between two versions",
        opt=problems("not-found"),
    )
    async def diff(
        self,
        name: NamePath,
        studio: StudioService,
        from_version: VersionParam,
        to_version: VersionParam,
    ) -> Diff:
        return await studio.diff(name, from_version, to_version)

    @put(
        "/{name:str}/labels/{label:str}",
        summary="Move a label (publish = production; rollback = move it back)",
        guards=[require_scope("marketer")],
        opt=problems("not-found", "conflict", "draft-not-labelled"),
    )
    async def move_label(
        self,
        name: NamePath,
        label: LabelPath,
        data: LabelMove,
        studio: StudioService,
        request: Request[Any, Any, Any],
        if_match: IfMatch = None,
    ) -> LabelMoved:
        expected = _if_match(if_match)
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
        opt=problems("not-found", "busy"),
    )
    async def preview(
        self, name: NamePath, data: PreviewCreate, studio: StudioService
    ) -> PreviewOut:
        preview = await studio.preview(
            name,
            data.shopper_id or "anonymous",
            shopper=data.profile.shopper() if data.profile else None,
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
        opt=problems("not-found", "invalid-experiment"),
    )
    async def start(
        self,
        placement: NamePath,
        data: SplitIn,
        studio: StudioService,
        request: Request[Any, Any, Any],
    ) -> SplitIn:
        split = Split(
            data.template,
            data.control,
            data.variant,
            data.variant_weight,
            data.strategy,
            data.min_share,
            data.period_s,
        )
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
