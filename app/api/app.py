"""The Litestar application: the CMS-facing HTTP API over the one pipeline.

Models load in the background after start-up: /healthz answers at once, /readyz turns 200
when the pipeline (model, index, engine) is ready, and banner calls get 503 until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from litestar import Litestar
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import MutableScopeHeaders, State
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy.exc import SQLAlchemyError

from app.api.controllers import (
    BannerController,
    EventController,
    HealthController,
    HomepageController,
    ProductController,
    ShopperController,
)
from app.api.errors import Problem, handle_http, handle_storage, handle_unexpected
from app.api.metrics import ENGINE_RESTARTS, REJECTED, REQUEST_SECONDS, REQUESTS
from app.api.service import BannerService
from app.api.studio import AuditController, ExperimentController, TemplateController
from app.catalog.updates import CatalogUpdater
from app.config import Settings
from app.generation.vllm_server import ManagedVLLM, ServerWatch, stop_all
from app.hardware import describe, detect
from app.pipeline import Pipeline
from app.store.db import Database
from app.store.feedback import FeedbackStore
from app.store.repositories import ApiKeyStore, BannerStore, CatalogChanges
from app.store.templates import TemplateStore
from app.studio import Studio
from app.web.pages import StudioPages

log = logging.getLogger("marquee.api")
MAX_BODY_BYTES = 64 * 1024
WEB_TEMPLATES = Path(__file__).resolve().parents[1] / "web" / "templates"


class InFlightLimit:
    """At most ``limit`` generations at once; beyond it a clear 503 with Retry-After."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.current = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.current >= self.limit:
            REJECTED.inc()
            raise Problem(
                503,
                "Busy",
                f"{self.limit} requests already in flight; retry shortly",
                headers={"Retry-After": "2"},
            )
        self.current += 1
        try:
            yield
        finally:
            self.current -= 1


def observability(app: ASGIApp) -> ASGIApp:
    """Request id (kept from X-Request-ID or made), one JSON log line, request metrics."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode()[:64]
        request_id = incoming or uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableScopeHeaders(message)["X-Request-ID"] = request_id
            await send(message)

        start = time.perf_counter()
        try:
            await app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = str(scope.get("path_template") or "unmatched")
            REQUESTS.labels(route, str(status)).inc()
            REQUEST_SECONDS.labels(route).observe(elapsed)
            log.info(
                json.dumps(
                    {
                        "event": "request",
                        "request_id": request_id,
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "route": route,
                        "status": status,
                        "ms": round(elapsed * 1000, 1),
                    }
                )
            )

    return middleware


def create_app(
    settings: Settings, load_pipeline: Callable[[Settings], Pipeline] | None = None
) -> Litestar:
    """``load_pipeline`` builds the pipeline (default: from settings, with its engine)."""
    if load_pipeline is None:
        from app.runtime import build_pipeline

        def load_pipeline(s: Settings) -> Pipeline:
            return build_pipeline(s)

    loader = load_pipeline
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database)
    state = State(
        {
            "settings": settings,
            "db": db,
            "api_keys": ApiKeyStore(db),
            "limit": InFlightLimit(settings.max_in_flight_requests),
            "service": None,
            "updater": None,
            "studio": None,
            "feedback": FeedbackStore(db),
            "load_error": None,
            "engine_watch": None,
        }
    )
    background: list[asyncio.Task[None]] = []  # loops that live as long as the app
    # Decided once at start; the loaders below follow the same choices.
    from app.runtime import hardware_choices

    hardware = hardware_choices(settings)
    log.info(describe(hardware, detect()))

    def readiness() -> dict[str, Any]:
        service: BannerService | None = state.service
        engine = service.pipeline.engine if service else None
        # A managed server's health is the watch's last check: a probe never waits on vLLM.
        watch: ServerWatch | None = state.engine_watch
        engine_ok = engine is not None and (watch is None or watch.healthy)
        body: dict[str, Any] = {
            "ready": bool(service and engine_ok),
            "pipeline": service is not None,
            "engine": engine_ok,
        }
        if watch is not None:
            body["engine_restarts"] = watch.restarts
        body["hardware"] = {
            name: {"device": c.device, "dtype": c.dtype, "threads": c.threads}
            for name, c in hardware.items()
        }
        if state.load_error:
            body["error"] = state.load_error
        return body

    state.readiness = readiness

    async def load() -> None:
        try:
            pipeline = await asyncio.to_thread(loader, settings)
            # Templates come from the database (seeded from the prompts folder on first start).
            templates = TemplateStore(db)
            await templates.seed(settings.prompts_dir)
            studio = Studio(templates, state.feedback, pipeline)
            await studio.reload()
        except Exception as error:  # reported on /readyz, and in the log
            state.load_error = f"{type(error).__name__}: {error}"[:500]
            log.exception("pipeline failed to load")
            return
        state.studio = studio
        state.updater = CatalogUpdater(
            pipeline,
            CatalogChanges(db),
            index_dir=settings.index_dir,
            signals_refresh_delay_s=settings.signals_refresh_delay_s,
        )
        state.service = BannerService(pipeline, BannerStore(db), settings.banner_cache_ttl_s)
        server = getattr(pipeline.engine, "server", None)
        if isinstance(server, ManagedVLLM):
            state.engine_watch = ServerWatch(
                server, settings.vllm_health_interval_s, settings.vllm_unhealthy_restart_s
            )
            background.append(
                asyncio.create_task(state.engine_watch.run(on_restart=ENGINE_RESTARTS.inc))
            )
        log.info(
            json.dumps(
                {"event": "ready", "engine": pipeline.engine_name, "model": pipeline.model_name}
            )
        )

    async def follow_templates() -> None:
        """Other replicas publish through the same database: follow their label moves."""
        while True:
            await asyncio.sleep(settings.templates_refresh_s)
            studio: Studio | None = state.studio
            if studio is None:
                continue
            try:
                if await studio.reload_if_changed():
                    log.info(json.dumps({"event": "templates_reloaded"}))
            except Exception:  # a database hiccup: keep serving what we have, try again
                log.exception("could not reload templates")

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await db.upgrade()
        if await state.api_keys.count() == 0:
            key = await state.api_keys.create("dev", ["admin"])
            base = f"http://{settings.host}:{settings.port}"
            print(
                f"dev API key (admin scope, shown once): {key}\n"
                f"  curl -s -X POST {base}/v1/banners -H 'X-API-Key: {key}' "
                "-H 'Content-Type: application/json' -d '{\"shopper_id\": \"u004\"}'",
                flush=True,
            )
        task = asyncio.create_task(load())
        background.append(asyncio.create_task(follow_templates()))
        try:
            yield
        finally:
            task.cancel()
            for running in background:
                running.cancel()
            # A vLLM still starting up belongs to no engine yet: stop it here all the same.
            await asyncio.to_thread(stop_all)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            updater: CatalogUpdater | None = state.updater
            if updater is not None:
                await updater.close()
            service: BannerService | None = state.service
            if service is not None:
                await service.pipeline.close()
            await db.dispose()

    def not_ready() -> Problem:
        detail = state.load_error or "models are still loading"
        return Problem(503, "Not ready", detail, headers={"Retry-After": "10"})

    def provide_service() -> BannerService:
        service: BannerService | None = state.service
        if service is None:
            raise not_ready()
        return service

    def provide_updater() -> CatalogUpdater:
        updater: CatalogUpdater | None = state.updater
        if updater is None:
            raise not_ready()
        return updater

    def provide_studio() -> Studio:
        studio: Studio | None = state.studio
        if studio is None:
            raise not_ready()
        return studio

    return Litestar(
        route_handlers=[
            BannerController,
            HomepageController,
            ProductController,
            ShopperController,
            EventController,
            TemplateController,
            AuditController,
            ExperimentController,
            HealthController,
            StudioPages,
        ],
        dependencies={
            "service": Provide(provide_service, sync_to_thread=False),
            "updater": Provide(provide_updater, sync_to_thread=False),
            "studio": Provide(provide_studio, sync_to_thread=False),
        },
        exception_handlers={
            HTTPException: handle_http,
            SQLAlchemyError: handle_storage,
            Exception: handle_unexpected,
        },
        middleware=[observability],
        lifespan=[lifespan],
        state=state,
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(title="Marquee", version="0.1.0", path="/docs"),
        template_config=TemplateConfig(directory=WEB_TEMPLATES, engine=JinjaTemplateEngine),
        # The studio's forms are cookie-authenticated, so they need CSRF tokens; the API is
        # authenticated by a header a browser never adds on its own, so /v1 is left out.
        csrf_config=CSRFConfig(
            secret=settings.studio_secret or secrets.token_urlsafe(32),
            cookie_path="/studio",
            cookie_samesite="strict",
            exclude=[r"^/v1/"],
        ),
        logging_config=None,  # logging is configured by the process (JSON lines in serve)
        debug=False,
    )
