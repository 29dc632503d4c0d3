"""Human review of pre-generated banners over HTTP, for marketer (and admin) keys: the queue,
decisions on it, and whether a placement's banners wait for approval at all."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post, put
from litestar.params import Parameter

from app.domain import IDENTIFIER_PATTERN, NAME_PATTERN, Audience
from app.server.auth import actor, require_scope
from app.server.errors import problems
from app.server.params import NamePath
from app.server.review.schemas import (
    MAX_DECISIONS_BODY_BYTES,
    MAX_QUEUE_LIMIT,
    DecisionsIn,
    Flag,
    QueueState,
    ReviewRequirement,
)
from app.server.review.service import DecisionReport, ReviewQueue, ReviewService, ReviewSetting


class ReviewController(Controller):
    path = "/v1/review"
    tags = ["review"]
    guards = [require_scope("marketer")]

    @get(
        "/",
        summary="The review queue: stored banners by review state (pending first), oldest first",
        opt=problems("not-found"),
    )
    async def queue(
        self,
        review: ReviewService,
        placement: Annotated[
            str | None, Parameter(pattern=NAME_PATTERN, description="one placement only")
        ] = None,
        review_state: Annotated[
            QueueState, Parameter(query="state", description="review state (all: any)")
        ] = "pending",
        template: Annotated[
            str | None, Parameter(pattern=NAME_PATTERN, description="made by this template")
        ] = None,
        audience: Annotated[
            Audience | None, Parameter(description="shopper, segment or popular banners")
        ] = None,
        segment: Annotated[
            str | None, Parameter(min_length=1, max_length=40, description="a segment's banner")
        ] = None,
        shopper: Annotated[
            str | None, Parameter(pattern=IDENTIFIER_PATTERN, description="a shopper's own")
        ] = None,
        flags: Annotated[
            list[Flag] | None,
            Parameter(description="fallback: fallback copy only; stale: marked stale only"),
        ] = None,
        limit: Annotated[int, Parameter(ge=1, le=MAX_QUEUE_LIMIT)] = 50,
        offset: Annotated[int, Parameter(ge=0, le=10_000_000)] = 0,
    ) -> ReviewQueue:
        return await review.queue(
            placement=placement,
            state=review_state,
            template=template,
            audience=audience,
            segment=segment,
            shopper=shopper,
            flags=flags or (),
            limit=limit,
            offset=offset,
        )

    @post(
        "/decisions",
        status_code=200,
        summary="Approve or reject banners (up to 500); says which were applied and which "
        "were stale (regenerated since)",
        opt=problems("not-found"),
        request_max_body_size=MAX_DECISIONS_BODY_BYTES,
    )
    async def decide(
        self, data: DecisionsIn, review: ReviewService, request: Request[Any, Any, Any]
    ) -> DecisionReport:
        return await review.decide(data.decisions, actor(request))


class PlacementReviewController(Controller):
    path = "/v1/placements"
    tags = ["review"]
    guards = [require_scope("marketer")]

    @get(
        "/{placement:str}/review",
        summary="Whether a placement's pre-generated banners wait for approval",
        opt=problems("not-found"),
    )
    async def setting(self, placement: NamePath, review: ReviewService) -> ReviewSetting:
        return await review.setting(placement)

    @put(
        "/{placement:str}/review",
        summary="Switch review on or off for a placement (its next jobs follow)",
        opt=problems("not-found"),
    )
    async def require(
        self,
        placement: NamePath,
        data: ReviewRequirement,
        review: ReviewService,
        request: Request[Any, Any, Any],
    ) -> ReviewSetting:
        return await review.require(placement, data.required, actor(request))
