"""Pre-generation's core: the job and placement-banner stores, freshness, the plan of a job.

The store tests run on SQLite and on PostgreSQL (the ``database_url`` fixture). A runner that
died is simulated by writing its last heartbeat an hour back, never by waiting.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from app.catalog.store import Catalog, ShopperStore, shopper_version
from app.config import PROJECT_ROOT
from app.domain import (
    IDENTIFIER_PATTERN,
    Audience,
    Banner,
    BannerInputs,
    ResolvedProduct,
    Shopper,
    Subject,
)
from app.pregeneration.freshness import Current, inputs_of, product_problems, stale_reasons
from app.pregeneration.jobs import spec_from_text
from app.pregeneration.plan import (
    POPULAR,
    SelectionError,
    current,
    in_prompt_order,
    read_ids,
    shopper_for,
    subjects,
)
from app.prompting.templates import Split, TemplateRegistry, parse_template
from app.store.db import Database, JobRecord, PlacementBannerRecord
from app.store.pregenerated import (
    Generated,
    JobConflict,
    JobSpec,
    JobStore,
    PlacementBannerStore,
)

HERO = "home_hero"
GRID = "home_grid"
MADE_AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def shopper_subject(key: str) -> Subject:
    return Subject(audience=Audience.SHOPPER, key=key)


def segment_subject(key: str) -> Subject:
    return Subject(audience=Audience.SEGMENT, key=key)


FAN = shopper_subject("coffee_fan")
TWO = shopper_subject("coffee_two")
RUNNER = shopper_subject("runner")
REGULAR = segment_subject("regular")


def banner(
    banner_id: str = "bnr_1",
    products: tuple[tuple[str, float], ...] = (("C1", 120.0),),
    *,
    fallback: bool = False,
    template_version: int = 1,
    label: str = "production",
    model: str = "model-a",
    shopper_id: str = "coffee_fan",
) -> Banner:
    return Banner(
        id=banner_id,
        shopper_id=shopper_id,
        template="hero_banner",
        template_version=template_version,
        template_label=label,
        placement=HERO,
        variant=0,
        headline="Brew better mornings",
        subheadline="A grinder for coffee.",
        cta="Shop coffee",
        layout="hero",
        tone="warm",
        products=[
            ResolvedProduct(
                id=pid,
                title=f"Product {pid}",
                price=price,
                currency="USD",
                url=f"https://shop.example.com/{pid}",
                image_url=None,
            )
            for pid, price in products
        ],
        model=model,
        engine="scripted",
        fallback=fallback,
        created_at=MADE_AT,
    )


def inputs(
    facts: dict[str, tuple[float, bool]] | None = None,
    *,
    shopper_version: str = "sv1",
    template_version: int = 1,
    label: str = "production",
    model: str = "model-a",
    anchor: str | None = None,
) -> BannerInputs:
    return BannerInputs(
        shopper_version=shopper_version,
        template_version=template_version,
        template_label=label,
        model=model,
        facts={"C1": (120.0, True)} if facts is None else facts,
        anchor=anchor,
    )


def made(
    subject: Subject, banner_id: str, *, fallback: bool = False, stale: str | None = None
) -> Generated:
    return Generated(
        subject=subject,
        banner=banner(banner_id, fallback=fallback),
        inputs=inputs(),
        stale_reason=stale,
    )


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    async with Database.upgraded(database_url) as database:
        yield database


@pytest.fixture
def jobs(db: Database) -> JobStore:
    return JobStore(db, dead_after_s=60.0)


@pytest.fixture
def banners(db: Database) -> PlacementBannerStore:
    return PlacementBannerStore(db)


async def go_silent(db: Database, job_id: str, seconds: float = 3600.0) -> None:
    """The job's runner is gone: its last heartbeat lies ``seconds`` back."""
    async with db.writing() as session:
        await session.execute(
            update(JobRecord)
            .where(JobRecord.id == job_id)
            .values(heartbeat_at=datetime.now(UTC) - timedelta(seconds=seconds))
        )


async def holder(db: Database, placement: str) -> str | None:
    """The id of the job holding ``placement`` (None: it is free)."""
    async with db.sessions() as session:
        found: str | None = await session.scalar(
            select(JobRecord.id).where(JobRecord.active_placement == placement)
        )
    return found


ALL = JobSpec(HERO)
REGULARS = JobSpec(HERO, "segment:regular")


# --- JobStore: starting, holding, resuming -----------------------------------------------------


async def test_start_queues_a_job_that_holds_its_placement(jobs: JobStore, db: Database) -> None:
    job, resumed = await jobs.start(ALL, "ops")
    assert not resumed
    assert job.id.startswith("job_") and job.spec == ALL and job.created_by == "ops"
    assert (job.state, job.total, job.done, job.failures, job.fallbacks) == ("queued", 0, 0, 0, 0)
    assert not job.finished and not job.cancel_requested and job.finished_at is None
    assert job.banners_per_s is None and job.eta_s is None
    assert await jobs.get(job.id) == job
    assert await holder(db, HERO) == job.id
    assert await jobs.get("job_nope") is None

    with pytest.raises(JobConflict):
        await jobs.start(REGULARS, "someone-else")
    assert [j.id for j in await jobs.list()] == [job.id]  # refused: no second job
    assert await holder(db, HERO) == job.id


async def test_second_start_while_alive_raises_job_conflict_with_the_active_job(
    jobs: JobStore,
) -> None:
    first, _ = await jobs.start(ALL, "ops")
    await jobs.run(first.id, "host:1", total=5, done=0)
    try:
        await jobs.start(ALL, "ops")
    except JobConflict as conflict:
        assert conflict.active.id == first.id and conflict.active.state == "running"
    except Exception as error:
        raise AssertionError(f"expected JobConflict, got {error!r}") from error
    else:
        raise AssertionError("a second start for a held placement succeeded")


async def test_start_for_another_placement_succeeds_while_one_runs(
    jobs: JobStore, db: Database
) -> None:
    hero, _ = await jobs.start(ALL, "ops")
    await jobs.run(hero.id, "host:1", total=5, done=0)
    grid, resumed = await jobs.start(JobSpec(GRID), "ops")
    assert not resumed and grid.id != hero.id and grid.state == "queued"
    assert await holder(db, HERO) == hero.id and await holder(db, GRID) == grid.id


async def test_placement_is_unique_among_active_jobs_in_the_schema(db: Database) -> None:
    """Two processes racing to start a job for one placement: the database refuses one."""

    def row(job_id: str) -> JobRecord:
        return JobRecord(
            id=job_id,
            placement=HERO,
            shoppers="all",
            stale_only=False,
            state="queued",
            active_placement=HERO,
            total=0,
            done=0,
            failures=0,
            fallbacks=0,
            done_before_run=0,
            cancel_requested=False,
            created_by="t",
            created_at=datetime.now(UTC),
        )

    async with db.writing() as session:
        session.add(row("job_a"))
    with pytest.raises(IntegrityError):
        async with db.writing() as session:
            session.add(row("job_b"))


async def test_a_silent_runner_reads_as_interrupted_and_the_same_spec_resumes(
    jobs: JobStore, db: Database
) -> None:
    job, _ = await jobs.start(ALL, "ops")
    await jobs.run(job.id, "host:1", total=10, done=0)
    await jobs.record(job.id, HERO, [made(FAN, "b1"), made(TWO, "b2")])
    assert (await jobs.get(job.id)).state == "running"  # type: ignore[union-attr]

    await go_silent(db, job.id)
    seen = await jobs.get(job.id)
    assert seen is not None and seen.state == "interrupted" and seen.eta_s is None
    assert not seen.finished
    assert await holder(db, HERO) == job.id  # still held: it waits to be resumed

    again, resumed = await jobs.start(ALL, "ops")
    assert resumed and again.id == job.id
    assert again.state == "queued" and again.done == 2 and again.error is None
    assert [j.id for j in await jobs.list()] == [job.id]
    assert await jobs.finished_by(job.id, HERO, [FAN, TWO, RUNNER]) == {FAN, TWO}


async def test_a_queued_job_never_run_is_interrupted_once_silent(
    db: Database,
) -> None:
    quick = JobStore(db, dead_after_s=1e-6)
    job, _ = await quick.start(ALL, "ops")
    await go_silent(db, job.id, seconds=1.0)
    assert (await quick.get(job.id)).state == "interrupted"  # type: ignore[union-attr]
    patient = JobStore(db, dead_after_s=3600.0)
    assert (await patient.get(job.id)).state == "queued"  # type: ignore[union-attr]


async def test_a_silent_job_is_superseded_by_another_spec(jobs: JobStore, db: Database) -> None:
    old, _ = await jobs.start(ALL, "ops")
    await jobs.run(old.id, "host:1", total=10, done=0)
    await go_silent(db, old.id)

    new, resumed = await jobs.start(REGULARS, "ops")
    assert not resumed and new.id != old.id
    assert new.spec == REGULARS and new.state == "queued"
    cancelled = await jobs.get(old.id)
    assert cancelled is not None and cancelled.state == "cancelled" and cancelled.finished
    assert cancelled.error is not None and "superseded" in cancelled.error
    assert cancelled.finished_at is not None
    assert await holder(db, HERO) == new.id
    assert [j.id for j in await jobs.list()] == [new.id, old.id]


async def test_stale_only_or_other_ids_are_another_spec(jobs: JobStore, db: Database) -> None:
    ids = JobSpec(HERO, "ids", ("coffee_fan", "runner"))
    first, _ = await jobs.start(ids, "ops")
    await jobs.interrupt(first.id)
    same, resumed = await jobs.start(JobSpec(HERO, "ids", ("coffee_fan", "runner")), "ops")
    assert resumed and same.id == first.id and same.spec == ids

    await jobs.interrupt(first.id)
    other, resumed = await jobs.start(JobSpec(HERO, "ids", ("runner",)), "ops")
    assert not resumed and other.id != first.id

    await jobs.interrupt(other.id)
    stale, resumed = await jobs.start(JobSpec(HERO, "ids", ("runner",), True), "ops")
    assert not resumed and stale.id not in (first.id, other.id)


async def test_interrupt_keeps_the_placement_held(jobs: JobStore, db: Database) -> None:
    job, _ = await jobs.start(ALL, "ops")
    await jobs.run(job.id, "host:1", total=4, done=0)
    await jobs.interrupt(job.id)
    seen = await jobs.get(job.id)
    assert seen is not None and seen.state == "interrupted" and not seen.finished
    assert await holder(db, HERO) == job.id

    resumed_job, resumed = await jobs.start(ALL, "ops")
    assert resumed and resumed_job.id == job.id and resumed_job.state == "queued"

    await jobs.interrupt(job.id)
    new, resumed = await jobs.start(REGULARS, "ops")
    assert not resumed and new.id != job.id
    old = await jobs.get(job.id)
    assert old is not None and old.state == "cancelled"
    assert old.error is not None and "superseded" in old.error


async def test_interrupt_leaves_a_finished_job_alone(jobs: JobStore, db: Database) -> None:
    job, _ = await jobs.start(ALL, "ops")
    await jobs.finish(job.id, "succeeded")
    await jobs.interrupt(job.id)
    await jobs.interrupt("job_unknown")  # nothing to do, no error
    seen = await jobs.get(job.id)
    assert seen is not None and seen.state == "succeeded"
    assert await holder(db, HERO) is None


# --- JobStore: running, recording, finishing ---------------------------------------------------


async def test_run_then_record_stores_banners_and_counts_in_one_go(
    jobs: JobStore, banners: PlacementBannerStore
) -> None:
    job, _ = await jobs.start(ALL, "ops")
    running = await jobs.run(job.id, "host:42", total=7, done=1)
    assert (running.state, running.runner, running.total, running.done) == (
        "running",
        "host:42",
        7,
        1,
    )
    assert running.started_at is not None and running.banners_per_s is None

    stop = await jobs.record(
        job.id, HERO, [made(FAN, "b1", fallback=True), made(TWO, "b2")], failed=1, failures=2
    )
    assert stop is False
    seen = await jobs.get(job.id)
    assert seen is not None
    assert (seen.done, seen.failures, seen.fallbacks) == (1 + 2 + 1, 2, 1)

    await jobs.record(job.id, HERO, [made(REGULAR, "b3", fallback=True), made(POPULAR, "b4")])
    await jobs.record(job.id, HERO, [], failed=1, failures=1)
    seen = await jobs.get(job.id)
    assert seen is not None
    assert (seen.done, seen.failures, seen.fallbacks) == (7, 3, 2)
    assert seen.state == "running"

    stored = await banners.many(HERO, [FAN, TWO, REGULAR, POPULAR])
    assert {s: b.banner.id for s, b in stored.items()} == {
        FAN: "b1",
        TWO: "b2",
        REGULAR: "b3",
        POPULAR: "b4",
    }
    assert {b.job_id for b in stored.values()} == {job.id}
    assert stored[FAN].banner.fallback and not stored[TWO].banner.fallback


async def test_rate_and_eta_count_only_what_this_run_made(jobs: JobStore, db: Database) -> None:
    job, _ = await jobs.start(ALL, "ops")
    await jobs.run(job.id, "host:1", total=10, done=2)  # 2 made by an earlier run
    async with db.writing() as session:  # this run began ten seconds ago
        await session.execute(
            update(JobRecord)
            .where(JobRecord.id == job.id)
            .values(started_at=datetime.now(UTC) - timedelta(seconds=10))
        )
    await jobs.record(job.id, HERO, [made(FAN, "b1"), made(TWO, "b2"), made(RUNNER, "b3")])
    seen = await jobs.get(job.id)
    assert seen is not None and seen.started_at is not None and seen.heartbeat_at is not None
    elapsed = (seen.heartbeat_at - seen.started_at).total_seconds()
    assert elapsed >= 10
    assert seen.banners_per_s is not None and seen.banners_per_s > 0
    assert seen.banners_per_s == pytest.approx(3 / elapsed)
    assert seen.eta_s is not None and seen.eta_s > 0
    assert seen.eta_s == pytest.approx((10 - 5) / (3 / elapsed))

    done = await jobs.finish(job.id, "succeeded")
    assert done.eta_s is None  # nothing left to wait for


async def test_finish_releases_the_placement(jobs: JobStore, db: Database) -> None:
    job, _ = await jobs.start(ALL, "ops")
    await jobs.run(job.id, "host:1", total=1, done=0)
    await jobs.record(job.id, HERO, [made(FAN, "b1")])
    ended = await jobs.finish(job.id, "succeeded")
    assert ended.state == "succeeded" and ended.finished and ended.finished_at is not None
    assert ended.done == 1
    assert await holder(db, HERO) is None

    later = await jobs.get(job.id)
    assert later is not None and later.state == "succeeded" and later.finished_at is not None

    again, resumed = await jobs.start(ALL, "ops")
    assert not resumed and again.id != job.id and again.done == 0


async def test_finish_keeps_a_failure_shortened(jobs: JobStore) -> None:
    job, _ = await jobs.start(ALL, "ops")
    failed = await jobs.finish(job.id, "failed", "boom " * 200)
    assert failed.state == "failed" and failed.error is not None
    assert failed.error.startswith("boom") and len(failed.error) == 500
    with pytest.raises(KeyError):
        await jobs.finish("job_nope", "failed")
    with pytest.raises(KeyError):
        await jobs.run("job_nope", "host:1", total=1, done=0)


# --- JobStore: cancelling ----------------------------------------------------------------------


async def test_cancel_an_unknown_or_finished_job(jobs: JobStore) -> None:
    assert await jobs.cancel("job_nope") is None
    job, _ = await jobs.start(ALL, "ops")
    await jobs.finish(job.id, "succeeded")
    kept = await jobs.cancel(job.id)
    assert kept is not None and kept.state == "succeeded" and not kept.cancel_requested
    seen = await jobs.get(job.id)
    assert seen is not None and seen.state == "succeeded" and not seen.cancel_requested


async def test_cancel_an_interrupted_job_ends_it_and_frees_the_placement(
    jobs: JobStore, db: Database
) -> None:
    job, _ = await jobs.start(ALL, "ops")
    await jobs.run(job.id, "host:1", total=3, done=0)
    await go_silent(db, job.id)
    cancelled = await jobs.cancel(job.id)
    assert cancelled is not None and cancelled.state == "cancelled" and cancelled.finished
    assert cancelled.finished_at is not None
    assert await holder(db, HERO) is None
    # The same spec starts afresh: there is nothing left to resume.
    fresh, resumed = await jobs.start(ALL, "ops")
    assert not resumed and fresh.id != job.id

    stopped, _ = await jobs.start(JobSpec(GRID), "ops")
    await jobs.interrupt(stopped.id)
    ended = await jobs.cancel(stopped.id)
    assert ended is not None and ended.state == "cancelled"
    assert await holder(db, GRID) is None


async def test_cancel_a_live_job_asks_its_runner_to_stop(jobs: JobStore, db: Database) -> None:
    job, _ = await jobs.start(ALL, "ops")
    await jobs.run(job.id, "host:1", total=4, done=0)
    assert await jobs.record(job.id, HERO, [made(FAN, "b1")]) is False

    asked = await jobs.cancel(job.id)
    assert asked is not None and asked.cancel_requested and asked.state == "running"
    assert not asked.finished and await holder(db, HERO) == job.id

    assert await jobs.record(job.id, HERO, [made(TWO, "b2")]) is True  # the runner hears it
    still = await jobs.get(job.id)
    assert still is not None and still.state == "running" and still.done == 2

    ended = await jobs.finish(job.id, "cancelled")
    assert ended.state == "cancelled" and ended.cancel_requested
    assert await holder(db, HERO) is None


async def test_resuming_clears_an_old_cancel_request(jobs: JobStore, db: Database) -> None:
    job, _ = await jobs.start(ALL, "ops")
    await jobs.run(job.id, "host:1", total=4, done=0)
    await jobs.cancel(job.id)  # asked while alive ...
    await go_silent(db, job.id)  # ... but its runner died before hearing it
    again, resumed = await jobs.start(ALL, "ops")
    # cancel() on an interrupted job ends it, but this one was live when asked: it is resumed.
    assert resumed and again.id == job.id and not again.cancel_requested


# --- JobStore: what a job stored ----------------------------------------------------------------


async def test_finished_by_names_exactly_what_this_job_stored(
    jobs: JobStore, banners: PlacementBannerStore
) -> None:
    mine, _ = await jobs.start(ALL, "ops")
    theirs, _ = await jobs.start(JobSpec(GRID), "ops")
    await jobs.record(mine.id, HERO, [made(FAN, "b1"), made(REGULAR, "b2")])
    await jobs.record(theirs.id, HERO, [made(TWO, "b3")])  # another job, same placement
    await jobs.record(mine.id, GRID, [made(RUNNER, "b4")])  # this job, another placement
    await banners.save(HERO, [made(POPULAR, "b5")])  # outside any job

    asked = [FAN, TWO, RUNNER, REGULAR, POPULAR, segment_subject("sporty")]
    assert await jobs.finished_by(mine.id, HERO, asked) == {FAN, REGULAR}
    assert await jobs.finished_by(mine.id, HERO, [TWO, RUNNER]) == set()
    assert await jobs.finished_by(mine.id, HERO, []) == set()
    assert await jobs.finished_by(theirs.id, HERO, asked) == {TWO}
    assert await jobs.finished_by(mine.id, GRID, asked) == {RUNNER}


async def test_the_same_subject_recorded_twice_keeps_one_row_the_newer(
    jobs: JobStore, banners: PlacementBannerStore, db: Database
) -> None:
    first, _ = await jobs.start(ALL, "ops")
    await jobs.record(first.id, HERO, [made(FAN, "old", stale="engine down")])
    await jobs.finish(first.id, "succeeded")
    second, _ = await jobs.start(ALL, "ops")
    await jobs.record(second.id, HERO, [made(FAN, "new")])

    async with db.sessions() as session:
        rows = await session.scalar(select(func.count()).select_from(PlacementBannerRecord))
    assert rows == 1
    stored = await banners.get(HERO, FAN)
    assert stored is not None
    assert stored.banner.id == "new" and stored.job_id == second.id
    assert stored.stale_reason is None  # the new banner is fresh
    assert await jobs.finished_by(first.id, HERO, [FAN]) == set()
    assert await jobs.finished_by(second.id, HERO, [FAN]) == {FAN}


async def test_a_subject_with_nothing_to_show_loses_its_stored_banner(
    jobs: JobStore, banners: PlacementBannerStore
) -> None:
    """Nothing is back in stock for FAN any more: the banner about what was is removed (and
    the subject counted as done), the others stay."""
    first, _ = await jobs.start(ALL, "ops")
    await jobs.record(first.id, HERO, [made(FAN, "b1"), made(TWO, "b2")])
    await jobs.finish(first.id, "succeeded")
    second, _ = await jobs.start(ALL, "ops")
    await jobs.record(second.id, HERO, [], emptied=[FAN, RUNNER])  # RUNNER had none stored
    assert await banners.get(HERO, FAN) is None
    assert (await banners.get(HERO, TWO)) is not None
    job = await jobs.get(second.id)
    assert job is not None and job.done == 2 and job.failures == 0


async def test_list_is_newest_first(jobs: JobStore) -> None:
    started = [(await jobs.start(JobSpec(p), "ops"))[0].id for p in (HERO, GRID, "home_spot")]
    assert [j.id for j in await jobs.list()] == started[::-1]
    assert [j.id for j in await jobs.list(limit=2)] == started[::-1][:2]


# --- PlacementBannerStore ------------------------------------------------------------------------


async def test_save_then_get_round_trips_banner_and_inputs(banners: PlacementBannerStore) -> None:
    made_from = inputs(
        {"C1": (119.99, True), "C4": (140.0, False)},
        shopper_version="sv-9",
        template_version=3,
        label="variant_b",
        model="model-b",
        anchor="K2",
    )
    shown = banner("bnr_rt", (("C1", 119.99), ("C4", 140.0)), fallback=True, template_version=3)
    await banners.save(HERO, [Generated(FAN, shown, made_from, stale_reason="engine down")])

    stored = await banners.get(HERO, FAN)
    assert stored is not None
    assert stored.placement == HERO and stored.subject == FAN
    assert stored.banner == shown
    assert stored.inputs == made_from
    for price, in_stock in stored.inputs.facts.values():
        assert type(price) is float and type(in_stock) is bool
    assert stored.inputs.facts["C4"] == (140.0, False)
    assert stored.stale_reason == "engine down" and stored.job_id is None
    assert stored.generated_at.tzinfo is not None
    assert abs(datetime.now(UTC) - stored.generated_at) < timedelta(hours=1)

    await banners.save(HERO, [made(POPULAR, "bnr_pop")])
    popular = await banners.get(HERO, POPULAR)
    assert popular is not None and popular.subject == POPULAR and popular.banner.id == "bnr_pop"

    assert await banners.get(GRID, FAN) is None
    assert await banners.get(HERO, TWO) is None
    await banners.save(HERO, [])  # nothing to do, no error


async def test_many_returns_only_the_subjects_present(banners: PlacementBannerStore) -> None:
    await banners.save(HERO, [made(FAN, "b1"), made(REGULAR, "b2")])
    await banners.save(GRID, [made(TWO, "b3")])
    found = await banners.many(HERO, [FAN, TWO, REGULAR, POPULAR, shopper_subject("regular")])
    assert set(found) == {FAN, REGULAR}
    assert found[FAN].banner.id == "b1" and found[REGULAR].banner.id == "b2"
    assert await banners.many(HERO, []) == {}


async def test_mark_stale_only_marks_the_banner_it_names(banners: PlacementBannerStore) -> None:
    await banners.save(HERO, [made(FAN, "b1"), made(TWO, "b9")])
    await banners.mark_stale(HERO, FAN, "product C1 withdrawn", "b1")
    stored = await banners.get(HERO, FAN)
    assert stored is not None and stored.stale_reason == "product C1 withdrawn"
    other = await banners.get(HERO, TWO)
    assert other is not None and other.stale_reason is None

    await banners.save(HERO, [made(FAN, "b2")])  # regenerated: fresh again
    stored = await banners.get(HERO, FAN)
    assert stored is not None and stored.stale_reason is None

    await banners.mark_stale(HERO, FAN, "too late", "b1")  # b1 was replaced meanwhile
    stored = await banners.get(HERO, FAN)
    assert stored is not None and stored.banner.id == "b2" and stored.stale_reason is None

    await banners.mark_stale(HERO, FAN, "x" * 400, "b2")
    stored = await banners.get(HERO, FAN)
    assert stored is not None and stored.stale_reason == "x" * 300


# --- freshness -----------------------------------------------------------------------------------


def test_inputs_of_takes_prices_from_the_banner_and_stock_from_the_catalog(
    tiny_catalog: Catalog,
) -> None:
    catalog = tiny_catalog.withdrawing(["K1"])
    shown = banner(
        "b1",
        (("C1", 110.0), ("C4", 140.0), ("K1", 300.0), ("ZZ", 5.0)),
        template_version=4,
        label="variant_b",
        model="model-z",
    )
    got = inputs_of(shown, "sv-1", catalog)
    assert got == BannerInputs(
        shopper_version="sv-1",
        template_version=4,
        template_label="variant_b",
        model="model-z",
        facts={
            "C1": (110.0, True),  # the price it was shown at, not the catalog's 120
            "C4": (140.0, False),  # out of stock
            "K1": (300.0, False),  # withdrawn
            "ZZ": (5.0, False),  # not in the catalog
        },
    )
    named = shown.model_copy(update={"anchor": ResolvedProduct.of(tiny_catalog.products[8])})
    assert inputs_of(named, "sv-1", catalog).anchor == "K2"


def test_product_problems(tiny_catalog: Catalog) -> None:
    catalog = tiny_catalog.withdrawing(["K1"])
    assert product_problems({}, catalog) == []
    assert product_problems({"C1": (120.0, True), "C2": (60.0, True)}, catalog) == []
    assert product_problems({"C1": (120.004, True), "C2": (59.996, True)}, catalog) == []
    assert product_problems({"T1": (0.1 + 0.2 + 11.7, True)}, catalog) == []
    assert product_problems({"K1": (300.0, True)}, catalog) == ["product K1 withdrawn"]
    assert product_problems({"ZZ": (1.0, True)}, catalog) == ["product ZZ withdrawn"]
    assert product_problems({"C4": (140.0, True)}, catalog) == ["product C4 out of stock"]
    assert product_problems({"C2": (55.0, True)}, catalog) == ["product C2 price 55 -> 60"]
    assert product_problems({"C2": (59.98, True)}, catalog) == ["product C2 price 59.98 -> 60"]
    assert product_problems(
        {"C1": (120.0, True), "K1": (300.0, True), "C4": (140.0, False), "C2": (50.0, True)},
        catalog,
    ) == ["product K1 withdrawn", "product C4 out of stock", "product C2 price 50 -> 60"]
    # Withdrawn or not is the catalog's word: the same products on the original catalog are fine.
    assert product_problems({"K1": (300.0, True)}, tiny_catalog) == []

    # A "because you viewed" anchor is named, not offered: only its withdrawal matters.
    assert product_problems({}, catalog, anchor="C4") == []
    assert product_problems({}, catalog, anchor="K1") == ["product K1 withdrawn (named as viewed)"]


NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
NOW_CURRENT = Current(
    shopper_version="sv1", template_version=1, template_label="production", model="model-a"
)


def test_stale_reasons_fresh_and_each_change(tiny_catalog: Catalog) -> None:
    fresh = inputs()
    recent = NOW - timedelta(minutes=5)

    def reasons(
        made_from: BannerInputs, at: datetime = recent, max_age_s: float = 3600
    ) -> list[str]:
        return stale_reasons(made_from, at, NOW_CURRENT, tiny_catalog, NOW, max_age_s)

    assert reasons(fresh) == []
    assert reasons(inputs(shopper_version="sv0")) == ["profile or history changed"]
    assert reasons(inputs(template_version=2)) == ["template production v2 -> production v1"]
    assert reasons(inputs(label="variant_b")) == ["template variant_b v1 -> production v1"]
    assert reasons(inputs(model="model-old")) == ["model model-old -> model-a"]
    assert reasons(inputs({"C2": (50.0, True)})) == ["product C2 price 50 -> 60"]
    gone = Catalog(tiny_catalog.products, withdrawn=["K2"])
    assert stale_reasons(inputs(anchor="K2"), recent, NOW_CURRENT, gone, NOW, 3600) == [
        "product K2 withdrawn (named as viewed)"
    ]
    assert reasons(fresh, NOW - timedelta(hours=2)) == ["older than 3600 s"]
    assert reasons(fresh, NOW - timedelta(seconds=3599)) == []
    assert reasons(fresh, NOW - timedelta(days=400), max_age_s=0) == []
    assert len(reasons(inputs(shopper_version="x", model="y"), NOW - timedelta(days=1))) == 3


# --- plan ----------------------------------------------------------------------------------------


def test_subjects_of_all(tiny_shoppers: ShopperStore) -> None:
    assert subjects(tiny_shoppers, "all") == [
        *(shopper_subject(s) for s in ("coffee_fan", "coffee_two", "runner", "camper")),
        shopper_subject("newcomer"),
        segment_subject("regular"),
        segment_subject("sporty"),
        POPULAR,
    ]


def test_subjects_of_a_segment(tiny_shoppers: ShopperStore) -> None:
    assert subjects(tiny_shoppers, "segment:sporty") == [
        shopper_subject("runner"),
        shopper_subject("camper"),
        segment_subject("sporty"),
        POPULAR,
    ]


def test_subjects_of_ids_keep_their_order_once_each(tiny_shoppers: ShopperStore) -> None:
    got = subjects(tiny_shoppers, "ids", ["camper", "coffee_fan", "camper", "newcomer"])
    assert got == [
        shopper_subject("camper"),
        shopper_subject("coffee_fan"),
        shopper_subject("newcomer"),
        segment_subject("regular"),
        segment_subject("sporty"),
        POPULAR,
    ]
    assert subjects(tiny_shoppers, "ids", ("runner",)) == [
        shopper_subject("runner"),
        segment_subject("sporty"),
        POPULAR,
    ]


def test_selections_that_name_nothing_are_refused(tiny_shoppers: ShopperStore) -> None:
    with pytest.raises(SelectionError, match="2 unknown") as unknown:
        subjects(tiny_shoppers, "ids", ["runner", "ghost", "nobody"])
    assert "ghost" in str(unknown.value) and "nobody" in str(unknown.value)
    assert "runner" not in str(unknown.value)

    with pytest.raises(SelectionError, match="segments: regular, sporty") as segment:
        subjects(tiny_shoppers, "segment:vip")
    assert "vip" in str(segment.value)

    with pytest.raises(SelectionError, match="everyone"):
        subjects(tiny_shoppers, "everyone")
    with pytest.raises(SelectionError, match="names no shopper"):
        subjects(tiny_shoppers, "ids", [])
    with pytest.raises(SelectionError, match="names no shopper"):
        subjects(tiny_shoppers, "ids")
    with pytest.raises(SelectionError, match="names no shopper"):
        subjects(ShopperStore([]), "all")


def test_read_ids_skips_blanks_and_comments_once_each(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("# who\n\ncamper\n  runner  \n# runner2\ncamper\n\n\nnewcomer\n")
    assert read_ids(path) == ("camper", "runner", "newcomer")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody\n\n")
    assert read_ids(empty) == ()


def test_shopper_for_each_audience(tiny_shoppers: ShopperStore) -> None:
    assert shopper_for(shopper_subject("runner"), tiny_shoppers) == tiny_shoppers.get("runner")

    standin = shopper_for(segment_subject("big spenders"), tiny_shoppers)
    assert standin.segment == "big spenders" and standin.history == ()
    assert re.match(IDENTIFIER_PATTERN, standin.id), standin.id
    assert standin.id != shopper_for(segment_subject("regular"), tiny_shoppers).id
    Shopper.model_validate(standin.model_dump())  # a valid shopper as it stands

    everyone = shopper_for(POPULAR, tiny_shoppers)
    assert everyone.is_cold_start and everyone.segment == "unknown"
    assert re.match(IDENTIFIER_PATTERN, everyone.id)


def split_registry(weight: float = 0.5) -> TemplateRegistry:
    shipped = TemplateRegistry.from_folder(PROJECT_ROOT / "prompts")
    hero = shipped.get("hero_banner")
    text = (PROJECT_ROOT / "prompts" / "hero_banner.j2").read_text(encoding="utf-8")
    variant = parse_template(text, "hero_banner.j2", version=2)
    return TemplateRegistry(
        [shipped.get(n) for n in shipped.names],
        shipped.brand,
        labelled={"hero_banner": {"variant_b": variant}},
        splits={
            hero.header.placement: Split("hero_banner", "production", "variant_b", weight),
        },
    )


def many_shoppers() -> ShopperStore:
    return ShopperStore(
        Shopper(id=f"s{i:02d}", segment=("north", "south", "east")[i % 3]) for i in range(40)
    )


def test_in_prompt_order_groups_an_experiments_arms_keeping_order() -> None:
    registry = split_registry()
    shoppers = many_shoppers()
    planned = subjects(shoppers, "all")
    placement = registry.get("hero_banner").header.placement
    split = registry.splits[placement]

    def arm(subject: Subject) -> str:
        return split.label_for(placement, shopper_for(subject, shoppers).id)

    control = [s for s in planned if arm(s) == "production"]
    variant = [s for s in planned if arm(s) == "variant_b"]
    assert control and variant  # the split does split this selection
    assert in_prompt_order(planned, shoppers, registry, "hero_banner") == control + variant
    assert planned == subjects(shoppers, "all")  # the input list is left as it was

    # What each one's banner is made from now follows its arm.
    for subject in (control[0], variant[0]):
        now = current(subject, shoppers, registry, "hero_banner", "model-a")
        shopper = shopper_for(subject, shoppers)
        assert now == Current(
            shopper_version=shopper_version(shopper),
            template_version=2 if subject in variant else 1,
            template_label="variant_b" if subject in variant else "production",
            model="model-a",
        )


def test_in_prompt_order_without_a_split_keeps_the_selection_order(
    tiny_shoppers: ShopperStore,
) -> None:
    registry = TemplateRegistry.from_folder(PROJECT_ROOT / "prompts")
    planned = subjects(tiny_shoppers, "all")
    assert in_prompt_order(planned, tiny_shoppers, registry, "hero_banner") == planned
    # A split on another template of the placement leaves this one alone.
    other = split_registry()
    assert in_prompt_order(planned, tiny_shoppers, other, "grid_heading") == planned


# --- spec_from_text ------------------------------------------------------------------------------


def test_spec_from_text(tmp_path: Path) -> None:
    assert spec_from_text(HERO, "all", False) == JobSpec(HERO, "all", None, False)
    assert spec_from_text(HERO, "segment:sporty", True) == JobSpec(
        HERO, "segment:sporty", None, True
    )
    path = tmp_path / "ids.txt"
    path.write_text("runner\n# comment\n\ncamper\nrunner\n")
    assert spec_from_text(GRID, f"ids:{path}", False) == JobSpec(
        GRID, "ids", ("runner", "camper"), False
    )


def test_spec_from_text_refuses_ids_without_any(tmp_path: Path) -> None:
    with pytest.raises(SelectionError, match="ids:FILE"):
        spec_from_text(HERO, "ids", False)
    empty = tmp_path / "none.txt"
    empty.write_text("# nobody yet\n\n")
    with pytest.raises(SelectionError, match="no shopper id"):
        spec_from_text(HERO, f"ids:{empty}", False)
