"""Starting a job from a command line: the selection as typed, the engine the workers use,
a progress bar. (The service starts jobs through its jobs slice, with the same runner.)"""

from __future__ import annotations

import asyncio
import getpass
import sys
from pathlib import Path

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.generation.engine import Engine
from app.pregeneration import cluster
from app.pregeneration.plan import SelectionError, check, read_ids
from app.pregeneration.runner import JobRunner, Progress
from app.pregeneration.worker import engine_urls
from app.store.db import Database
from app.store.pregenerated import Job, JobConflict, JobSpec, JobStore, PlacementBannerStore
from app.store.webhooks import WebhookStore
from app.webhooks import WebhookEvents


def spec_from_text(placement: str, selection: str, stale_only: bool) -> JobSpec:
    """``all``, ``segment:NAME`` or ``ids:FILE`` as a job's spec."""
    if selection.startswith("ids:"):
        path = Path(selection.removeprefix("ids:"))
        ids = read_ids(path)
        if not ids:
            raise SelectionError(f"{path}: no shopper id in it")
        return JobSpec(placement, "ids", ids, stale_only)
    if selection == "ids":
        raise SelectionError("ids needs a file: --shoppers ids:FILE")
    return JobSpec(placement, selection, None, stale_only)


def validate(settings: Settings, spec: JobSpec) -> tuple[Catalog, ShopperStore]:
    """Refuse an unknown placement or a selection of no known shopper before anything runs;
    the data it was checked against, which the job then plans with (read once)."""
    from app.runtime import load_data, load_templates

    catalog, shoppers = load_data(settings)
    check(load_templates(settings), shoppers, spec.placement, spec.shoppers, spec.shopper_ids)
    return catalog, shoppers


def run_job(
    settings: Settings,
    placement: str,
    selection: str,
    stale_only: bool,
    engine_name: str | None,
    *,
    progress: bool = True,
) -> Job:
    """Start (or resume) a job and run it here to its end."""
    from app.runtime import make_engine

    spec = spec_from_text(placement, selection, stale_only)
    data = validate(settings, spec)
    engine_settings = settings.model_copy(update={"engine": engine_name or settings.engine})
    # A vLLM engine here is a server (managed: started now) the workers share; the
    # transformers engine is loaded by each worker instead.
    engine = make_engine(engine_settings) if engine_settings.engine == "vllm" else None
    try:
        return asyncio.run(_run(engine_settings, spec, engine, progress, data))
    finally:
        cluster.shutdown()  # a local Ray's processes go with this command
        if engine is not None:
            asyncio.run(engine.close())


async def _run(
    settings: Settings,
    spec: JobSpec,
    engine: Engine | None,
    progress: bool,
    data: tuple[Catalog, ShopperStore],
) -> Job:
    from tqdm import tqdm

    async with Database.upgraded(settings.database) as db:
        jobs = JobStore(db, settings.job_heartbeat_timeout_s)
        try:
            job, resumed = await jobs.start(spec, f"cli:{getpass.getuser()}")
        except JobConflict as conflict:
            active = conflict.active
            raise SelectionError(
                f"job {active.id} is {active.state} for placement '{spec.placement}' "
                f"({active.done}/{active.total} made); wait for it, or cancel it with "
                f"DELETE /v1/jobs/{active.id}"
            ) from None
        bar = tqdm(total=0, unit="banner", desc=job.id, disable=not progress)
        if resumed:
            bar.write(f"resuming {job.id}: {job.done} made before", file=sys.stderr)

        def show(p: Progress) -> None:
            bar.total = p.total
            bar.n = p.done
            bar.set_postfix(failed=p.failures, fallback=p.fallbacks, refresh=False)
            bar.refresh()

        runner = JobRunner(
            settings,
            jobs,
            PlacementBannerStore(db),
            engine_urls(engine),
            model=engine.model if engine is not None else settings.llm_name,
            on_progress=show,
            # Into the webhooks' outbox: a running service's dispatcher sends them.
            events=WebhookEvents(WebhookStore(db)),
            data=data,
        )
        try:
            return await runner.run(job)
        finally:
            bar.close()
