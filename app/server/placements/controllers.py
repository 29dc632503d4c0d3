"""The read path over HTTP: what a CMS calls while it renders a page."""

from __future__ import annotations

import hashlib
from typing import Annotated

from litestar import Controller, Response, get
from litestar.openapi import ResponseSpec
from litestar.params import Parameter

from app.server.auth import require_scope
from app.server.errors import problems
from app.server.params import IdPath, NamePath
from app.server.placements.schemas import ServedBanner
from app.server.placements.service import PlacementService
from app.server.ratelimits import READ_PATH_OPT


def _etag(served: ServedBanner) -> str:
    material = f"{served.banner.id}@{served.banner.created_at.isoformat()}@{served.source}"
    return '"' + hashlib.sha256(material.encode()).hexdigest()[:32] + '"'


class PlacementController(Controller):
    path = "/v1/placements"
    tags = ["placements"]
    guards = [require_scope("cms")]

    @get(
        "/{placement:str}/banners/{shopper_id:str}",
        summary="The pre-generated banner for a shopper (theirs, else their segment's or "
        "everyone's); never generates",
        opt={**problems("not-found"), READ_PATH_OPT: True},
        responses={304: ResponseSpec(None, description="Not modified (If-None-Match)")},
    )
    async def read(
        self,
        placement: NamePath,
        shopper_id: IdPath,
        placements: PlacementService,
        fallback: Annotated[
            bool, Parameter(description="false: 404 rather than a segment's or everyone's")
        ] = True,
        if_none_match: Annotated[
            str | None, Parameter(header="If-None-Match", description="the ETag you hold")
        ] = None,
    ) -> Response[ServedBanner]:
        served = await placements.read(placement, shopper_id, fallback)
        etag = _etag(served)
        headers = {"ETag": etag, "Cache-Control": "private, max-age=60"}
        if if_none_match == etag:
            return Response(None, status_code=304, headers=headers)  # type: ignore[arg-type]
        return Response(served, headers=headers)
