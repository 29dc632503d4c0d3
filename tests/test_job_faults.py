"""A pre-generation job meeting faults: a vLLM replica killed mid-job, the database going away
for a moment and for longer. Each ends in a counted failure or a resumable job: nothing lost,
nothing half-written, nothing made twice.

The job runs in this process (the runner's ``in_process`` maker, the real pipeline over the
tiny catalog); the replicas are fake vLLM servers over real local HTTP (tests/test_replicas.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from sqlalchemy.exc import OperationalError

from app.catalog.store import ShopperStore
from app.config import Settings
from app.domain import Subject
from app.generation.replicas import ReplicaPool
from app.generation.vllm_engine import VLLMEngine
from app.pipeline import Pipeline
from app.pregeneration.plan import subjects
from app.pregeneration.runner import JobRunner
from app.pregeneration.worker import SubjectMaker
from app.runtime import load_data
from app.store.db import Database
from app.store.pregenerated import Generated, Job, JobSpec, JobStore, PlacementBannerStore
from tests.fakes import ScriptedEngine, make_pipeline
from tests.test_replicas import FakeReplica, until

PLACEMENT = "home_hero"


@pytest.fixture
def settings(data_files_settings: Settings) -> Settings:
    return data_files_settings.model_copy(
        update={
            "job_shard_size": 1,  # one subject a shard, written one by one
            "job_write_batch": 1,
            "job_db_retry_s": 2.0,
        }
    )


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    async with Database.upgraded(settings.database) as database:
        yield database


async def pipeline_over(settings: Settings, engine: object) -> Pipeline:
    # The loader reads the database with a loop of its own: off this one, as the service does.
    catalog, shoppers = await asyncio.to_thread(load_data, settings)
    return make_pipeline(engine, catalog, shoppers, settings)  # type: ignore[arg-type]


def runner(settings: Settings, jobs: JobStore, pipeline: Pipeline) -> JobRunner:
    return JobRunner(
        settings,
        jobs,
        PlacementBannerStore(jobs.db),
        [],
        pipeline.model_name,
        in_process=SubjectMaker(pipeline),
    )


async def stored(db: Database, shoppers: ShopperStore) -> dict[tuple[str, str], str | None]:
    """(audience, subject) -> the job id of every stored banner of the placement."""
    rows = await PlacementBannerStore(db).many(PLACEMENT, subjects(shoppers, "all"))
    return {(s.audience.value, s.key): kept.job_id for s, kept in rows.items()}


async def test_a_replica_killed_mid_job_costs_nothing(settings: Settings, db: Database) -> None:
    alive, doomed = await FakeReplica().start(), await FakeReplica().start()
    engines = [VLLMEngine(r.url, "fake-model", max_retries=0, timeout_s=5) for r in (alive, doomed)]
    pool = ReplicaPool(engines, cooldown_s=60)
    pipeline = await pipeline_over(settings, pool)
    jobs = JobStore(db)
    job, _ = await jobs.start(JobSpec(PLACEMENT), "test")
    doomed.hold.clear()  # requests reaching the doomed replica wait there ...
    running = asyncio.create_task(runner(settings, jobs, pipeline).run(job))
    await until(lambda: doomed.waiting > 0)
    await doomed.stop()  # ... and it dies with them in flight
    finished = await running
    try:
        assert finished.state == "succeeded", finished
        assert finished.failures == 0 and finished.fallbacks == 0
        assert finished.done == finished.total == len(await stored(db, pipeline.shoppers))
        assert alive.received >= finished.total  # every banner was made by the survivor
    finally:
        await pool.close()
        await alive.stop()


class FlakyJobs(JobStore):
    """The database refuses ``record`` on the calls numbered in ``failing`` (1-based)."""

    def __init__(self, db: Database, failing: set[int] | None = None, from_call: int = 0) -> None:
        super().__init__(db)
        self.failing = failing or set()
        self.from_call = from_call  # and every call from this one on (0: never)
        self.calls = 0

    async def record(
        self,
        job_id: str,
        placement: str,
        results: Sequence[Generated],
        failed: int = 0,
        failures: int = 0,
        review: str = "none",
        emptied: Sequence[Subject] = (),
    ) -> bool:
        if results or failed or emptied:  # heartbeats pass: only batches of results count
            self.calls += 1
            if self.calls in self.failing or (self.from_call and self.calls >= self.from_call):
                raise OperationalError("INSERT ...", None, Exception("database is locked"))
        return await super().record(job_id, placement, results, failed, failures, review, emptied)


async def test_a_database_gone_for_a_moment_is_waited_for(settings: Settings, db: Database) -> None:
    pipeline = await pipeline_over(settings, ScriptedEngine([]))
    jobs = FlakyJobs(db, failing={2, 3})
    job, _ = await jobs.start(JobSpec(PLACEMENT), "test")
    finished = await runner(settings, jobs, pipeline).run(job)
    assert finished.state == "succeeded", finished
    made = await stored(db, pipeline.shoppers)
    # Each batch counted once, though two were written twice (the failed tries wrote nothing).
    assert finished.done == finished.total == len(made)
    assert set(made.values()) == {job.id}


async def test_a_database_gone_for_longer_interrupts_the_job_and_it_resumes(
    settings: Settings, db: Database
) -> None:
    engine = ScriptedEngine([])
    pipeline = await pipeline_over(settings, engine)
    flaky = FlakyJobs(db, from_call=4)  # three batches stored, then the database is gone
    job, _ = await flaky.start(JobSpec(PLACEMENT), "test")
    quick = settings.model_copy(update={"job_db_retry_s": 0.3})
    stopped = await runner(quick, flaky, pipeline).run(job)
    assert stopped.state == "interrupted", stopped
    assert stopped.error and "database unavailable" in stopped.error
    assert (
        stopped.done == 3 and len(await stored(db, pipeline.shoppers)) == 3
    )  # counted exactly what it stored
    before = await stored(db, pipeline.shoppers)

    jobs = JobStore(db)  # the database is back: the same job again resumes
    resumed, again = await jobs.start(JobSpec(PLACEMENT), "test")
    assert again and resumed.id == job.id and resumed.error is None
    calls = len(engine.requests)
    finished: Job = await runner(settings, jobs, pipeline).run(resumed)
    assert finished.state == "succeeded" and finished.done == finished.total
    after = await stored(db, pipeline.shoppers)
    assert {k: v for k, v in after.items() if k in before} == before  # not made again
    assert len(engine.requests) - calls == finished.total - 3


async def test_a_runner_given_the_data_plans_with_it_and_reads_it_no_more(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI checks a job against the catalog and shoppers, then hands them to the runner:
    one read of the data per command, not two."""
    pipeline = await pipeline_over(settings, ScriptedEngine([]))
    jobs = JobStore(db)
    job, _ = await jobs.start(JobSpec(PLACEMENT), "test")

    def read_again(_settings: Settings) -> None:
        raise AssertionError("the data was read a second time")

    monkeypatch.setattr("app.runtime.load_data", read_again)
    given = JobRunner(
        settings,
        jobs,
        PlacementBannerStore(db),
        [],
        pipeline.model_name,
        in_process=SubjectMaker(pipeline),
        data=(pipeline.catalog, pipeline.shoppers),
    )
    finished = await given.run(job)
    assert finished.state == "succeeded", finished
    assert finished.done == finished.total == len(await stored(db, pipeline.shoppers))
