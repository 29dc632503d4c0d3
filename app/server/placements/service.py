"""The read path: a placement's pre-generated banner for a shopper, never generating.

Every answer is checked against the live catalog first: a banner showing a product that was
withdrawn, sold out or re-priced is never served with its old facts. It is marked stale (the
next ``--stale-only`` job makes it again) and the segment's or everyone's banner is served
instead, flagged as such.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError

from app.catalog.store import shopper_version
from app.domain import Audience, Banner, Subject
from app.logs import get_logger
from app.pipeline import Pipeline
from app.pregeneration.freshness import inputs_of, product_problems, stale_reasons
from app.pregeneration.plan import POPULAR, current
from app.server.errors import Problem
from app.server.placements.schemas import ServedBanner
from app.store.pregenerated import (
    Generated,
    PlacementBannerStore,
    PlacementSettingsStore,
    StoredBanner,
)

log = get_logger(__name__)

MAX_ROWS = 100_000


@dataclass
class PlacementService:
    store: PlacementBannerStore
    settings: PlacementSettingsStore
    pipeline: Pipeline
    max_age_s: float
    rows_for_s: float = 2.0  # Settings.read_cache_s
    # Stale marks being written (a read never waits for them).
    _marking: set[asyncio.Task[None]] = field(default_factory=set)
    # Stored rows read in the last ``rows_for_s`` (None: none stored), by (placement,
    # subject): everyone's and a segment's banner are read for many shoppers, and a shopper's
    # own for each page of a visit. A banner stored by another process (or a job) is seen
    # within that time; what it shows is checked against the live catalog on every read.
    _rows: dict[tuple[str, Subject], tuple[float, StoredBanner | None]] = field(
        default_factory=dict
    )

    def _template_name(self, placement: str) -> str:
        try:
            return self.pipeline.templates.default_for(placement).name
        except KeyError as unknown:
            raise Problem("not-found", unknown.args[0]) from None

    async def read(self, placement: str, shopper_id: str, fallback: bool = True) -> ServedBanner:
        name = self._template_name(placement)
        own = Subject(audience=Audience.SHOPPER, key=shopper_id)
        served = await self._first_servable(
            placement, name, [own, *self._stand_ins(shopper_id)] if fallback else [own]
        )
        if served is not None:
            return served
        if not fallback:
            raise Problem(
                "not-found",
                f"no servable banner for shopper '{shopper_id}' in placement '{placement}' "
                "(not pre-generated yet, or its products changed); leave out fallback=false "
                "for the segment's or everyone's",
            )
        raise Problem(
            "not-found",
            f"no servable banner in placement '{placement}': pre-generate it (POST /v1/jobs)",
        )

    async def fresh_own(self, placement: str, shopper_id: str) -> ServedBanner | None:
        """The shopper's own stored banner if it is servable and nothing it was made from
        changed (a live request that may take it instead of generating)."""
        name = self._template_name(placement)
        own = Subject(audience=Audience.SHOPPER, key=shopper_id)
        served = await self._first_servable(placement, name, [own])
        return served if served is not None and not served.stale else None

    async def stand_in(self, placement: str, shopper_id: str) -> ServedBanner | None:
        """The segment's or everyone's stored banner for this shopper, if one is servable."""
        name = self._template_name(placement)
        return await self._first_servable(placement, name, self._stand_ins(shopper_id))

    async def keep_live(self, placement: str, shopper_id: str, banner: Banner) -> None:
        """Store a banner generated live as the shopper's, for the next read (pending review
        where the placement asks for it)."""
        shopper = self.pipeline.shoppers.get(shopper_id)
        generated = Generated(
            subject=Subject(audience=Audience.SHOPPER, key=shopper_id),
            banner=banner,
            inputs=inputs_of(banner, shopper_version(shopper), self.pipeline.catalog),
        )
        review = await self.settings.new_banner_review(placement)
        await self.store.save(placement, [generated], review)
        self._forget(placement, generated.subject)

    def _stand_ins(self, shopper_id: str) -> list[Subject]:
        shoppers = self.pipeline.shoppers
        segment = (
            [Subject(audience=Audience.SEGMENT, key=shoppers.get(shopper_id).segment)]
            if shoppers.known(shopper_id)
            else []
        )
        return [*segment, POPULAR]

    async def _first_servable(
        self, placement: str, name: str, order: list[Subject]
    ) -> ServedBanner | None:
        stored = await self._stored(placement, order)
        for subject in order:
            kept = stored.get(subject)
            if kept is not None and self._servable(kept):
                return self._served(kept, name)
        return None

    async def _stored(
        self, placement: str, subjects: list[Subject]
    ) -> dict[Subject, StoredBanner | None]:
        """The stored rows of ``subjects``: recent reads from memory, the rest in one query."""
        now = time.monotonic()
        found: dict[Subject, StoredBanner | None] = {}
        missing = []
        for subject in subjects:
            held = self._rows.get((placement, subject))
            if held is not None and held[0] > now:
                found[subject] = held[1]
            else:
                missing.append(subject)
        if missing:
            read = await self.store.many(placement, missing)
            if len(self._rows) >= MAX_ROWS:  # never grows without bound: start over
                self._rows.clear()
            for subject in missing:
                found[subject] = read.get(subject)
                if self.rows_for_s > 0:
                    self._rows[(placement, subject)] = (now + self.rows_for_s, found[subject])
        return found

    def _forget(self, placement: str, subject: Subject) -> None:
        self._rows.pop((placement, subject), None)

    def _servable(self, kept: StoredBanner) -> bool:
        """Whether review allows it and its products are still as it shows them; a banner
        whose products changed is marked stale."""
        if not kept.servable:
            return False
        problems = product_problems(kept.inputs.facts, self.pipeline.catalog, kept.inputs.anchor)
        if not problems:
            return True
        if kept.stale_reason is None:
            self._mark(kept, "; ".join(problems))
        return False

    def _served(self, kept: StoredBanner, name: str) -> ServedBanner:
        pipeline = self.pipeline
        now = current(
            kept.subject, pipeline.shoppers, pipeline.templates, name, pipeline.model_name
        )
        reasons = stale_reasons(
            kept.inputs, kept.generated_at, now, pipeline.catalog, datetime.now(UTC), self.max_age_s
        )
        if kept.stale_reason is not None:
            reasons.insert(0, kept.stale_reason)
        return ServedBanner(
            banner=kept.banner,
            source=kept.subject.audience,
            stale=bool(reasons),
            stale_reasons=reasons,
            generated_at=kept.generated_at,
            job_id=kept.job_id,
        )

    def _mark(self, kept: StoredBanner, reason: str) -> None:
        self._forget(kept.placement, kept.subject)

        async def write() -> None:
            try:
                await self.store.mark_stale(kept.placement, kept.subject, reason, kept.banner.id)
            except SQLAlchemyError:  # the next read notices again
                log.warning("stale_mark_failed", placement=kept.placement)

        task = asyncio.create_task(write())
        self._marking.add(task)
        task.add_done_callback(self._marking.discard)

    async def close(self) -> None:
        await asyncio.gather(*self._marking, return_exceptions=True)
