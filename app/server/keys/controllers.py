"""API keys over HTTP, for admin keys only: list, create, rotate, revoke.

A new key is in the answer that made it and nowhere else, so those answers are never cached.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, delete, get, post
from litestar.params import Parameter

from app.server.auth import require_scope
from app.server.errors import problems
from app.server.keys.schemas import MAX_DAYS, KeyCreate
from app.server.keys.service import KeyService, KeyView, NewKey
from app.server.params import KeyIdPath

NO_STORE = {"Cache-Control": "no-store"}


class KeyController(Controller):
    path = "/v1/keys"
    tags = ["keys"]
    guards = [require_scope("admin")]

    @get("/", summary="Every key, revoked and expired ones too (never a key or its hash)")
    async def list_keys(self, keys: KeyService) -> list[KeyView]:
        return await keys.list()

    @post("/", summary="Create a key; the key is in this answer only")
    async def create_key(self, data: KeyCreate, keys: KeyService) -> Response[NewKey]:
        made = await keys.create(data.name, data.scopes, data.expires_in_days)
        return Response(made, status_code=201, headers=NO_STORE)

    @delete(
        "/{key_id:str}",
        summary="Revoke a key for good (409: never the last active admin key)",
        opt=problems("not-found", "conflict"),
    )
    async def revoke_key(self, key_id: KeyIdPath, keys: KeyService) -> None:
        await keys.revoke(key_id)

    @post(
        "/{key_id:str}/rotate",
        summary="A new key, same name and scopes; the old one revoked",
        opt=problems("not-found"),
    )
    async def rotate_key(
        self,
        key_id: KeyIdPath,
        keys: KeyService,
        expires_in_days: Annotated[
            int | None, Parameter(ge=1, le=MAX_DAYS, description="days the new key works")
        ] = None,
    ) -> Response[NewKey]:
        made = await keys.rotate(key_id, expires_in_days)
        return Response(made, status_code=201, headers=NO_STORE)
