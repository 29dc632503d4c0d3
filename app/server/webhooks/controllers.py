"""Webhook endpoints over HTTP, for admin keys: register, list, disable, the delivery log, a
test ping. A new endpoint's signing secret is in the answer that made it and nowhere else, so
that answer is never cached."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import Parameter

from app.server.auth import actor, require_scope
from app.server.errors import problems
from app.server.params import IdPath
from app.server.webhooks.schemas import WebhookCreate
from app.server.webhooks.service import DeliveryView, NewWebhook, WebhookService, WebhookView

NO_STORE = {"Cache-Control": "no-store"}


class WebhookController(Controller):
    path = "/v1/webhooks"
    tags = ["webhooks"]
    guards = [require_scope("admin")]

    @post("/", summary="Register an endpoint; its signing secret is in this answer only")
    async def create_webhook(
        self, data: WebhookCreate, webhooks: WebhookService, request: Request[Any, Any, Any]
    ) -> Response[NewWebhook]:
        made = await webhooks.create(data, actor(request))
        return Response(made, status_code=201, headers=NO_STORE)

    @get("/", summary="Every endpoint, disabled ones too (never a secret)")
    async def list_webhooks(self, webhooks: WebhookService) -> list[WebhookView]:
        return await webhooks.list()

    @get("/{webhook_id:str}", summary="One endpoint (never its secret)", opt=problems("not-found"))
    async def fetch_webhook(self, webhook_id: IdPath, webhooks: WebhookService) -> WebhookView:
        return await webhooks.get(webhook_id)

    @delete(
        "/{webhook_id:str}",
        summary="Disable an endpoint: nothing more is sent to it; its log is kept",
        opt=problems("not-found"),
    )
    async def disable_webhook(self, webhook_id: IdPath, webhooks: WebhookService) -> None:
        await webhooks.disable(webhook_id)

    @get(
        "/{webhook_id:str}/deliveries",
        summary="The endpoint's delivery log, newest first",
        opt=problems("not-found"),
    )
    async def deliveries(
        self,
        webhook_id: IdPath,
        webhooks: WebhookService,
        limit: Annotated[int, Parameter(ge=1, le=500, description="how many")] = 50,
    ) -> list[DeliveryView]:
        return await webhooks.deliveries(webhook_id, limit)

    @post(
        "/{webhook_id:str}/test",
        status_code=202,
        summary="Send the endpoint a webhook.test event (409: it is disabled)",
        opt=problems("not-found", "conflict"),
    )
    async def ping(
        self, webhook_id: IdPath, webhooks: WebhookService, request: Request[Any, Any, Any]
    ) -> DeliveryView:
        return await webhooks.ping(webhook_id, actor(request))
