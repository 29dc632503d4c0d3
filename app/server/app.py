"""The composition root: builds the services, registers the feature slices, runs the lifespan.

Models load in the background after start-up: /healthz answers at once, /readyz turns 200
when the pipeline (model, index, engine) is ready, and the slices answer 503 not-ready until
then. See docs/architecture.md for where a request goes and who owns what.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import secrets
import sys
from collections.abc import AsyncIterator, Callable

from litestar import Litestar
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig
from sqlalchemy.exc import SQLAlchemyError

from app.config import Settings
from app.generation.vllm_server import ManagedVLLM, ServerWatch, stop_all
from app.hardware import describe, detect
from app.logs import get_logger
from app.pipeline import Pipeline
from app.pregeneration import cluster
from app.pregeneration.runner import JobRunner
from app.pregeneration.worker import SubjectMaker, engine_urls
from app.server.auth import session_middleware
from app.server.banners.controllers import BannerController, HomepageController
from app.server.banners.service import BannerService
from app.server.campaigns import pages as campaign_pages
from app.server.campaigns.controllers import CampaignController
from app.server.campaigns.service import CampaignService
from app.server.catalog.controllers import EventController, ProductController, ShopperController
from app.server.catalog.service import CatalogService
from app.server.errors import handle_bad_encoding, handle_http, handle_storage, handle_unexpected
from app.server.health import HealthController
from app.server.jobs.controllers import JobController
from app.server.jobs.service import JobService
from app.server.keys.controllers import KeyController
from app.server.keys.service import KeyService
from app.server.limits import GenerationLimit
from app.server.metrics import ENGINE_RESTARTS
from app.server.middleware import observability
from app.server.openapi import ProblemDocs, PydanticContract, openapi_config
from app.server.placements.controllers import PlacementController
from app.server.placements.service import PlacementService
from app.server.ratelimits import rate_limits
from app.server.review import pages as review_pages
from app.server.review.controllers import PlacementReviewController, ReviewController
from app.server.review.service import ReviewService
from app.server.services import (
    Services,
    provide_banners,
    provide_campaigns,
    provide_catalog,
    provide_jobs,
    provide_keys,
    provide_placements,
    provide_review,
    provide_studio,
    provide_webhooks,
)
from app.server.studio import pages
from app.server.studio.controllers import (
    AuditController,
    ExperimentController,
    TemplateController,
)
from app.server.studio.service import StudioService
from app.server.webhooks.controllers import WebhookController
from app.server.webhooks.service import WebhookService
from app.store.campaigns import CampaignStore
from app.store.db import Database
from app.store.feedback import FeedbackStore
from app.store.pregenerated import (
    JobStore,
    PlacementBannerStore,
    PlacementSettingsStore,
    ReviewStore,
)
from app.store.repositories import ApiKeyStore, BannerStore, CatalogChanges
from app.store.templates import TemplateStore
from app.store.webhooks import WebhookStore
from app.webhooks import WebhookDispatcher, WebhookEvents

log = get_logger("marquee.server")
MAX_BODY_BYTES = 64 * 1024

SLICES = [
    # banners
    BannerController,
    HomepageController,
    # catalog
    ProductController,
    ShopperController,
    EventController,
    # studio
    TemplateController,
    AuditController,
    ExperimentController,
    CampaignController,
    campaign_pages.CampaignPages,
    pages.StudioSignIn,
    pages.StudioPages,
    # pre-generation and the read path
    JobController,
    PlacementController,
    # review of pre-generated banners
    ReviewController,
    PlacementReviewController,
    review_pages.ReviewPages,
    # keys
    KeyController,
    # webhooks
    WebhookController,
    # operations
    HealthController,
]


async def load_services(
    held: Services,
    loader: Callable[[Settings], Pipeline],
    background: list[asyncio.Task[None]],
    jobs_in_process: bool = False,
) -> None:
    """Build the pipeline (slow: models, index, engine), then the slices' services over it.
    ``jobs_in_process``: pre-generation jobs use the service's own pipeline, not Ray workers."""
    settings, db = held.settings, held.db
    try:
        pipeline = await asyncio.to_thread(loader, settings)
        # Templates come from the database (seeded from the prompts folder on first start).
        templates = TemplateStore(db)
        await templates.seed(
            settings.prompts_dir, settings.banned_terms, settings.banned_terms_by_language
        )
        studio = StudioService(templates, held.feedback, pipeline, held.limit, held.events)
        await studio.reload()
        campaigns = CampaignService(CampaignStore(db), pipeline)
        await campaigns.reload()
    except Exception as error:  # reported on /readyz, and in the log
        held.load_error = f"{type(error).__name__}: {error}"[:500]
        log.exception("pipeline failed to load")
        return
    held.studio = studio
    held.campaigns = campaigns
    held.catalog = CatalogService(
        pipeline,
        CatalogChanges(db),
        index_dir=settings.index_dir,
        signals_refresh_delay_s=settings.signals_refresh_delay_s,
    )
    placement_banners = PlacementBannerStore(db)
    held.placements = PlacementService(
        placement_banners,
        PlacementSettingsStore(db),
        pipeline,
        settings.pregenerate_max_age_s,
        settings.read_cache_s,
    )
    held.banners = BannerService(
        pipeline,
        BannerStore(db),
        held.feedback,
        held.limit,
        settings.banner_cache_ttl_s,
        settings.homepage_sections,
        held.placements,
    )
    jobs = JobStore(db, settings.job_heartbeat_timeout_s)
    runner = JobRunner(
        settings,
        jobs,
        placement_banners,
        engine_urls(pipeline.engine),
        pipeline.model_name,
        in_process=SubjectMaker(pipeline) if jobs_in_process else None,
        events=held.events,
    )
    held.jobs = JobService(jobs, pipeline, runner.run)
    if settings.pregenerate_every_s > 0:
        background.append(asyncio.create_task(held.jobs.schedule(settings.pregenerate_every_s)))
    held.review = ReviewService(ReviewStore(db), pipeline, events=held.events)
    server = getattr(pipeline.engine, "server", None)
    if isinstance(server, ManagedVLLM):
        held.engine_watch = ServerWatch(
            server, settings.vllm_health_interval_s, settings.vllm_unhealthy_restart_s
        )
        background.append(
            asyncio.create_task(held.engine_watch.run(on_restart=ENGINE_RESTARTS.inc))
        )
    # Everything loaded so far (models, catalog, index, tokenizer) lives as long as the
    # process: out of the collector's sight, a full collection no longer walks millions of
    # objects in the middle of requests (measured: the read path's p99 fell from ~45 ms).
    gc.freeze()
    log.info("ready", engine=pipeline.engine_name, model=pipeline.model_name)


async def follow_templates(held: Services) -> None:
    """Other replicas publish through the same database: follow their label moves (and the
    bandits' weights, which any replica may move when a period ends) and their campaigns."""
    while True:
        await asyncio.sleep(held.settings.templates_refresh_s)
        if held.studio is None or held.campaigns is None:
            continue
        try:
            await held.studio.move_bandits()  # a thompson split whose period is over
            if await held.studio.reload_if_changed():
                log.info("templates_reloaded")
            if await held.campaigns.reload_if_changed():
                log.info("campaigns_reloaded")
        except Exception:  # a database hiccup: keep serving what we have, try again
            log.exception("could not reload templates")


async def follow_writes(held: Services) -> None:
    """Other replicas write products, profiles and events to the same database: follow them,
    so a banner asked of any replica reflects them (app/server/catalog/service.py)."""
    every = held.settings.follow_writes_s
    if every <= 0:
        return
    while True:
        await asyncio.sleep(every)
        if held.catalog is None:
            continue
        try:
            changes = await held.catalog.follow()
            if changes:
                log.info("writes_followed", changes=changes)
        except Exception:  # a database hiccup: keep serving what we have, try again
            log.exception("could not follow other replicas' writes")


async def first_key(settings: Settings, keys: ApiKeyStore) -> None:
    """The first admin key. One given in MARQUEE_BOOTSTRAP_ADMIN_KEY is taken in by its hash.
    Otherwise, in dev, a fresh database gets a key printed once, so a newcomer can call the API;
    never in production, whose logs are read by more people than its keys are meant for: there
    the log says how to make one."""
    given = settings.bootstrap_admin_key.get_secret_value()
    if given:
        try:
            await keys.adopt("bootstrap", ["admin"], given)
        except ValueError as error:  # the message names the rule, never the key
            raise ValueError(f"MARQUEE_BOOTSTRAP_ADMIN_KEY: {error}") from None
        return
    if await keys.count() > 0:
        return
    if settings.env == "production":
        log.warning(
            "no API key exists (none is made or printed in production): create an admin key "
            "with `marquee keys create --name admin --scope admin` against this database, or "
            "set MARQUEE_BOOTSTRAP_ADMIN_KEY and restart"
        )
        return
    key = await keys.create("dev", ["admin"])
    base = f"http://{settings.host}:{settings.port}"
    # For the person at the terminal, on stderr: stdout is the JSON log stream, which is
    # collected and kept, and a key has no place there. The log records that one was made.
    log.info("dev_api_key_created", key_name="dev", shown_on="stderr")
    print(
        f"dev API key (admin scope, shown once): {key}\n"
        f"  curl -s -X POST {base}/v1/banners -H 'X-API-Key: {key}' "
        "-H 'Content-Type: application/json' -d '{\"shopper_id\": \"u004\"}'",
        file=sys.stderr,
        flush=True,
    )


def app_from_environment() -> Litestar:
    """The app of one of `marquee serve --workers N`'s processes, from the settings the parent
    put in the environment (app/server/workers.py)."""
    from app.config import get_settings
    from app.logs import configure_logging
    from app.runtime import share_cores_with_model_server
    from app.tracing import configure_tracing, trace_mode

    settings = get_settings()
    # Workers share the host's cores (and a managed vLLM's): each keeps a small torch pool,
    # as hardware_choices reports.
    share_cores_with_model_server(settings.torch_threads_beside_vllm)
    configure_logging(json_lines=True)
    configure_tracing(trace_mode(settings.traces))
    return create_app(settings)


def create_app(
    settings: Settings,
    load_pipeline: Callable[[Settings], Pipeline] | None = None,
    *,
    jobs_in_process: bool = False,
) -> Litestar:
    """``load_pipeline`` builds the pipeline (default: from settings, with its engine).
    ``jobs_in_process``: jobs are made by that pipeline, in this process, not on Ray workers
    (which build their own from settings): for tests whose pipeline is made by hand."""
    from app.runtime import build_pipeline, hardware_choices

    loader = load_pipeline or build_pipeline
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database)
    hardware = hardware_choices(settings)  # decided once; the loaders follow the same choices
    log.info("hardware", **describe(hardware, detect()))
    keys = ApiKeyStore(db)
    # Events go into the webhooks' outbox; the dispatcher sends them (and wakes when told).
    webhook_store = WebhookStore(db, settings.webhook_sealer())
    if settings.env == "production" and not webhook_store.sealer.sealing:
        log.warning(
            "webhook_secrets_plain",
            detail="webhook signing secrets are stored unencrypted: set "
            "MARQUEE_WEBHOOK_SECRET_KEYS (make a key with `marquee webhooks new-key`)",
        )
    dispatcher = WebhookDispatcher(
        webhook_store,
        timeout_s=settings.webhook_timeout_s,
        workers=settings.webhook_workers,
        allow_private=settings.webhook_allow_private,
    )
    held = Services(
        settings=settings,
        db=db,
        keys=keys,
        key_service=KeyService(keys),
        webhooks=WebhookService(
            webhook_store, dispatcher.notify, allow_private=settings.webhook_allow_private
        ),
        events=WebhookEvents(webhook_store, dispatcher.notify),
        feedback=FeedbackStore(db),
        limit=GenerationLimit(settings.max_in_flight_requests),
        hardware=hardware,
    )
    background: list[asyncio.Task[None]] = []  # loops that live as long as the app
    # Signs the studio's CSRF tokens and (a key derived from it) encrypts its sessions.
    studio_secret = settings.studio_secret.get_secret_value() or secrets.token_urlsafe(32)

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await db.upgrade()
        await first_key(settings, keys)
        loading = asyncio.create_task(load_services(held, loader, background, jobs_in_process))
        background.append(asyncio.create_task(follow_templates(held)))
        background.append(asyncio.create_task(follow_writes(held)))
        dispatching = asyncio.create_task(dispatcher.run())
        background.append(dispatching)
        try:
            yield
        finally:
            loading.cancel()
            for running in background:
                running.cancel()
            # A vLLM still starting up belongs to no engine yet: stop it here all the same.
            await asyncio.to_thread(stop_all)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loading
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await dispatching  # its sends stop before the database goes
            if held.jobs is not None:  # its jobs stop as interrupted, resumable
                await held.jobs.close()
            await asyncio.to_thread(cluster.shutdown)  # a local Ray goes with the service
            if held.placements is not None:
                await held.placements.close()
            if held.catalog is not None:
                await held.catalog.close()
            if held.banners is not None:
                await held.banners.pipeline.close()
            await db.dispose()

    return Litestar(
        route_handlers=SLICES,
        dependencies={
            "banners": Provide(provide_banners, sync_to_thread=False),
            "catalog": Provide(provide_catalog, sync_to_thread=False),
            "studio": Provide(provide_studio, sync_to_thread=False),
            "jobs": Provide(provide_jobs, sync_to_thread=False),
            "placements": Provide(provide_placements, sync_to_thread=False),
            "campaigns": Provide(provide_campaigns, sync_to_thread=False),
            "review": Provide(provide_review, sync_to_thread=False),
            "keys": Provide(provide_keys, sync_to_thread=False),
            "webhooks": Provide(provide_webhooks, sync_to_thread=False),
        },
        exception_handlers={
            HTTPException: handle_http,
            UnicodeDecodeError: handle_bad_encoding,
            SQLAlchemyError: handle_storage,
            Exception: handle_unexpected,
        },
        # Production serves the studio over HTTPS: its session cookie is sent on nothing else.
        middleware=[
            observability,
            session_middleware(studio_secret, secure=settings.env == "production"),
            *rate_limits(settings),
        ],
        lifespan=[lifespan],
        state=State({"services": held}),
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=openapi_config(),
        # The schema: each operation's problems and API key; bodies as pydantic checks them.
        plugins=[ProblemDocs(), PydanticContract()],
        template_config=TemplateConfig(
            directory=[pages.TEMPLATES, review_pages.TEMPLATES, campaign_pages.TEMPLATES],
            engine=JinjaTemplateEngine,
        ),
        # The studio's forms are cookie-authenticated, so they need CSRF tokens; the API is
        # authenticated by a header a browser never adds on its own, so /v1 is left out.
        csrf_config=CSRFConfig(
            secret=studio_secret,
            cookie_path="/studio",
            cookie_samesite="strict",
            exclude=[r"^/v1/"],
        ),
        logging_config=None,  # logging is configured by the process (JSON lines in serve)
        debug=False,
    )
