"""Campaigns over HTTP: marketers state the sales copy may talk about."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, put

from app.server.auth import actor, require_scope
from app.server.campaigns.schemas import CampaignIn, CampaignList, CampaignOut
from app.server.campaigns.service import CampaignService
from app.server.errors import problems
from app.server.params import NamePath


class CampaignController(Controller):
    path = "/v1/campaigns"
    tags = ["campaigns"]
    guards = [require_scope("marketer")]

    @get("/", summary="Every campaign, running and planned first, with its status now")
    async def list_campaigns(self, campaigns: CampaignService) -> CampaignList:
        return await campaigns.list()

    @get("/{campaign_id:str}", summary="One campaign", opt=problems("not-found"))
    async def read(self, campaign_id: NamePath, campaigns: CampaignService) -> CampaignOut:
        return await campaigns.get(campaign_id)

    @put(
        "/{campaign_id:str}",
        summary="Create or replace a campaign; copy may name it (and its discount) for the "
        "products it covers while it runs",
        status_code=200,
    )
    async def save(
        self,
        request: Request[Any, Any, Any],
        campaign_id: NamePath,
        data: CampaignIn,
        campaigns: CampaignService,
    ) -> Response[CampaignOut]:
        saved = await campaigns.put(campaign_id, data, actor(request))
        return Response(saved, status_code=200 if saved.updated else 201)

    @delete("/{campaign_id:str}", summary="Delete a campaign", opt=problems("not-found"))
    async def remove(
        self,
        request: Request[Any, Any, Any],
        campaign_id: NamePath,
        campaigns: CampaignService,
    ) -> None:
        await campaigns.delete(campaign_id, actor(request))
