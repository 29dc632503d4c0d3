"""The typed object the app holds in ``State``: every service, and what readiness reports.

Stores that need only the database exist from the start; the slices' services exist once the
pipeline has loaded (in the background). Until then their providers answer 503 not-ready.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from litestar.datastructures import State

from app.config import Settings
from app.events import Events, NoEvents
from app.generation.vllm_server import ServerWatch
from app.hardware import Choice, Component
from app.server.banners.service import BannerService
from app.server.campaigns.service import CampaignService
from app.server.catalog.service import CatalogService
from app.server.errors import Problem
from app.server.jobs.service import JobService
from app.server.keys.service import KeyService
from app.server.limits import GenerationLimit
from app.server.placements.service import PlacementService
from app.server.review.service import ReviewService
from app.server.studio.service import StudioService
from app.server.webhooks.service import WebhookService
from app.store.db import Database
from app.store.feedback import FeedbackStore
from app.store.repositories import ApiKeyStore


@dataclass
class Services:
    settings: Settings
    db: Database
    keys: ApiKeyStore
    feedback: FeedbackStore
    limit: GenerationLimit
    hardware: dict[Component, Choice]
    key_service: KeyService  # needs only the database: there from start-up
    webhooks: WebhookService  # the same
    # Set once the pipeline has loaded:
    banners: BannerService | None = None
    catalog: CatalogService | None = None
    studio: StudioService | None = None
    campaigns: CampaignService | None = None
    jobs: JobService | None = None
    placements: PlacementService | None = None
    review: ReviewService | None = None
    engine_watch: ServerWatch | None = None
    load_error: str | None = None
    # Where the services and jobs emit events (the webhooks' outbox; app/events.py).
    events: Events = field(default_factory=NoEvents)

    def readiness(self) -> dict[str, Any]:
        pipeline = self.banners.pipeline if self.banners else None
        engine = pipeline.engine if pipeline else None
        # A managed server's health is the watch's last check: a probe never waits on vLLM.
        watch = self.engine_watch
        engine_ok = engine is not None and (watch is None or watch.healthy)
        body: dict[str, Any] = {
            "ready": bool(pipeline and engine_ok),
            "pipeline": pipeline is not None,
            "engine": engine_ok,
        }
        if watch is not None:
            body["engine_restarts"] = watch.restarts
        body["hardware"] = {
            name: {"device": c.device, "dtype": c.dtype, "threads": c.threads}
            for name, c in self.hardware.items()
        }
        if self.load_error:
            body["error"] = self.load_error
        return body

    def not_ready(self) -> Problem:
        detail = self.load_error or "models are still loading"
        return Problem("not-ready", detail, headers={"Retry-After": "10"})


def services(state: State) -> Services:
    held: Services = state.services
    return held


# Litestar providers: a handler asks for ``banners``, ``catalog``, ``studio``, ``jobs``,
# ``placements``, ``review``, ``campaigns``, ``keys`` or ``webhooks`` by name.

T = TypeVar("T")


def _loaded(state: State, pick: Callable[[Services], T | None]) -> T:
    """A service that exists once the pipeline has loaded: until then, 503 not-ready."""
    held = services(state)
    service = pick(held)
    if service is None:
        raise held.not_ready()
    return service


def provide_banners(state: State) -> BannerService:
    return _loaded(state, lambda held: held.banners)


def provide_catalog(state: State) -> CatalogService:
    return _loaded(state, lambda held: held.catalog)


def provide_studio(state: State) -> StudioService:
    return _loaded(state, lambda held: held.studio)


def provide_campaigns(state: State) -> CampaignService:
    return _loaded(state, lambda held: held.campaigns)


def provide_jobs(state: State) -> JobService:
    return _loaded(state, lambda held: held.jobs)


def provide_placements(state: State) -> PlacementService:
    return _loaded(state, lambda held: held.placements)


def provide_review(state: State) -> ReviewService:
    return _loaded(state, lambda held: held.review)


def provide_keys(state: State) -> KeyService:
    return services(state).key_service  # never 503: it does not wait for the pipeline


def provide_webhooks(state: State) -> WebhookService:
    return services(state).webhooks  # never 503: it needs only the database
