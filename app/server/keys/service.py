"""The keys slice's service: API keys listed, made, rotated and revoked over HTTP.

It needs only the database, so it exists from start-up (an admin can manage keys while the
models are still loading). A plaintext key leaves here once, in the answer that made it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.server.errors import Problem
from app.store.repositories import ApiKeyInfo, ApiKeyStore, LastAdminKey, key_id_of


@dataclass(frozen=True)
class KeyView:
    """A key as the API shows it: never its hash, never the key."""

    id: str
    name: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    status: str  # active, expired or revoked


@dataclass(frozen=True)
class NewKey(KeyView):
    key: str  # shown this once: only its hash is stored


class KeyService:
    def __init__(self, keys: ApiKeyStore) -> None:
        self.keys = keys

    def _view(self, info: ApiKeyInfo) -> KeyView:
        return KeyView(
            id=info.id,
            name=info.name,
            scopes=list(info.scopes),
            created_at=info.created_at,
            expires_at=info.expires_at,
            last_used_at=info.last_used_at,
            status=info.status(self.keys.clock()),
        )

    def _expiry(self, days: int | None) -> datetime | None:
        return None if days is None else self.keys.clock() + timedelta(days=days)

    async def _new(self, key: str) -> NewKey:
        key_id = key_id_of(key)
        info = await self.keys.get(key_id) if key_id else None
        if info is None:  # just written in this process: a defect if it is not there
            raise RuntimeError("a new API key was not found after it was stored")
        return NewKey(**vars(self._view(info)), key=key)

    async def list(self) -> list[KeyView]:
        return [self._view(info) for info in await self.keys.list()]

    async def create(self, name: str, scopes: Sequence[str], expires_in_days: int | None) -> NewKey:
        key = await self.keys.create(name, scopes, expires_at=self._expiry(expires_in_days))
        return await self._new(key)

    async def rotate(self, key_id: str, expires_in_days: int | None) -> NewKey:
        try:
            key = await self.keys.rotate(key_id, expires_at=self._expiry(expires_in_days))
        except LookupError as missing:
            raise Problem("not-found", str(missing)) from None
        return await self._new(key)

    async def revoke(self, key_id: str) -> None:
        """Revoke for good (again: harmless). Never the last active admin key: whoever calls
        this holds an admin key, so this refuses exactly an admin revoking their own key while
        no other admin key works, which would leave nobody able to manage keys over HTTP."""
        try:
            found = await self.keys.revoke(key_id, keep_an_admin=True)
        except LastAdminKey as last:
            raise Problem(
                "conflict",
                f"{last}: create (or rotate to) another admin key first; revoking this one "
                "would leave nobody able to manage keys",
            ) from None
        if not found:
            raise Problem("not-found", f"no API key with id '{key_id}'")
