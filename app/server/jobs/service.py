"""The jobs slice's service: pre-generation jobs started, followed and cancelled over HTTP.

A job started here runs in this process, in the background, through the same runner as
``marquee pregenerate``; its state lives in the database, so any replica shows it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.logs import get_logger
from app.pipeline import Pipeline
from app.pregeneration.plan import SelectionError, check
from app.server.errors import Problem, invalid
from app.server.jobs.schemas import JobCreate
from app.store.pregenerated import Job, JobConflict, JobSpec, JobStore

log = get_logger(__name__)


@dataclass(frozen=True)
class JobView:
    """A job as the API shows it (an explicit id list is counted, not repeated)."""

    id: str
    placement: str
    shoppers: str
    shopper_count: int | None
    stale_only: bool
    state: str
    total: int
    done: int
    failures: int
    fallbacks: int
    banners_per_s: float | None
    eta_s: float | None
    cancel_requested: bool
    error: str | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    resumed: bool = False

    @classmethod
    def of(cls, job: Job, resumed: bool = False) -> JobView:
        spec = job.spec
        return cls(
            id=job.id,
            placement=spec.placement,
            shoppers=spec.shoppers,
            shopper_count=len(spec.shopper_ids) if spec.shopper_ids is not None else None,
            stale_only=spec.stale_only,
            state=job.state,
            total=job.total,
            done=job.done,
            failures=job.failures,
            fallbacks=job.fallbacks,
            banners_per_s=job.banners_per_s,
            eta_s=job.eta_s,
            cancel_requested=job.cancel_requested,
            error=job.error,
            created_by=job.created_by,
            created_at=job.created_at,
            started_at=job.started_at,
            heartbeat_at=job.heartbeat_at,
            finished_at=job.finished_at,
            resumed=resumed,
        )


class JobService:
    """``run`` runs one job to its end (the pre-generation runner's ``run``)."""

    def __init__(
        self, jobs: JobStore, pipeline: Pipeline, run: Callable[[Job], Coroutine[Any, Any, Job]]
    ) -> None:
        self.jobs = jobs
        self.pipeline = pipeline
        self.run = run
        self._running: set[asyncio.Task[Job]] = set()

    def _spec(self, data: JobCreate) -> JobSpec:
        """The job asked for, refused before it exists if it names what is not there."""
        ids = tuple(dict.fromkeys(data.shopper_ids)) if data.shopper_ids is not None else None
        pipeline = self.pipeline
        try:
            check(pipeline.templates, pipeline.shoppers, data.placement, data.shoppers, ids)
        except SelectionError as error:
            raise invalid(error.field, str(error)) from None
        return JobSpec(data.placement, data.shoppers, ids, data.stale_only)

    async def start(self, data: JobCreate, actor: str) -> JobView:
        """Start a job (or resume the same one, interrupted) in the background."""
        spec = self._spec(data)
        try:
            job, resumed = await self.jobs.start(spec, actor)
        except JobConflict as conflict:
            active = conflict.active
            raise Problem(
                "conflict",
                f"job {active.id} is {active.state} for placement '{spec.placement}' "
                f"({active.done}/{active.total} made); wait for it or cancel it",
                job=active.id,
            ) from None
        self._launch(job)
        log.info("job_queued", job=job.id, placement=spec.placement, resumed=resumed)
        return JobView.of(job, resumed)

    def _launch(self, job: Job) -> asyncio.Task[Job]:
        task = asyncio.create_task(self.run(job))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    async def refresh_stale(self) -> list[JobView]:
        """One pass of the scheduler: for every placement, one after the other, a job making
        only what is missing or stale. A placement whose job is running (here or on another
        replica) is left to it."""
        made = []
        for placement in self.pipeline.templates.placements:
            try:
                job, _ = await self.jobs.start(JobSpec(placement, "all", None, True), "scheduler")
            except JobConflict:
                continue
            made.append(JobView.of(await self._launch(job)))
        return made

    async def schedule(self, every_s: float) -> None:
        """Refresh what went stale every ``every_s`` seconds, for as long as the service runs."""
        while True:
            await asyncio.sleep(every_s)
            try:
                for view in await self.refresh_stale():
                    log.info("scheduled_job_done", job=view.id, state=view.state, made=view.total)
            except Exception:  # a database hiccup: the next pass tries again
                log.exception("scheduled_refresh_failed")

    async def get(self, job_id: str) -> JobView:
        job = await self.jobs.get(job_id)
        if job is None:
            raise Problem("not-found", f"no job '{job_id}'")
        return JobView.of(job)

    async def list(self, limit: int) -> list[JobView]:
        return [JobView.of(job) for job in await self.jobs.list(limit)]

    async def cancel(self, job_id: str) -> JobView:
        job = await self.jobs.cancel(job_id)
        if job is None:
            raise Problem("not-found", f"no job '{job_id}'")
        return JobView.of(job)

    async def close(self) -> None:
        """Stop this process's jobs: each is marked interrupted and resumes on its next start."""
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
