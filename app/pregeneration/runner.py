"""Running a pre-generation job: plan it, shard it over Ray workers, store what they make.

The runner is the job's driver: the CLI (`marquee pregenerate`) and the service (`POST
/v1/jobs`) both run jobs through it. Workers do retrieval, rendering and guards and send
generation to the engine; the runner alone writes to the database, a batch of results and the
job's counters in one transaction, so a killed job resumes exactly where its last write ended.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.domain import Subject
from app.events import Events, NoEvents
from app.logs import get_logger
from app.pregeneration import cluster
from app.pregeneration.freshness import stale_reasons
from app.pregeneration.plan import current, in_prompt_order, subjects
from app.pregeneration.worker import (
    Failed,
    Nothing,
    Outcome,
    SubjectMaker,
    Worker,
    model_failed,
)
from app.prompting.templates import TemplateRegistry
from app.store.pregenerated import (
    Generated,
    Job,
    JobState,
    JobStore,
    PlacementBannerStore,
    PlacementSettingsStore,
)

log = get_logger(__name__)

PLAN_CHUNK = 1000  # subjects checked against the database per query
SHARD_RETRIES = 2  # a shard whose worker died is sent again this many times
HEARTBEAT_S = 5.0


@dataclass(frozen=True)
class Progress:
    """What a job has done so far, for a progress bar."""

    done: int
    total: int
    failures: int
    fallbacks: int


@dataclass
class _Counts:
    done: int = 0
    failures: int = 0
    fallbacks: int = 0


@dataclass
class _Shard:
    subjects: list[Subject]
    attempts: int = 0


@dataclass
class _Pending:
    """Results made but not yet written."""

    generated: list[Generated] = field(default_factory=list)
    failed: int = 0
    emptied: list[Subject] = field(default_factory=list)  # nothing to show: none stored
    since: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return len(self.generated) + self.failed + len(self.emptied)


def runner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:120]


class JobRunner:
    """Runs jobs with the pipeline parts of ``settings``. ``engine_urls``: the vLLM server(s)
    the workers generate with (empty: each worker loads the configured engine itself).
    ``in_process``: make every shard here with this maker instead of on Ray workers.
    ``data``: the catalog and shoppers to plan with, when the caller has just read them (the
    CLI's one job); otherwise each run reads them, as they are then."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        banners: PlacementBannerStore,
        engine_urls: list[str],
        model: str,
        on_progress: Callable[[Progress], None] | None = None,
        in_process: SubjectMaker | None = None,
        events: Events | None = None,
        data: tuple[Catalog, ShopperStore] | None = None,
    ) -> None:
        self.data = data
        self.events: Events = events or NoEvents()
        self.placement_settings = PlacementSettingsStore(jobs.db)
        self.settings = settings
        self.jobs = jobs
        self.banners = banners
        self.engine_urls = engine_urls
        self.model = model
        self.on_progress = on_progress
        self.in_process = in_process

    async def run(self, job: Job) -> Job:
        """Run ``job`` to its end (succeeded, cancelled or failed; interrupted when the database
        stays away) and return it. Never raises for what a subject or a worker does; a failure
        of the job itself is recorded."""
        try:
            # Decided once per run: a placement switched to review mid-job reviews from its
            # next job on. Held by this run, not the runner, which runs jobs side by side.
            review = await self.placement_settings.new_banner_review(job.spec.placement)
            planned, done = await self._plan(job)
            job = await self.jobs.run(job.id, runner_name(), done + len(planned), done)
            self._report(job)
            log.info("job_started", job=job.id, to_make=len(planned), done_before=done)
            state: JobState = "cancelled" if job.cancel_requested else "succeeded"
            if planned and state == "succeeded":
                state = await self._dispatch(job, planned, review)
            finished = await self.jobs.finish(job.id, state)
            log.info("job_finished", job=job.id, state=state, done=finished.done)
            await self._finished(finished)
            return finished
        except asyncio.CancelledError:  # the process is stopping (Ctrl-C, shutdown)
            log.warning("job_interrupted", job=job.id)
            await asyncio.shield(self.jobs.interrupt(job.id))
            raise
        except SQLAlchemyError as error:
            # The database stayed away longer than job_db_retry_s: nothing is wrong with the
            # job itself, so it is interrupted, not failed; started again, it resumes.
            log.exception("job_interrupted_by_the_database", job=job.id)
            reason = f"database unavailable: {type(error).__name__}: {error}"
            try:
                await self.jobs.interrupt(job.id, reason)
                interrupted = await self.jobs.get(job.id)
            except SQLAlchemyError:  # still away: the missing heartbeat says interrupted
                raise error from None
            assert interrupted is not None
            return interrupted
        except Exception as error:  # the job fails; the service and the CLI go on
            log.exception("job_failed", job=job.id)
            reason = f"{type(error).__name__}: {error}"
            try:
                failed = await self.jobs.finish(job.id, "failed", reason)
                await self._finished(failed)
                return failed
            except SQLAlchemyError:  # the database is gone too: the job shows interrupted
                log.exception("job_not_recorded", job=job.id)
                raise error from None

    # --- planning ---------------------------------------------------------------------------

    async def _plan(self, job: Job) -> tuple[list[Subject], int]:
        """The subjects still to make, in prompt order, and how many this job made before."""
        from app.runtime import load_data, load_templates

        if self.data is not None:
            catalog, shoppers = self.data
        else:
            catalog, shoppers = await asyncio.to_thread(load_data, self.settings)
        templates = await asyncio.to_thread(load_templates, self.settings)
        spec = job.spec
        name = templates.default_for(spec.placement).name
        chosen = subjects(shoppers, spec.shoppers, spec.shopper_ids)
        planned: list[Subject] = []
        done = 0
        for start in range(0, len(chosen), PLAN_CHUNK):
            chunk = chosen[start : start + PLAN_CHUNK]
            finished = await self.jobs.finished_by(job.id, spec.placement, chunk)
            done += len(finished)
            chunk = [s for s in chunk if s not in finished]
            if spec.stale_only:
                chunk = await self._stale(chunk, spec.placement, shoppers, templates, name, catalog)
            planned += chunk
        return in_prompt_order(planned, shoppers, templates, name), done

    async def _stale(
        self,
        chunk: list[Subject],
        placement: str,
        shoppers: ShopperStore,
        templates: TemplateRegistry,
        name: str,
        catalog: Catalog,
    ) -> list[Subject]:
        stored = await self.banners.many(placement, chunk)
        now = datetime.now(UTC)
        stale = []
        for subject in chunk:
            kept = stored.get(subject)
            if (
                kept is None
                or kept.stale_reason is not None
                or stale_reasons(
                    kept.inputs,
                    kept.generated_at,
                    current(subject, shoppers, templates, name, self.model),
                    catalog,
                    now,
                    self.settings.pregenerate_max_age_s,
                )
            ):
                stale.append(subject)
        return stale

    # --- running ----------------------------------------------------------------------------

    async def _dispatch(self, job: Job, planned: list[Subject], review: str) -> JobState:
        """Make ``planned`` shard by shard and store results as they come. Returns how the
        job ended."""
        size = self.settings.job_shard_size
        shards = deque(_Shard(planned[i : i + size]) for i in range(0, len(planned), size))
        made = self._in_process(job, shards) if self.in_process else self._on_ray(job, shards)
        pending = _Pending()
        counts = _Counts(job.done, job.failures, job.fallbacks)
        stop = asyncio.Event()  # set when the job is asked to stop between two writes
        heartbeat = asyncio.create_task(self._heartbeat(job, stop))
        try:
            async for outcomes in made:  # an empty list now and then: time to look up
                for outcome in outcomes:
                    if isinstance(outcome, Failed):
                        pending.failed += 1
                    elif isinstance(outcome, Nothing):
                        pending.emptied.append(outcome.subject)
                    else:
                        pending.generated.append(outcome)
                if pending and (
                    len(pending) >= self.settings.job_write_batch
                    or time.monotonic() - pending.since > 2.0
                ):
                    if await self._write(job, pending, counts, review):
                        return "cancelled"
                    pending = _Pending()
                if stop.is_set():
                    return "cancelled"
            if pending and await self._write(job, pending, counts, review):
                return "cancelled"
            return "succeeded"
        finally:
            heartbeat.cancel()
            await made.aclose()  # stops the workers

    async def _in_process(
        self, job: Job, shards: deque[_Shard]
    ) -> AsyncGenerator[list[Outcome], None]:
        """Shards made one after the other by this process's pipeline (tests, and a service
        told not to use Ray)."""
        assert self.in_process is not None
        while shards:
            yield await self.in_process.make(job.spec.placement, shards.popleft().subjects, job.id)

    async def _on_ray(self, job: Job, shards: deque[_Shard]) -> AsyncGenerator[list[Outcome], None]:
        """Shards spread over Ray workers, each kept ``job_shards_in_flight`` deep so the
        engine always has work; a worker that dies is replaced and its shard sent again."""
        import ray
        from ray.exceptions import RayActorError

        await asyncio.to_thread(cluster.connect, self.settings)
        depth = self.settings.job_shards_in_flight
        # Coroutine methods make it an async actor: ``depth`` make() calls run at once.
        actor_class: Any = ray.remote(Worker).options(
            num_cpus=self.settings.job_worker_cpus, max_concurrency=depth + 2
        )
        workers: list[Any] = [
            actor_class.remote(self.settings, self.engine_urls)
            for _ in range(max(1, min(self.settings.job_workers, len(shards))))
        ]
        in_flight: dict[asyncio.Future[list[Outcome]], tuple[int, _Shard]] = {}
        try:
            await asyncio.gather(*(w.ready.remote() for w in workers))
            while shards or in_flight:
                for index, worker in enumerate(workers):
                    load = sum(1 for i, _ in in_flight.values() if i == index)
                    while shards and load < depth:
                        shard = shards.popleft()
                        shard.attempts += 1
                        ref = worker.make.remote(job.spec.placement, shard.subjects, job.id)
                        in_flight[asyncio.wrap_future(ref.future())] = (index, shard)
                        load += 1
                finished, _ = await asyncio.wait(
                    in_flight, timeout=HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED
                )
                if not finished:
                    yield []
                for future in finished:
                    index, shard = in_flight.pop(future)
                    try:
                        yield future.result()
                    except RayActorError as error:  # the worker process died
                        log.warning("worker_died", job=job.id, error=str(error)[:200])
                        workers[index] = actor_class.remote(self.settings, self.engine_urls)
                        await workers[index].ready.remote()
                        yield self._retry_or_fail(shard, shards, str(error))
        finally:
            for worker in workers:
                ray.kill(worker)

    @staticmethod
    def _retry_or_fail(shard: _Shard, shards: deque[_Shard], error: str) -> list[Outcome]:
        if shard.attempts <= SHARD_RETRIES:
            shards.appendleft(shard)
            return []
        return [Failed(subject, f"worker died: {error}"[:300]) for subject in shard.subjects]

    async def _write(self, job: Job, pending: _Pending, counts: _Counts, review: str) -> bool:
        """Store a batch with its counts, retrying while the database is unavailable (up to
        ``job_db_retry_s``). Returns whether the job was asked to stop."""
        failures = pending.failed + sum(model_failed(g) for g in pending.generated)
        deadline = time.monotonic() + self.settings.job_db_retry_s
        delay = 0.5
        while True:
            try:
                cancel = await self.jobs.record(
                    job.id,
                    job.spec.placement,
                    pending.generated,
                    pending.failed,
                    failures,
                    review=review,
                    emptied=pending.emptied,
                )
                break
            except SQLAlchemyError as error:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("job_write_retry", job=job.id, error=str(error)[:200], wait_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        if pending.generated:
            await self.events.emit(
                "banner.ready",
                {
                    "job": job.id,
                    "placement": job.spec.placement,
                    "review": review,
                    "banners": [
                        {
                            "audience": g.subject.audience.value,
                            "subject": g.subject.key,
                            "banner_id": g.banner.id,
                            "fallback": g.banner.fallback,
                        }
                        for g in pending.generated
                    ],
                },
            )
        counts.done += len(pending)
        counts.failures += failures
        counts.fallbacks += sum(g.banner.fallback for g in pending.generated)
        if self.on_progress is not None:
            self.on_progress(Progress(counts.done, job.total, counts.failures, counts.fallbacks))
        return cancel

    async def _heartbeat(self, job: Job, stop: asyncio.Event) -> None:
        """Keep the job alive in the database while workers load or a batch is slow, and
        notice a request to stop."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                if await self.jobs.record(job.id, job.spec.placement, []):
                    stop.set()
            except SQLAlchemyError:
                log.warning("job_heartbeat_failed", job=job.id)

    async def _finished(self, job: Job) -> None:
        await self.events.emit(
            "job.finished",
            {
                "job": job.id,
                "placement": job.spec.placement,
                "state": job.state,
                "total": job.total,
                "done": job.done,
                "failures": job.failures,
                "fallbacks": job.fallbacks,
                "error": job.error,
            },
        )

    def _report(self, job: Job) -> None:
        if self.on_progress is not None:
            self.on_progress(Progress(job.done, job.total, job.failures, job.fallbacks))
