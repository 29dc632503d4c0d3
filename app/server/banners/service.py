"""Banners, homepages and feedback: the only code on the banner side that touches the pipeline
or the stores. It owns caching, strict mode and the generation limit."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from app.catalog.store import shopper_version
from app.domain import Banner, FeedbackKind, Homepage
from app.pipeline import BannerRequest, Pipeline
from app.server.banners.schemas import BannerCreate, HomepageCreate
from app.server.errors import Problem
from app.server.limits import GenerationLimit
from app.server.metrics import CACHE_HITS, COALESCED, STORE_ERRORS, observe_banners
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
        template=template,
        placement=placement,
        count=count,
        filters=data.filters,
    )


def _engine_down(banners: list[Banner]) -> bool:
    return any(any(flag.startswith("engine_error") for flag in b.flags) for b in banners)


def _refuse_outage(banners: list[Banner], strict: bool) -> None:
    if strict and _engine_down(banners):
        raise Problem(
            "engine-unavailable",
            "the language model did not answer; "
            "retry later, or send strict=false to accept fallback copy",
            headers={"Retry-After": "5"},
        )


async def _shared(answer: asyncio.Future[list[Banner]]) -> list[Banner] | None:
    """Another request's answer; None when that request failed or went away."""
    try:
        return await asyncio.shield(answer)
    except asyncio.CancelledError:
        if answer.cancelled():  # the other request's, not ours: generate for ourselves
            return None
        raise


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
    # Generations under way, by request key (see _generate_once).
    _generating: dict[str, asyncio.Future[list[Banner]]] = field(default_factory=dict)

    def request_key(
        self, data: BannerCreate, request: BannerRequest, template_version: int, label: str
    ) -> str:
        """Identical requests share one answer while nothing they depend on has changed: the
        shopper (profile, history), the catalog, the template version and the model."""
        shopper = self.pipeline.shopper(request)
        material = [
            data.model_dump(mode="json", exclude={"strict"}),
            shopper_version(shopper),
            self.pipeline.catalog.version,
            template_version,
            label,
            self.pipeline.model_name,
        ]
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()

    async def banners(
        self, data: BannerCreate, api_key: str = "unknown"
    ) -> tuple[list[Banner], bool]:
        """The banners for a request, and whether they came from the cache (no slot taken).
        ``api_key``: the name of the key asking, whose tokens these are (metrics)."""
        request = banner_request(data, data.template, data.placement, data.count)
        try:
            template, label = self.pipeline.template(request)
        except KeyError as error:
            raise _unknown_template(self.pipeline, str(error.args[0])) from None
        key = self.request_key(data, request, template.version, label)
        if self.cache_ttl_s > 0:
            stored = await self.banners_store.fresh(key, self.cache_ttl_s)
            if stored is not None:
                CACHE_HITS.inc()
                return stored, True
        joined = self._generating.get(key)
        if joined is not None:  # the same request is being generated: share its answer
            banners = await _shared(joined)
            if banners is not None:
                COALESCED.inc()
                _refuse_outage(banners, data.strict)
                return banners, True
        banners = await self._generate_once(key, request)
        self._answered(banners, data.strict, api_key)
        if not _engine_down(banners):  # never cache an outage's fallbacks
            await self._keep(key, banners)
        return banners, False

    async def _generate_once(self, key: str, request: BannerRequest) -> list[Banner]:
        """Generate, letting identical requests that arrive meanwhile wait for this answer
        instead of generating it again (a popular shopper on a cold cache)."""
        shared: asyncio.Future[list[Banner]] = asyncio.get_running_loop().create_future()
        self._generating[key] = shared
        try:
            async with self.limit.slot():
                banners = await self.pipeline.generate(request)
            shared.set_result(banners)
            return banners
        except BaseException:
            shared.cancel()  # the waiters generate for themselves
            raise
        finally:
            if self._generating.get(key) is shared:
                del self._generating[key]

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
