"""`marquee serve`, and with ``--workers N`` several processes serving the API on one port.

One Python process serves the read path at about 1,200 reads/s on one core (bench/reads.py);
more cores need more processes. Each worker is a whole replica of the service, as if started
on its own host against the same database: its own pipeline, the same slices. What must exist
once per host is done here, in the parent, before any worker starts:

- the database migrated and the first key made (workers racing to do it would collide);
- the managed vLLM server started (the workers use it as an external server) and watched;
- one studio secret (a session signed by one worker is read by the next);
- a folder where the workers' metrics meet (Prometheus multiprocess mode), so /metrics on any
  worker reports them all.

The workers are uvicorn's (it binds the socket once, restarts a worker that dies); jobs,
webhook deliveries and the scheduler are already safe with several replicas on one database.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import threading
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from app.config import Settings
from app.logs import get_logger

if TYPE_CHECKING:
    from app.generation.vllm_server import ManagedVLLM

log = get_logger("marquee.server")

# What the workers read their settings from (pydantic-settings: MARQUEE_ + the field name).
PREFIX = "MARQUEE_"
# The logging is the process's own (JSON lines); requests get 30 s to finish at shutdown.
UVICORN_OPTIONS: dict[str, Any] = {
    "log_config": None,
    "access_log": False,
    "timeout_graceful_shutdown": 30,
}


def worker_environment(
    settings: Settings, vllm_url: str | None, studio_secret: str
) -> dict[str, str]:
    """The settings the workers must share with the parent, as environment variables: what the
    command line changed, and what the parent decided for the host."""
    env = {
        f"{PREFIX}ENGINE": settings.engine,
        f"{PREFIX}HOST": settings.host,
        f"{PREFIX}PORT": str(settings.port),
        f"{PREFIX}WORKERS": str(settings.workers),
        f"{PREFIX}STUDIO_SECRET": studio_secret,
    }
    if vllm_url is not None:  # the parent's managed server, external to the workers
        env[f"{PREFIX}VLLM_MODE"] = "external"
        env[f"{PREFIX}VLLM_URL"] = vllm_url
        env[f"{PREFIX}VLLM_URLS"] = ""
    return env


async def prepare_database(settings: Settings) -> None:
    """Migrate and make the first key once, before the workers (each does both again at
    start-up, finding nothing left to do)."""
    from app.server.app import first_key
    from app.store.db import Database
    from app.store.repositories import ApiKeyStore

    db = Database(settings.database)
    try:
        await db.upgrade()
        await first_key(settings, ApiKeyStore(db))
    finally:
        await db.dispose()


def _watch(settings: Settings, server: ManagedVLLM, stop: threading.Event) -> None:
    """Restart the managed vLLM when it dies or stops answering, as a single service does,
    until ``stop`` is set."""
    from app.generation.vllm_server import ServerWatch

    watch = ServerWatch(server, settings.vllm_health_interval_s, settings.vllm_unhealthy_restart_s)

    async def run() -> None:
        watching = asyncio.create_task(watch.run())
        await asyncio.to_thread(stop.wait)
        watching.cancel()

    asyncio.run(run())


def serve_workers(settings: Settings) -> None:
    """Run ``settings.workers`` processes on ``settings.host:port`` until interrupted."""
    import uvicorn

    from app.runtime import vllm_server_config

    asyncio.run(prepare_database(settings))
    studio_secret = settings.studio_secret.get_secret_value() or secrets.token_urlsafe(32)
    with ExitStack() as cleanup:
        vllm_url = None
        if settings.engine == "vllm" and settings.vllm_mode == "managed":
            from app.generation.vllm_server import ManagedVLLM

            server = ManagedVLLM(vllm_server_config(settings))
            server.start()
            cleanup.callback(server.stop)
            server.wait_ready()
            vllm_url = server.base_url
            stop = threading.Event()
            watcher = threading.Thread(
                target=_watch, args=(settings, server, stop), name="vllm-watch", daemon=True
            )
            watcher.start()
            cleanup.callback(watcher.join, 5)
            cleanup.callback(stop.set)
        metrics = tempfile.mkdtemp(prefix="marquee-metrics-")
        cleanup.callback(shutil.rmtree, metrics, True)
        os.environ.update(worker_environment(settings, vllm_url, studio_secret))
        # Read by prometheus_client when a worker imports it: values go to files in there.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics
        log.info("workers", count=settings.workers, vllm=vllm_url or settings.engine)
        uvicorn.run(
            "app.server.app:app_from_environment",
            factory=True,
            workers=settings.workers,
            host=settings.host,
            port=settings.port,
            **UVICORN_OPTIONS,
        )


def serve(settings: Settings) -> None:
    """`marquee serve`: the service in this process, or ``settings.workers`` processes."""
    if settings.workers > 1:
        serve_workers(settings)
        return
    import uvicorn

    from app.server.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, **UVICORN_OPTIONS)
