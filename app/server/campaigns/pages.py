"""The studio's campaigns page (/studio/campaigns): every campaign in a table, a form to create
one, an edit form per campaign, and delete.

Same session and CSRF as the rest of the studio (the session cookie and the CSRF cookie are
scoped to /studio). A saved or deleted campaign redirects back to the list (PRG); a form the
service refuses is drawn again, as typed, with a 400 naming the field at fault. Times are UTC:
a ``datetime-local`` field carries no zone, so the page gives it UTC's.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import NotAuthorizedException
from litestar.response import Redirect, Template
from pydantic import ValidationError

from app.domain import NAME_PATTERN
from app.server.auth import FORM, actor, signed_in, to_login
from app.server.campaigns.schemas import CampaignIn, CampaignOut
from app.server.campaigns.service import CampaignService
from app.server.errors import Problem, field_name, invalid

TEMPLATES = Path(__file__).parent / "templates"
LISTED_ITEMS = 8  # products or categories shown in a row; the edit form has them all
ID_RULE = "2 to 49 of a-z, 0-9 and _, starting with a letter"


@dataclass
class CampaignForm:
    """The form as typed: text throughout, read into a ``CampaignIn`` by ``_read``."""

    id: str = ""
    name: str = ""
    starts_at: str = ""
    ends_at: str = ""
    discount_percent: str = ""
    message: str = ""
    products: str = ""
    categories: str = ""


def _back(notice: str = "", error: str = "") -> Redirect:
    """PRG: back to the list, and what happened."""
    params = {k: v for k, v in {"notice": notice, "error": error}.items() if v}
    return Redirect(f"/studio/campaigns?{urlencode(params)}" if params else "/studio/campaigns")


def _when(text: str) -> datetime | str:
    """A ``datetime-local`` value as a UTC time (a time given with its zone keeps it); the
    text as typed when it is no time, for the check to refuse it by its field."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        return text
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _id_problem(campaign_id: str) -> str:
    return "" if re.fullmatch(NAME_PATTERN, campaign_id) else f"use {ID_RULE}"


def _read(campaign_id: str, form: CampaignForm) -> CampaignIn:
    """The campaign the form states, or a ``Problem`` naming every field at fault."""
    found: dict[str, str] = {}
    if problem := _id_problem(campaign_id):
        found["id"] = problem
    for name, text in (("starts_at", form.starts_at), ("ends_at", form.ends_at)):
        if not text.strip():
            found[name] = "enter a date and time (UTC)"
        elif isinstance(_when(text), str):
            found[name] = "not a date and time: use YYYY-MM-DDTHH:MM (UTC)"
    read: CampaignIn | None = None
    try:
        read = CampaignIn.model_validate(
            {
                "name": form.name.strip(),
                "starts_at": _when(form.starts_at),
                "ends_at": _when(form.ends_at),
                "discount_percent": form.discount_percent.strip() or None,
                "message": form.message.strip() or None,
                "products": _items(form.products),
                "categories": _items(form.categories),
            }
        )
    except ValidationError as error:
        for each in error.errors():
            field = field_name(each["loc"], whole="form")
            found.setdefault(field, each["msg"].removeprefix("Value error, "))
    if found or read is None:
        errors = [{"field": field, "message": message} for field, message in found.items()]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise Problem("invalid-request", detail, errors=errors)
    return read


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _local(moment: datetime) -> str:
    """The value a ``datetime-local`` field shows: UTC, to the minute."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


def _row(out: CampaignOut) -> dict[str, Any]:
    c = out.campaign
    return {
        "id": c.id,
        "name": c.name,
        "status": out.status,
        "starts": _utc(c.starts_at),
        "ends": _utc(c.ends_at),
        "discount": c.discount_percent,
        "message": c.message or "",
        "products": list(c.products[:LISTED_ITEMS]),
        "more_products": max(0, len(c.products) - LISTED_ITEMS),
        "categories": list(c.categories[:LISTED_ITEMS]),
        "more_categories": max(0, len(c.categories) - LISTED_ITEMS),
    }


def _filled(out: CampaignOut) -> CampaignForm:
    """The edit form of a stored campaign."""
    c = out.campaign
    return CampaignForm(
        id=c.id,
        name=c.name,
        starts_at=_local(c.starts_at),
        ends_at=_local(c.ends_at),
        discount_percent="" if c.discount_percent is None else str(c.discount_percent),
        message=c.message or "",
        products=", ".join(c.products),
        categories=", ".join(c.categories),
    )


def _refused(refused: Problem) -> tuple[str, set[str]]:
    """What the page says of a refused form, and the fields it marks (``products[1]`` marks
    ``products``)."""
    errors = refused.errors or []
    fields = {re.split(r"[\[.]", str(e.get("field", "")))[0] for e in errors}
    return f"Not saved: {refused.detail}", fields


class CampaignPages(Controller):
    path = "/studio/campaigns"
    include_in_schema = False
    guards = [signed_in]
    exception_handlers = {NotAuthorizedException: to_login}

    async def _page(
        self,
        request: Request[Any, Any, State],
        campaigns: CampaignService,
        *,
        form: CampaignForm | None = None,
        editing: str = "",
        notice: str = "",
        error: str = "",
        bad: set[str] | None = None,
        status_code: int = 200,
    ) -> Template:
        listed = await campaigns.list()
        return Template(
            "campaigns.html",
            context={
                "who": actor(request),
                "campaigns": [_row(out) for out in listed.campaigns],
                "now": _utc(listed.now),
                "form": asdict(form or CampaignForm()),
                "editing": editing,
                "notice": notice,
                "error": error,
                "bad": bad or set(),
            },
            status_code=status_code,
        )

    async def _save(
        self,
        request: Request[Any, Any, State],
        campaigns: CampaignService,
        campaign_id: str,
        data: CampaignForm,
        *,
        creating: bool,
    ) -> Response[Any]:
        data.id = campaign_id
        try:
            campaign = _read(campaign_id, data)
            if creating:
                try:
                    await campaigns.get(campaign_id)
                except Problem:  # none by that id yet: the one wanted
                    pass
                else:
                    raise invalid("id", f"a campaign '{campaign_id}' exists already: edit it")
            saved = await campaigns.put(campaign_id, campaign, actor(request))
        except Problem as refused:
            error, bad = _refused(refused)
            # A form for an id that is no id is drawn as a new one, for the id to be fixed.
            editing = "" if creating or "id" in bad else campaign_id
            return await self._page(
                request,
                campaigns,
                form=data,
                editing=editing,
                error=error,
                bad=bad,
                status_code=refused.status_code,
            )
        verb = "Saved" if saved.updated else "Created"
        return _back(notice=f"{verb} campaign '{campaign_id}' ({saved.status}).")

    @get("/")
    async def page(
        self,
        request: Request[Any, Any, State],
        campaigns: CampaignService,
        notice: str = "",
        error: str = "",
    ) -> Template:
        return await self._page(request, campaigns, notice=notice, error=error)

    @get("/{campaign_id:str}")
    async def edit(
        self, request: Request[Any, Any, State], campaigns: CampaignService, campaign_id: str
    ) -> Template:
        try:
            found = await campaigns.get(campaign_id)
        except Problem as missing:
            return await self._page(
                request, campaigns, error=missing.detail, status_code=missing.status_code
            )
        return await self._page(request, campaigns, form=_filled(found), editing=campaign_id)

    @post("/")
    async def create(
        self,
        request: Request[Any, Any, State],
        campaigns: CampaignService,
        data: Annotated[CampaignForm, FORM],
    ) -> Response[Any]:
        return await self._save(request, campaigns, data.id.strip(), data, creating=True)

    @post("/{campaign_id:str}")
    async def save(
        self,
        request: Request[Any, Any, State],
        campaigns: CampaignService,
        campaign_id: str,
        data: Annotated[CampaignForm, FORM],
    ) -> Response[Any]:
        return await self._save(request, campaigns, campaign_id, data, creating=False)

    @post("/{campaign_id:str}/delete")
    async def delete(
        self, request: Request[Any, Any, State], campaigns: CampaignService, campaign_id: str
    ) -> Response[Any]:
        try:
            await campaigns.delete(campaign_id, actor(request))
        except Problem as refused:
            return _back(error=f"Not deleted: {refused.detail}")
        return _back(notice=f"Deleted campaign '{campaign_id}'.")
