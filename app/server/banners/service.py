"""Banners, homepages and feedback: the only code on the banner side that touches the pipeline
or the stores. It owns caching, strict mode and the generation limit."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field, replace

from sqlalchemy.exc import SQLAlchemyError

from app.catalog.store import shopper_version
from app.choosing import copy_text
from app.domain import Banner, FeedbackKind, Homepage
from app.pipeline import BannerRequest, Pipeline, engine_failed
from app.prompting.templates import PromptTemplate
from app.retrieval.selector import CandidateFilters
from app.server.banners.schemas import BannerCreate, BannerList, HomepageCreate
from app.server.errors import Problem
from app.server.limits import GenerationLimit
from app.server.metrics import ANSWERS, CACHE_HITS, COALESCED, STORE_ERRORS, observe_banners
from app.server.placements.service import PlacementService
from app.store.feedback import FeedbackStore
from app.store.repositories import BannerStore

log = logging.getLogger("marquee.server")


def banner_request(
    data: BannerCreate | HomepageCreate,
    template: str | None = None,
    placement: str = "home_hero",
    count: int = 1,
) -> BannerRequest:
    return BannerRequest(
        shopper_id=data.shopper_id or (data.profile.id if data.profile else "anonymous"),
        shopper=data.profile.shopper(data.locale) if data.profile else None,
        locale=data.locale,
        template=template,
        placement=placement,
        count=count,
        filters=data.filters,
    )


def _engine_down(banners: list[Banner]) -> bool:
    return any(engine_failed(b) for b in banners)


def _refuse_outage(banners: list[Banner], strict: bool) -> None:
    if strict and _engine_down(banners):
        raise Problem(
            "engine-unavailable",
            "the language model did not answer; "
            "retry later, or send strict=false to accept fallback copy",
            headers={"Retry-After": "5"},
        )


def _unknown_template(pipeline: Pipeline, detail: str) -> Problem:
    return Problem("not-found", detail, templates=pipeline.templates.names)


@dataclass
class BannerService:
    pipeline: Pipeline
    banners_store: BannerStore
    feedback_store: FeedbackStore
    limit: GenerationLimit
    cache_ttl_s: float
    homepage_sections: list[str]
    placements: PlacementService
    # Generations under way, by request key (see _start).
    _generating: dict[str, asyncio.Task[list[Banner]]] = field(default_factory=dict)

    def request_key(
        self, data: BannerCreate, request: BannerRequest, template: PromptTemplate, label: str
    ) -> str:
        """Identical requests share one answer while nothing they depend on has changed: the
        shopper (profile, history), the catalog, the template version, the brand rules (a
        newly banned term) and the model."""
        shopper = self.pipeline.shopper(request)
        material = [
            data.model_dump(mode="json", exclude={"strict"}),
            shopper_version(shopper),
            self.pipeline.catalog.version,
            template.name,  # a locale variant is another template
            template.version,
            label,
            self.pipeline.templates.brand,
            self.pipeline.model_name,
        ]
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()

    def _plain(self, data: BannerCreate, template_name: str) -> bool:
        """Whether this request asks for exactly what pre-generation stores: a known shopper's
        one banner of the placement's own template, unfiltered."""
        return (
            data.profile is None
            and data.shopper_id is not None
            and self.pipeline.shoppers.known(data.shopper_id)
            and data.count == 1
            and data.filters == CandidateFilters()
            and template_name == self._placement_template(data.placement)
        )

    def _placement_template(self, placement: str) -> str | None:
        try:
            return self.pipeline.templates.default_for(placement).name
        except KeyError:
            return None

    async def banners(self, data: BannerCreate, api_key: str = "unknown") -> BannerList:
        """The banners for a request. ``api_key``: the name of the key asking, whose tokens
        these are (metrics). With ``max_wait_ms`` the answer never waits longer than that: a
        fresh pre-generated banner at once, or fallback copy while the live one is finished."""
        request = banner_request(data, data.template, data.placement, data.count)
        try:
            template, label = self.pipeline.template(request)
        except KeyError as error:
            raise _unknown_template(self.pipeline, str(error.args[0])) from None
        plain = self._plain(data, template.name)
        if data.max_wait_ms is not None and plain and data.shopper_id is not None:
            stored = await self.placements.fresh_own(data.placement, data.shopper_id)
            if stored is not None:
                ANSWERS.labels("pregenerated").inc()
                return BannerList(banners=[stored.banner], cached=True, source="pregenerated")
        key = self.request_key(data, request, template, label)
        if self.cache_ttl_s > 0:
            kept = await self.banners_store.fresh(key, self.cache_ttl_s)
            if kept is not None:
                CACHE_HITS.inc()
                ANSWERS.labels("cache").inc()
                return BannerList(banners=kept, cached=True, source="cache")
        making = self._generating.get(key)
        coalesced = making is not None
        if making is None:  # else the same request is being made: share its answer
            making = self._start(key, request, template, data.placement if plain else None)
        try:
            banners = await asyncio.wait_for(
                asyncio.shield(making),
                None if data.max_wait_ms is None else data.max_wait_ms / 1000,
            )
        except TimeoutError:
            return await self._deadline_fallback(data, request)
        if coalesced:
            COALESCED.inc()
            _refuse_outage(banners, data.strict)
        else:
            self._answered(banners, data.strict, api_key)
        ANSWERS.labels("live").inc()
        return BannerList(banners=banners, cached=coalesced, source="live")

    def _start(
        self, key: str, request: BannerRequest, template: PromptTemplate, placement: str | None
    ) -> asyncio.Task[list[Banner]]:
        """Generate in a task of its own: identical requests arriving meanwhile share it (a
        popular shopper on a cold cache), and it is finished and stored even when the request
        that started it stopped waiting (``max_wait_ms``, a client gone). ``placement``: also
        store it as the shopper's banner there, for the next read."""

        async def make() -> list[Banner]:
            try:
                async with self.limit.slot():
                    seen = await self._recent_copy(request, template)
                    banners = await self.pipeline.generate(replace(request, recent_copy=seen))
                if not _engine_down(banners):  # never keep an outage's fallbacks
                    await self._keep(key, banners)
                    if placement is not None:
                        await self._keep_for_reads(placement, request.shopper_id, banners[0])
                return banners
            finally:
                if self._generating.get(key) is task:
                    del self._generating[key]

        task = asyncio.create_task(make())
        self._generating[key] = task
        return task

    async def _recent_copy(
        self, request: BannerRequest, template: PromptTemplate
    ) -> tuple[str, ...]:
        """What a known shopper's latest banners said, for best-of-n to write something else;
        nothing to read when ``template`` (the one the request got) writes one sample, or for an
        inline profile."""
        if request.shopper is not None or self.pipeline.best_of(template) == 1:
            return ()
        try:
            latest = await self.banners_store.latest_for(request.shopper_id)
        except SQLAlchemyError:
            STORE_ERRORS.inc()
            log.exception("could not read the latest banners of %s", request.shopper_id)
            return ()  # novelty then decides nothing; the banner is still made
        return tuple(copy_text(banner) for banner in latest)

    async def _deadline_fallback(self, data: BannerCreate, request: BannerRequest) -> BannerList:
        """``max_wait_ms`` ran out: the segment's or everyone's stored banner, else fallback
        copy from catalog facts; the live banner goes on and is stored for the next read."""
        waited = f"no banner within max_wait_ms={data.max_wait_ms}"
        if data.strict:
            raise Problem(
                "engine-unavailable",
                f"{waited}; it is still being made and will be stored: retry shortly, or send "
                "strict=false to accept fallback copy",
                headers={"Retry-After": "2"},
            )
        stand_in = None
        if data.count == 1 and data.shopper_id is not None:
            stand_in = await self.placements.stand_in(data.placement, data.shopper_id)
        banners = (
            [stand_in.banner]
            if stand_in is not None
            else self.pipeline.fallback(self.pipeline.prepare(request), f"deadline: {waited}")
        )
        ANSWERS.labels("fallback").inc()
        return BannerList(banners=banners, cached=False, source="fallback", generating=True)

    async def _keep_for_reads(self, placement: str, shopper_id: str, banner: Banner) -> None:
        try:
            await self.placements.keep_live(placement, shopper_id, banner)
        except SQLAlchemyError:
            STORE_ERRORS.inc()
            log.exception("could not store banner %s for reads", banner.id)

    async def homepage(self, data: HomepageCreate, api_key: str = "unknown") -> Homepage:
        sections = data.sections or self.homepage_sections
        unknown = [name for name in sections if name not in self.pipeline.templates.names]
        if unknown:
            raise _unknown_template(self.pipeline, f"unknown template(s): {', '.join(unknown)}")
        async with self.limit.slot():
            page = await self.pipeline.homepage(banner_request(data), sections)
        self._answered([section.banner for section in page.sections], data.strict, api_key)
        for section in page.sections:
            await self._keep(f"homepage:{page.id}:{section.position}", [section.banner])
        return page

    async def banner(self, banner_id: str) -> Banner:
        banner = await self.banners_store.get(banner_id)
        if banner is None:
            raise Problem("not-found", f"no banner '{banner_id}'")
        return banner

    async def record_feedback(self, banner_id: str, event_id: str, kind: FeedbackKind) -> bool:
        """False when this event id was recorded before (nothing changes)."""
        return await self.feedback_store.record(event_id, await self.banner(banner_id), kind)

    @staticmethod
    def _answered(banners: list[Banner], strict: bool, api_key: str) -> None:
        """Count what was made; in strict mode an engine outage is a 503, not fallback copy."""
        observe_banners(banners, api_key)
        _refuse_outage(banners, strict)

    async def _keep(self, key: str, banners: list[Banner]) -> None:
        """Store banners; a storage failure is logged and counted, the CMS still gets them."""
        try:
            await self.banners_store.save(key, banners)
        except SQLAlchemyError:
            STORE_ERRORS.inc()
            log.exception("could not store banners %s", [b.id for b in banners])
