"""The webhooks slice's wire types. Results are the service's own dataclasses (WebhookView,
NewWebhook, DeliveryView)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.events import EVENT_TYPES, EventType
from app.webhooks import SECRET_PATTERN, secret_problem

MAX_URL = 2000
MAX_DESCRIPTION = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=MAX_URL,
        pattern=r"^https?://",
        description="where events are POSTed: an http or https URL with a host",
    )
    events: list[EventType] = Field(
        min_length=1, max_length=len(EVENT_TYPES), description="the event types it receives"
    )
    secret: str | None = Field(
        default=None,
        pattern=SECRET_PATTERN,
        description="the signing secret, whsec_ and the base64 of 24-64 random bytes "
        "(none: one is generated); shown in this answer only",
    )
    description: str = Field(default="", max_length=MAX_DESCRIPTION)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if _CONTROL.search(url) or " " in url:
            raise ValueError("a URL has no spaces or control characters")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises ValueError for a port out of range)
            host = httpx.URL(url).host
        except (ValueError, httpx.InvalidURL) as error:
            raise ValueError(f"not a URL: {error}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or not host:
            raise ValueError("an http or https URL with a host")
        return url

    @field_validator("events")
    @classmethod
    def _once_each(cls, events: list[EventType]) -> list[EventType]:
        return list(dict.fromkeys(events))

    @field_validator("secret")
    @classmethod
    def _signs(cls, secret: str | None) -> str | None:
        problem = None if secret is None else secret_problem(secret)
        if problem:
            raise ValueError(problem)
        return secret

    @field_validator("description")
    @classmethod
    def _printable(cls, description: str) -> str:
        if _CONTROL.search(description):
            raise ValueError("no control characters")
        return description
