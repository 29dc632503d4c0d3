"""The studio's review page (/studio/review): the queue drawn as banners, filters, approve,
reject with a reason, approve all shown, and review on/off per placement.

Same session and CSRF as the rest of the studio (the session cookie and the CSRF cookie are
scoped to /studio); every form posts, then redirects back to the page it came from (PRG).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import NotAuthorizedException
from litestar.params import Parameter
from litestar.response import Redirect, Template
from pydantic import ValidationError

from app.server.auth import FORM, actor, signed_in, to_login
from app.server.errors import Problem
from app.server.review.schemas import MAX_DECISIONS, DecisionIn, Flag, QueueState
from app.server.review.service import ReviewService

TEMPLATES = Path(__file__).parent / "templates"
PAGE_SIZE = 50
FILTERS = ("placement", "template", "segment", "state", "fallback", "offset")
STATES: tuple[QueueState, ...] = ("pending", "approved", "rejected", "none", "all")


@dataclass
class DecisionForm:
    placement: str
    audience: str
    banner_id: str
    decision: str
    subject: str = ""
    reason: str = ""
    generated_at: str = ""
    back: str = ""
    # Edit and approve: the copy as the marketer left it (all three sent; unchanged ones
    # are no edit).
    headline: str = ""
    subheadline: str = ""
    cta: str = ""


@dataclass
class RequirementForm:
    required: bool = False
    back: str = ""


def _filters(query: str) -> dict[str, str]:
    """The page's filters out of a query string (anything else dropped)."""
    return {k: v for k, v in parse_qsl(query) if k in FILTERS and v}


def _back(query: str, notice: str = "", error: str = "") -> Redirect:
    """PRG: back to the page with its filters, and what happened."""
    params = _filters(query)
    if notice:
        params["notice"] = notice
    if error:
        params["error"] = error
    return Redirect(f"/studio/review?{urlencode(params)}" if params else "/studio/review")


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "form"
    return f"{where}: {first['msg']}"


def _row(data: list[Any]) -> DecisionIn:
    """An approval out of one row of "approve all shown": [placement, audience, subject,
    banner id, made at]."""
    placement, audience, subject, banner_id, generated_at = (str(x) for x in data)
    return DecisionIn.model_validate(
        {
            "placement": placement,
            "audience": audience,
            "subject": subject,
            "banner_id": banner_id,
            "generated_at": generated_at,
            "decision": "approved",
        }
    )


class ReviewPages(Controller):
    path = "/studio/review"
    include_in_schema = False
    guards = [signed_in]
    exception_handlers = {NotAuthorizedException: to_login}

    @get("/")
    async def page(
        self,
        request: Request[Any, Any, State],
        review: ReviewService,
        placement: str = "",
        template: str = "",
        segment: str = "",
        review_state: Annotated[str, Parameter(query="state")] = "pending",
        fallback: str = "",
        offset: int = 0,
        notice: str = "",
        error: str = "",
    ) -> Template:
        chosen: QueueState = review_state if review_state in STATES else "pending"
        flags: tuple[Flag, ...] = ("fallback",) if fallback else ()
        offset = max(0, offset)
        try:
            queue = await review.queue(
                placement=placement or None,
                state=chosen,
                template=template or None,
                segment=segment or None,
                flags=flags,
                limit=PAGE_SIZE,
                offset=offset,
            )
            items, total = queue.items, queue.total
        except Problem as refused:  # an unknown placement in the address
            items, total, error = [], 0, refused.detail
        shown = {
            "placement": placement,
            "template": template,
            "segment": segment,
            "state": chosen,
            "fallback": fallback,
        }
        query = urlencode({k: v for k, v in shown.items() if v})  # the filters, for paging
        back = urlencode({k: v for k, v in {**shown, "offset": offset or ""}.items() if v})
        return Template(
            "review.html",
            context={
                "who": actor(request),
                "items": items,
                "total": total,
                "offset": offset,
                "page_size": PAGE_SIZE,
                "filters": {
                    "placement": placement,
                    "template": template,
                    "segment": segment,
                    "state": chosen,
                    "fallback": bool(fallback),
                },
                "query": query,
                "back": back,
                "states": STATES,
                "placements": await review.overview(),
                "templates": review.templates(),
                "segments": await review.segments(),
                "undecided": [
                    json.dumps(
                        [
                            i.placement,
                            i.audience.value,
                            i.subject,
                            i.banner_id,
                            i.generated_at.isoformat(),
                        ]
                    )
                    for i in items
                    if i.review != "approved"
                ][:MAX_DECISIONS],
                "notice": notice,
                "error": error,
            },
        )

    @post("/decide")
    async def decide(
        self,
        request: Request[Any, Any, State],
        review: ReviewService,
        data: Annotated[DecisionForm, FORM],
    ) -> Response[Any]:
        edit = {
            name: value
            for name in ("headline", "subheadline", "cta")
            if (value := getattr(data, name).strip())
        }
        try:
            decision = DecisionIn.model_validate(
                {
                    "placement": data.placement,
                    "audience": data.audience,
                    "subject": data.subject,
                    "banner_id": data.banner_id,
                    "generated_at": data.generated_at or None,
                    "decision": data.decision,
                    "reason": data.reason,
                    "edit": edit or None,
                }
            )
        except ValidationError as invalid:
            return _back(data.back, error=f"Not applied: {_first_error(invalid)}")
        try:
            report = await review.decide([decision], actor(request))
        except Problem as refused:
            return _back(data.back, error=f"Not applied: {refused.detail}")
        subject = f"{decision.audience.value} {decision.subject}".strip()
        if report.stale:
            return _back(
                data.back,
                error=f"Not applied: the banner for {subject} in {decision.placement} was "
                "regenerated since you saw it; review the new one.",
            )
        verb = "Approved" if decision.decision == "approved" else "Rejected"
        if report.applied and report.applied[0].edited_to:
            verb = "Edited and approved"
        return _back(data.back, notice=f"{verb} the banner for {subject} in {decision.placement}.")

    @post("/approve-all")
    async def approve_all(
        self, request: Request[Any, Any, State], review: ReviewService
    ) -> Response[Any]:
        form = await request.form()
        back = str(form.get("back") or "")
        try:
            decisions = [_row(json.loads(str(raw))) for raw in form.getall("item")]
        except (ValueError, TypeError, ValidationError):
            return _back(back, error="Not applied: the list of banners was not readable.")
        if not decisions:
            return _back(back, error="Nothing to approve on this page.")
        try:
            report = await review.decide(decisions[:MAX_DECISIONS], actor(request))
        except Problem as refused:
            return _back(back, error=f"Not applied: {refused.detail}")
        note = f"Approved {len(report.applied)} banner(s)."
        if report.stale:
            note += f" {len(report.stale)} were regenerated since you saw them: review them anew."
        return _back(back, notice=note)

    @post("/placements/{placement:str}")
    async def require(
        self,
        request: Request[Any, Any, State],
        review: ReviewService,
        placement: str,
        data: Annotated[RequirementForm, FORM],
    ) -> Response[Any]:
        try:
            await review.require(placement, data.required, actor(request))
        except Problem as refused:
            return _back(data.back, error=refused.detail)
        state = "on" if data.required else "off"
        return _back(data.back, notice=f"Review is {state} for {placement}: its next jobs follow.")
