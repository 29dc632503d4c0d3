"""The review slice's service: the queue of pre-generated banners waiting for a marketer,
the decisions on them, and whether a placement asks for review at all.

A placement with review on stores its jobs' banners ``pending``; the read path serves only
``none`` and ``approved`` ones (falling back to the segment's or everyone's banner). A
decision names the banner it was made on: one for a banner since regenerated is reported
stale and changes nothing. Every decision is audited (in the store, with the write) and
emitted as ``review.decided``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from app.domain import Audience, Banner, Subject
from app.events import Events, NoEvents
from app.guards import problem_parts
from app.logs import get_logger
from app.pipeline import Pipeline
from app.server.errors import Problem, invalid
from app.server.review.schemas import DecisionIn, Flag, QueueState
from app.store.pregenerated import ReviewDecision, ReviewedBanner, ReviewSetting, ReviewStore

log = get_logger(__name__)

__all__ = [
    "DecisionOutcome",
    "DecisionReport",
    "PlacementReview",
    "ReviewItem",
    "ReviewQueue",
    "ReviewService",
    "ReviewSetting",
]


@dataclass(frozen=True)
class ReviewItem:
    """A stored banner as the queue shows it: the banner, whose it is, how it was made, and
    where its review stands."""

    placement: str
    audience: Audience
    subject: str
    banner_id: str
    banner: Banner
    review: str  # none | pending | approved | rejected
    review_reason: str | None
    reviewed_by: str | None
    reviewed_at: datetime | None
    fallback: bool
    stale_reason: str | None
    template: str
    template_version: int
    template_label: str
    job_id: str | None
    generated_at: datetime
    # The model's copy where a marketer edited it before approving (``banner`` holds the edit).
    model_copy: dict[str, str] | None = None

    @classmethod
    def of(cls, kept: ReviewedBanner) -> ReviewItem:
        return cls(
            placement=kept.placement,
            audience=kept.subject.audience,
            subject=kept.subject.key,
            banner_id=kept.banner.id,
            banner=kept.banner,
            review=kept.review,
            review_reason=kept.review_reason,
            reviewed_by=kept.reviewed_by,
            reviewed_at=kept.reviewed_at,
            fallback=kept.banner.fallback,
            stale_reason=kept.stale_reason,
            template=kept.banner.template,
            template_version=kept.inputs.template_version,
            template_label=kept.inputs.template_label,
            job_id=kept.job_id,
            generated_at=kept.generated_at,
            model_copy=kept.model_copy,
        )


@dataclass(frozen=True)
class ReviewQueue:
    items: list[ReviewItem]
    total: int  # matching the filters, on every page
    limit: int
    offset: int


@dataclass(frozen=True)
class DecisionOutcome:
    placement: str
    audience: Audience
    subject: str
    banner_id: str
    decision: str
    reason: str | None
    edited_to: str | None = None  # an edit and approve: the id of the edited banner served


@dataclass(frozen=True)
class DecisionReport:
    """Which decisions were applied, and which were stale: the row holds another banner now
    (regenerated since) or none at all; nothing was changed for those."""

    applied: list[DecisionOutcome]
    stale: list[DecisionOutcome]


@dataclass(frozen=True)
class PlacementReview:
    """A placement as the review page lists it."""

    placement: str
    template: str
    required: bool
    pending: int


class ReviewService:
    """``events``: where ``review.decided`` goes (the webhooks' outbox; nobody by default)."""

    def __init__(
        self, store: ReviewStore, pipeline: Pipeline, events: Events | None = None
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.events: Events = events or NoEvents()

    # --- placements ---------------------------------------------------------------------------

    def placements(self) -> dict[str, str]:
        """{placement: its default template}, from the templates served now."""
        templates = self.pipeline.templates
        return {p: templates.default_for(p).name for p in templates.placements}

    def _template_of(self, placement: str) -> str:
        """The placement's default template; 404 for a placement no template serves."""
        try:
            return self.pipeline.templates.default_for(placement).name
        except KeyError as unknown:
            raise Problem("not-found", unknown.args[0]) from None

    async def setting(self, placement: str) -> ReviewSetting:
        self._template_of(placement)
        return await self.store.setting(placement)

    async def require(self, placement: str, required: bool, actor: str) -> ReviewSetting:
        template = self._template_of(placement)
        setting = await self.store.require(placement, required, actor, template)
        log.info("review_required", placement=placement, required=required, actor=actor)
        return setting

    async def overview(self) -> list[PlacementReview]:
        """Every placement with its review setting and how many banners wait."""
        required = await self.store.settings()
        pending = await self.store.pending_counts()
        return [
            PlacementReview(p, template, required.get(p, False), pending.get(p, 0))
            for p, template in self.placements().items()
        ]

    async def segments(self) -> list[str]:
        """The segments with a stored banner (the queue's segment filter)."""
        return await self.store.segments()

    def templates(self) -> list[str]:
        return list(self.pipeline.templates.names)

    # --- the queue ----------------------------------------------------------------------------

    async def queue(
        self,
        *,
        placement: str | None = None,
        state: QueueState = "pending",
        template: str | None = None,
        audience: Audience | None = None,
        segment: str | None = None,
        shopper: str | None = None,
        flags: Sequence[Flag] = (),
        limit: int = 50,
        offset: int = 0,
    ) -> ReviewQueue:
        """Stored banners matching every filter, oldest first. ``segment``: that segment's
        banner; ``shopper``: that shopper's own."""
        if placement is not None:
            self._template_of(placement)
        subject: str | None = None
        if segment is not None and shopper is not None:
            raise invalid("shopper", "give segment or shopper, not both")
        for name, value, kind in (
            ("segment", segment, Audience.SEGMENT),
            ("shopper", shopper, Audience.SHOPPER),
        ):
            if value is None:
                continue
            if audience is not None and audience is not kind:
                raise invalid(name, f"names a {kind.value} banner: leave out audience={audience}")
            audience, subject = kind, value
        kept, total = await self.store.queue(
            placement=placement,
            review=None if state == "all" else state,
            template=template,
            audience=audience,
            subject=subject,
            fallback=True if "fallback" in flags else None,
            stale=True if "stale" in flags else None,
            limit=limit,
            offset=offset,
        )
        return ReviewQueue([ReviewItem.of(k) for k in kept], total, limit, offset)

    # --- decisions ----------------------------------------------------------------------------

    async def decide(self, decisions: Sequence[DecisionIn], actor: str) -> DecisionReport:
        """Apply ``decisions`` in one transaction; each is audited and emitted. 404 (nothing
        applied) when one names a placement no template serves."""
        for placement in dict.fromkeys(d.placement for d in decisions):
            self._template_of(placement)
        asked: list[ReviewDecision] = []
        refused: list[dict[str, str]] = []
        for index, given in enumerate(decisions):
            subject = Subject(audience=given.audience, key=given.subject)
            decision = ReviewDecision(
                given.placement,
                subject,
                given.banner_id,
                given.decision,
                given.reason,
                given.generated_at,
            )
            if given.edit is not None:
                decision = await self._with_edit(decision, given.edit.fields(), index, refused)
            asked.append(decision)
        if refused:  # nothing applied: the marketer fixes the copy and sends it again
            shown = "; ".join(f"{r['field']}: {r['message']}" for r in refused[:3])
            raise Problem("invalid-request", f"the edited copy is refused: {shown}", errors=refused)
        decided = await self.store.decide_many(asked, actor)
        applied: list[DecisionOutcome] = []
        stale: list[DecisionOutcome] = []
        for given, kept in zip(decisions, decided, strict=True):
            outcome = DecisionOutcome(
                given.placement,
                given.audience,
                given.subject,
                given.banner_id,
                given.decision,
                kept.review_reason if kept is not None else given.reason,
                kept.banner.id if kept is not None and kept.model_copy is not None else None,
            )
            (applied if kept is not None else stale).append(outcome)
        for outcome in applied:
            await self._emit(outcome, actor)
        log.info("review_decided", applied=len(applied), stale=len(stale), actor=actor)
        return DecisionReport(applied, stale)

    async def _with_edit(
        self,
        decision: ReviewDecision,
        edit: dict[str, str],
        index: int,
        refused: list[dict[str, str]],
    ) -> ReviewDecision:
        """``decision`` carrying the banner as edited, once the edit passes what the model's
        copy must (``Pipeline.edited``); each problem appended to ``refused`` under its field.
        A row that holds another banner now is left to the store to report stale."""
        kept = await self.store.get(decision.placement, decision.subject)
        if kept is None or kept.banner.id != decision.banner_id:
            return decision
        # A field sent as it already reads is no edit (the page sends all three).
        edit = {k: v for k, v in edit.items() if v != getattr(kept.banner, k)}
        if not edit:
            return decision
        edited, problems = self.pipeline.edited(kept.banner, edit)
        for problem in problems:
            kind, field, why = problem_parts(problem)
            where = f"decisions[{index}].edit" + (f".{field}" if field else "")
            refused.append({"field": where, "message": f"{kind}: {why or field}"})
        if edited is None:
            return decision
        # An edit of an edit keeps the model's first copy: what the model wrote stays known.
        written = kept.model_copy or {
            name: getattr(kept.banner, name) for name in ("headline", "subheadline", "cta")
        }
        return replace(decision, edited=edited, model_copy=written)

    async def _emit(self, outcome: DecisionOutcome, actor: str) -> None:
        data = {
            "placement": outcome.placement,
            "audience": outcome.audience.value,
            "subject": outcome.subject,
            "banner_id": outcome.banner_id,
            "decision": outcome.decision,
            "reason": outcome.reason,
            "edited_to": outcome.edited_to,
            "actor": actor,
        }
        try:
            await self.events.emit("review.decided", data)
        except Exception:  # the decision stands (it is stored and audited); say so in the log
            log.exception("review_event_failed", **data)
