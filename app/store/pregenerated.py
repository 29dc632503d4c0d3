"""Pre-generation's tables: jobs (state, progress, who runs them) and the banner each
placement keeps per shopper, segment and for everyone else.

A job's results and its counters are written in one transaction (``JobStore.record``): a job
killed at any moment has counted exactly what it stored, and a resumed job skips exactly that.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, Literal

from sqlalchemy import Row, bindparam, case, delete, func, null, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain import Audience, Banner, BannerInputs, NamedCampaign, Subject
from app.store.db import (
    AuditRecord,
    Database,
    JobRecord,
    PlacementBannerRecord,
    PlacementSettingsRecord,
    aware,
)

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
# Queued, running and interrupted jobs hold their placement: an interrupted job (stopped, or
# its runner gone without a word) waits to be resumed by the next start of the same job.
HOLDING = ("queued", "running", "interrupted")
FINISHED = ("succeeded", "failed", "cancelled")
MAX_JOB_SHOPPER_IDS = 1_000_000  # an explicit id list travels in the job row (JSON)


@dataclass(frozen=True)
class JobSpec:
    """What a job makes: one placement, for a selection of shoppers."""

    placement: str
    shoppers: str = "all"  # "all", "segment:<name>" or "ids"
    shopper_ids: tuple[str, ...] | None = None  # for "ids"
    stale_only: bool = False


@dataclass(frozen=True)
class Job:
    id: str
    spec: JobSpec
    state: JobState
    total: int
    done: int
    failures: int
    fallbacks: int
    banners_per_s: float | None
    eta_s: float | None
    cancel_requested: bool
    error: str | None
    runner: str | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class JobConflict(Exception):
    """Another job is making this placement now. (A plain class: an exception that is a
    frozen dataclass cannot pass through a context manager, which sets its traceback.)"""

    def __init__(self, active: Job) -> None:
        super().__init__(f"job {active.id} is {active.state} for placement {active.spec.placement}")
        self.active = active


@dataclass(frozen=True)
class Generated:
    """One subject's new banner and what it was made from. ``stale_reason``: stored, but to be
    made again (an engine outage's fallback copy)."""

    subject: Subject
    banner: Banner
    inputs: BannerInputs
    stale_reason: str | None = None


@dataclass(frozen=True)
class StoredBanner:
    placement: str
    subject: Subject
    payload: dict[str, Any]  # the banner as stored: validated when it is first read (banner)
    inputs: BannerInputs
    stale_reason: str | None
    job_id: str | None
    generated_at: datetime
    review: str = "none"  # none | pending | approved | rejected
    review_reason: str | None = None
    # The model's own copy where a marketer edited it before approving (the payload holds the
    # edit, which is what is served); None: served as the model wrote it.
    model_copy: dict[str, str] | None = None

    @property
    def servable(self) -> bool:
        """Review allows it: not asked for, or approved."""
        return self.review in ("none", "approved")

    @cached_property
    def banner(self) -> Banner:
        # The read path looks at several stored rows and serves one: only that one is parsed.
        return Banner.model_validate(self.payload)


def _now() -> datetime:
    return datetime.now(UTC)


def _job(record: JobRecord, dead_after_s: float, now: datetime | None = None) -> Job:
    now = now or _now()
    state: JobState = record.state  # type: ignore[assignment]
    last_sign = record.heartbeat_at or record.created_at
    alive = ("queued", "running")
    if state in alive and now - aware(last_sign) > timedelta(seconds=dead_after_s):
        state = "interrupted"  # its runner stopped without saying so (killed, machine lost)
    rate = eta = None
    if record.started_at is not None and record.heartbeat_at is not None:
        elapsed = (aware(record.heartbeat_at) - aware(record.started_at)).total_seconds()
        made = record.done - record.done_before_run
        if elapsed > 0 and made > 0:
            rate = made / elapsed
            eta = max(record.total - record.done, 0) / rate if state in alive else None
    return Job(
        id=record.id,
        spec=JobSpec(
            placement=record.placement,
            shoppers=record.shoppers,
            shopper_ids=tuple(record.shopper_ids) if record.shopper_ids is not None else None,
            stale_only=record.stale_only,
        ),
        state=state,
        total=record.total,
        done=record.done,
        failures=record.failures,
        fallbacks=record.fallbacks,
        banners_per_s=rate,
        eta_s=eta,
        cancel_requested=record.cancel_requested,
        error=record.error,
        runner=record.runner,
        created_by=record.created_by,
        created_at=aware(record.created_at),
        started_at=aware(record.started_at) if record.started_at else None,
        heartbeat_at=aware(record.heartbeat_at) if record.heartbeat_at else None,
        finished_at=aware(record.finished_at) if record.finished_at else None,
    )


def _same_spec(record: JobRecord, spec: JobSpec) -> bool:
    ids = tuple(record.shopper_ids) if record.shopper_ids is not None else None
    return (record.placement, record.shoppers, ids, record.stale_only) == (
        spec.placement,
        spec.shoppers,
        spec.shopper_ids,
        spec.stale_only,
    )


class JobStore:
    """Jobs and the results they record. ``dead_after_s``: a queued or running job without a
    heartbeat for that long is interrupted (its runner is gone)."""

    def __init__(self, db: Database, dead_after_s: float = 60.0) -> None:
        self.db = db
        self.dead_after_s = dead_after_s

    async def start(self, spec: JobSpec, created_by: str) -> tuple[Job, bool]:
        """A queued job for ``spec``, and whether it is an interrupted one resumed.

        Raises JobConflict while a live job makes the same placement. An interrupted job with
        the same spec is resumed (what it finished stays finished); one with another spec is
        cancelled and a new job starts.
        """
        async with self.db.writing(f"jobs:{spec.placement}") as session:
            active = await session.scalar(
                select(JobRecord).where(JobRecord.active_placement == spec.placement)
            )
            if active is not None:
                view = _job(active, self.dead_after_s)
                if view.state != "interrupted":
                    raise JobConflict(view)
                if _same_spec(active, spec):
                    active.state = "queued"
                    active.heartbeat_at = _now()
                    active.cancel_requested = False
                    active.error = None
                    return _job(active, self.dead_after_s), True
                active.state = "cancelled"
                active.error = "superseded by a job with another selection"
                active.active_placement = None
                active.finished_at = _now()
                await session.flush()
            now = _now()
            record = JobRecord(
                id="job_" + secrets.token_hex(8),
                placement=spec.placement,
                shoppers=spec.shoppers,
                shopper_ids=list(spec.shopper_ids) if spec.shopper_ids is not None else None,
                stale_only=spec.stale_only,
                state="queued",
                active_placement=spec.placement,
                total=0,
                done=0,
                failures=0,
                fallbacks=0,
                done_before_run=0,
                cancel_requested=False,
                created_by=created_by,
                created_at=now,
                heartbeat_at=now,
            )
            session.add(record)
            try:
                await session.flush()
            except IntegrityError:  # another process started one in between (PostgreSQL)
                raise JobConflict(await self._active(spec.placement)) from None
            return _job(record, self.dead_after_s), False

    async def _active(self, placement: str) -> Job:
        async with self.db.sessions() as session:
            record = await session.scalar(
                select(JobRecord).where(JobRecord.active_placement == placement)
            )
        assert record is not None
        return _job(record, self.dead_after_s)

    async def run(self, job_id: str, runner: str, total: int, done: int) -> Job:
        """Mark a job running in ``runner`` (host:pid), with its planned size: ``done`` pairs
        already made by earlier runs of it, ``total`` in all."""
        async with self.db.writing(f"job:{job_id}") as session:
            record = await session.get(JobRecord, job_id)
            if record is None:
                raise KeyError(job_id)
            now = _now()
            record.state = "running"
            record.runner = runner
            record.total = total
            record.done = done
            record.done_before_run = done
            record.started_at = now
            record.heartbeat_at = now
            return _job(record, self.dead_after_s)

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
        """Store finished banners and count them, in one transaction, with the heartbeat.
        ``failed``: subjects handled but nothing stored; ``failures``: those plus the stored
        banners the model never answered for. ``review``: "pending" where the placement wants
        its banners approved first. ``emptied``: subjects with nothing to show now, whose
        stored banner (about products no longer back, say) is removed. Returns whether the
        job was asked to stop."""
        now = _now()
        rows = [_row(placement, result, job_id, now, review) for result in results]
        async with self.db.writing(f"job:{job_id}") as session:
            await _upsert(session, rows)
            for subject in emptied:
                await session.execute(
                    delete(PlacementBannerRecord).where(
                        PlacementBannerRecord.placement == placement,
                        PlacementBannerRecord.audience == subject.audience.value,
                        PlacementBannerRecord.subject == subject.key,
                    )
                )
            await session.execute(
                update(JobRecord)
                .where(JobRecord.id == job_id)
                .values(
                    done=JobRecord.done + len(results) + failed + len(emptied),
                    failures=JobRecord.failures + failures,
                    fallbacks=JobRecord.fallbacks + sum(r.banner.fallback for r in results),
                    heartbeat_at=now,
                )
            )
            cancel = await session.scalar(
                select(JobRecord.cancel_requested).where(JobRecord.id == job_id)
            )
        return bool(cancel)

    async def finish(self, job_id: str, state: JobState, error: str | None = None) -> Job:
        async with self.db.writing(f"job:{job_id}") as session:
            record = await session.get(JobRecord, job_id)
            if record is None:
                raise KeyError(job_id)
            now = _now()
            record.state = state
            record.error = error[:500] if error else None
            record.active_placement = None  # the placement is free for the next job
            record.finished_at = now
            record.heartbeat_at = now
            return _job(record, self.dead_after_s)

    async def interrupt(self, job_id: str, error: str | None = None) -> None:
        """The runner stops before the end (its process is shutting down, the database went
        away): the job keeps its placement, and the next start of the same job resumes it."""
        async with self.db.writing(f"job:{job_id}") as session:
            record = await session.get(JobRecord, job_id)
            if record is not None and record.state not in FINISHED:
                record.state = "interrupted"
                record.heartbeat_at = _now()
                record.error = error[:500] if error else None

    async def cancel(self, job_id: str) -> Job | None:
        """Ask a job to stop. A live job stops at its next write; one whose runner is gone
        ends here. A finished job stays as it is. None: no such job."""
        async with self.db.writing(f"job:{job_id}") as session:
            record = await session.get(JobRecord, job_id)
            if record is None:
                return None
            if record.state in FINISHED:
                return _job(record, self.dead_after_s)
            record.cancel_requested = True
            if _job(record, self.dead_after_s).state == "interrupted":  # nobody left to stop it
                record.state = "cancelled"
                record.active_placement = None
                record.finished_at = _now()
            return _job(record, self.dead_after_s)

    async def get(self, job_id: str) -> Job | None:
        async with self.db.sessions() as session:
            record = await session.get(JobRecord, job_id)
        return None if record is None else _job(record, self.dead_after_s)

    async def list(self, limit: int = 50) -> list[Job]:
        async with self.db.sessions() as session:
            records = await session.scalars(
                select(JobRecord).order_by(JobRecord.created_at.desc()).limit(limit)
            )
            return [_job(r, self.dead_after_s) for r in records]

    async def finished_by(
        self, job_id: str, placement: str, subjects: Iterable[Subject]
    ) -> set[Subject]:
        """Which of ``subjects`` this job has already made (a resumed job skips them)."""
        keys = [(s.audience.value, s.key) for s in subjects]
        if not keys:
            return set()
        async with self.db.sessions() as session:
            rows = await session.execute(
                select(PlacementBannerRecord.audience, PlacementBannerRecord.subject).where(
                    PlacementBannerRecord.placement == placement,
                    PlacementBannerRecord.job_id == job_id,
                    tuple_(PlacementBannerRecord.audience, PlacementBannerRecord.subject).in_(keys),
                )
            )
            return {Subject(audience=Audience(a), key=k) for a, k in rows}


KEY_COLUMNS = ("placement", "audience", "subject")


async def _upsert(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert placement banners, replacing the stored one of the same (placement, audience,
    subject): one statement, so a row is either the old banner or the new one."""
    if not rows:
        return
    dialect = sqlite if session.get_bind().dialect.name == "sqlite" else postgresql
    insert = dialect.insert(PlacementBannerRecord.__table__)
    statement = insert.on_conflict_do_update(
        index_elements=list(KEY_COLUMNS),
        set_={c: insert.excluded[c] for c in rows[0] if c not in KEY_COLUMNS},
    )
    await session.execute(statement, rows)


def _row(
    placement: str, result: Generated, job_id: str | None, now: datetime, review: str
) -> dict[str, Any]:
    inputs = result.inputs
    return {
        "placement": placement,
        "audience": result.subject.audience.value,
        "subject": result.subject.key,
        "banner_id": result.banner.id,
        "payload": result.banner.model_dump(mode="json"),
        "fallback": result.banner.fallback,
        "shopper_version": inputs.shopper_version,
        "template": result.banner.template,
        "template_version": inputs.template_version,
        "template_label": inputs.template_label,
        "model": inputs.model,
        "facts": {pid: list(fact) for pid, fact in inputs.facts.items()},
        "anchor": inputs.anchor,
        "stale_reason": result.stale_reason,
        "job_id": job_id,
        "generated_at": now,
        # A new banner is reviewed afresh: an approval was for the copy it replaces.
        "review": review,
        "review_reason": None,
        "reviewed_by": None,
        "reviewed_at": None,
        "model_copy": None,  # a marketer's edit was of the copy it replaces
    }


def _stored(record: PlacementBannerRecord | Row[Any]) -> StoredBanner:
    """A stored banner from its ORM record or a row of its table (the same attributes)."""
    return StoredBanner(
        placement=record.placement,
        subject=Subject(audience=Audience(record.audience), key=record.subject),
        payload=record.payload,
        inputs=BannerInputs(
            shopper_version=record.shopper_version,
            template_version=record.template_version,
            template_label=record.template_label,
            model=record.model,
            facts={pid: (float(f[0]), bool(f[1])) for pid, f in record.facts.items()},
            anchor=record.anchor,
            # Read from the banner itself: the campaigns its copy names, and their ends.
            campaigns={
                named.id: aware(named.ends_at)
                for named in map(NamedCampaign.model_validate, record.payload.get("campaigns", []))
            },
        ),
        stale_reason=record.stale_reason,
        job_id=record.job_id,
        generated_at=aware(record.generated_at),
        review=record.review,
        review_reason=record.review_reason,
        model_copy=record.model_copy,
    )


_TABLE = PlacementBannerRecord.__table__
_BY_SUBJECTS = select(_TABLE).where(
    _TABLE.c.placement == bindparam("placement"),
    _TABLE.c.subject.in_(bindparam("subjects", expanding=True)),
)


class PlacementBannerStore:
    """The stored banners the read path serves and the planner checks for staleness."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, placement: str, subject: Subject) -> StoredBanner | None:
        async with self.db.sessions() as session:
            record = await session.get(
                PlacementBannerRecord, (placement, subject.audience.value, subject.key)
            )
        return None if record is None else _stored(record)

    async def many(
        self, placement: str, subjects: Sequence[Subject]
    ) -> dict[Subject, StoredBanner]:
        """The stored banners of ``subjects`` (absent ones left out), in one query."""
        wanted = {(s.audience.value, s.key) for s in subjects}
        if not wanted:
            return {}
        # The read path's query, on every page view: a prepared statement on a plain
        # connection (no ORM session, no statement built per call); the few rows of the same
        # subject keys under other audiences are dropped here.
        async with self.db.engine.connect() as connection:
            rows = await connection.execute(
                _BY_SUBJECTS,
                {"placement": placement, "subjects": sorted({key for _, key in wanted})},
            )
            stored = [_stored(row) for row in rows if (row.audience, row.subject) in wanted]
        return {s.subject: s for s in stored}

    async def save(
        self, placement: str, results: Sequence[Generated], review: str = "none"
    ) -> None:
        """Store banners made outside a job (a live generation kept for the next read)."""
        if not results:
            return
        rows = [_row(placement, result, None, _now(), review) for result in results]
        async with self.db.writing() as session:
            await _upsert(session, rows)

    async def mark_stale(
        self, placement: str, subject: Subject, reason: str, banner_id: str
    ) -> None:
        """Mark one stored banner stale, unless it was replaced meanwhile (``banner_id``)."""
        async with self.db.writing() as session:
            await session.execute(
                update(PlacementBannerRecord)
                .where(
                    PlacementBannerRecord.placement == placement,
                    PlacementBannerRecord.audience == subject.audience.value,
                    PlacementBannerRecord.subject == subject.key,
                    PlacementBannerRecord.banner_id == banner_id,
                )
                .values(stale_reason=reason[:300])
            )


class PlacementSettingsStore:
    """Per-placement settings: whether its pre-generated banners wait for approval."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def review_required(self, placement: str) -> bool:
        async with self.db.sessions() as session:
            record = await session.get(PlacementSettingsRecord, placement)
        return record is not None and record.review_required

    async def new_banner_review(self, placement: str) -> str:
        """The review state a banner newly stored for ``placement`` starts in."""
        return "pending" if await self.review_required(placement) else "none"

    async def require_review(self, placement: str, required: bool, actor: str) -> None:
        async with self.db.writing(f"placement:{placement}") as session:
            record = await session.get(PlacementSettingsRecord, placement)
            if record is None:
                record = PlacementSettingsRecord(placement=placement)
                session.add(record)
            record.review_required = required
            record.updated_by = actor
            record.updated_at = _now()


# --- human review of pre-generated banners ---------------------------------------------------

ReviewState = Literal["none", "pending", "approved", "rejected"]
Decision = Literal["approved", "rejected"]
REJECTED_PREFIX = "rejected: "  # a rejected banner's stale_reason: the next stale-only job
MAX_QUEUE_PAGE = 500


@dataclass(frozen=True)
class ReviewedBanner(StoredBanner):
    """A stored banner with who decided on it and when (None: nobody yet)."""

    reviewed_by: str | None = None
    reviewed_at: datetime | None = None


@dataclass(frozen=True)
class ReviewDecision:
    """One marketer's decision on the banner ``banner_id`` of (placement, subject): applied only
    while that row still holds that banner (a regenerated one is reviewed afresh).
    ``generated_at``: when the banner the marketer saw was made. Banner ids are derived from
    what a banner is made of (shopper, template version, products, model), not from its copy,
    so a regeneration can keep the id (an engine outage's fallback copy made again by the
    model); with ``generated_at`` such a banner is not decided on by a stale click either."""

    placement: str
    subject: Subject
    banner_id: str
    decision: Decision
    reason: str | None = None
    generated_at: datetime | None = None
    # Edit and approve: the banner as the marketer edited it (its copy, a new id), and the
    # model's copy it replaces. Only with ``approved``.
    edited: Banner | None = None
    model_copy: dict[str, str] | None = None


@dataclass(frozen=True)
class ReviewSetting:
    placement: str
    required: bool
    updated_by: str | None
    updated_at: datetime | None


def _reviewed(record: PlacementBannerRecord) -> ReviewedBanner:
    stored = _stored(record)
    return ReviewedBanner(
        **{name: getattr(stored, name) for name in StoredBanner.__dataclass_fields__},
        reviewed_by=record.reviewed_by,
        reviewed_at=aware(record.reviewed_at) if record.reviewed_at else None,
    )


class ReviewStore:
    """The review queue and the decisions on it. A decision names the banner it was made on:
    a stale click (the row regenerated since) changes nothing. Every decision is written to
    the audit log (``review.approve`` / ``review.reject``, under the banner's template) in the
    same transaction. A rejection sets ``stale_reason`` to ``rejected: <reason>``, so the next
    ``--stale-only`` job makes the banner again; an approval clears such a mark."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def queue(
        self,
        placement: str | None = None,
        review: ReviewState | None = "pending",
        template: str | None = None,
        audience: Audience | None = None,
        subject: str | None = None,
        fallback: bool | None = None,
        stale: bool | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[ReviewedBanner], int]:
        """Stored banners matching every filter given (None: any), oldest first, and how many
        match in all. ``review`` None: every state."""
        table = PlacementBannerRecord
        where: list[Any] = []
        if placement is not None:
            where.append(table.placement == placement)
        if review is not None:
            where.append(table.review == review)
        if template is not None:
            where.append(table.template == template)
        if audience is not None:
            where.append(table.audience == audience.value)
        if subject is not None:
            where.append(table.subject == subject)
        if fallback is not None:
            where.append(table.fallback == fallback)
        if stale is not None:
            where.append(table.stale_reason.is_not(None) if stale else table.stale_reason.is_(None))
        order = (table.generated_at, table.placement, table.audience, table.subject)
        limit = max(0, min(limit, MAX_QUEUE_PAGE))
        async with self.db.sessions() as session:
            total = await session.scalar(select(func.count()).select_from(table).where(*where))
            records = await session.scalars(
                select(table).where(*where).order_by(*order).limit(limit).offset(max(offset, 0))
            )
            return [_reviewed(r) for r in records], int(total or 0)

    async def get(self, placement: str, subject: Subject) -> ReviewedBanner | None:
        """The banner stored for (placement, subject), with its review, or None."""
        async with self.db.sessions() as session:
            record = await session.get(
                PlacementBannerRecord, (placement, subject.audience.value, subject.key)
            )
            return _reviewed(record) if record is not None else None

    async def pending_counts(self) -> dict[str, int]:
        """{placement: banners waiting for a decision}."""
        table = PlacementBannerRecord
        async with self.db.sessions() as session:
            rows = await session.execute(
                select(table.placement, func.count())
                .where(table.review == "pending")
                .group_by(table.placement)
            )
            return {placement: int(count) for placement, count in rows.tuples()}

    async def segments(self) -> list[str]:
        """The segments that have a stored banner in some placement."""
        table = PlacementBannerRecord
        async with self.db.sessions() as session:
            rows = await session.scalars(
                select(table.subject).where(table.audience == Audience.SEGMENT.value).distinct()
            )
            return sorted(rows.all())

    async def decide_many(
        self, decisions: Sequence[ReviewDecision], actor: str
    ) -> list[ReviewedBanner | None]:
        """Apply ``decisions`` in order, in one transaction; for each, the banner as decided,
        or None where the row is gone or holds another banner now (nothing changed there)."""
        if not decisions:
            return []
        now = _now()
        table = PlacementBannerRecord
        outcome: list[ReviewedBanner | None] = []
        locks = sorted({f"review:{d.placement}" for d in decisions})
        async with self.db.writing(*locks) as session:
            for decision in decisions:
                reason = (decision.reason or "").strip()[:300] or None
                if decision.decision == "rejected":
                    stale: Any = (REJECTED_PREFIX + (reason or "no reason given"))[:300]
                else:  # an approval lifts an earlier rejection's mark, and only that
                    stale = case(
                        (table.stale_reason.like(REJECTED_PREFIX.rstrip() + "%"), null()),
                        else_=table.stale_reason,
                    )
                # One conditional statement: a job replacing the row meanwhile either comes
                # first (no match: stale) or after (its new banner is pending again).
                same = [
                    table.placement == decision.placement,
                    table.audience == decision.subject.audience.value,
                    table.subject == decision.subject.key,
                    table.banner_id == decision.banner_id,
                ]
                if decision.generated_at is not None:
                    same.append(table.generated_at == decision.generated_at.astimezone(UTC))
                edit: dict[str, Any] = {}
                if decision.edited is not None:
                    edit = {
                        "payload": decision.edited.model_dump(mode="json"),
                        "banner_id": decision.edited.id,
                        "model_copy": decision.model_copy,
                    }
                statement = (
                    update(table)
                    .where(*same)
                    .values(
                        review=decision.decision,
                        review_reason=reason,
                        reviewed_by=actor[:80],
                        reviewed_at=now,
                        stale_reason=stale,
                        **edit,
                    )
                    .returning(table)
                    .execution_options(synchronize_session=False, populate_existing=True)
                )
                record = (await session.scalars(statement)).one_or_none()
                if record is None:
                    outcome.append(None)
                    continue
                session.add(
                    AuditRecord(
                        at=now,
                        actor=actor[:80],
                        action="review.approve"
                        if decision.decision == "approved"
                        else "review.reject",
                        template=record.template,
                        detail={
                            "placement": decision.placement,
                            "audience": decision.subject.audience.value,
                            "subject": decision.subject.key,
                            "banner_id": decision.banner_id,
                            "template_version": record.template_version,
                            "reason": reason,
                            # Who wrote what is served: the model's copy and the edit.
                            **(
                                {
                                    "edited_to": record.banner_id,
                                    "model_copy": decision.model_copy,
                                    "edit": {
                                        k: record.payload[k] for k in decision.model_copy or {}
                                    },
                                }
                                if decision.edited is not None
                                else {}
                            ),
                        },
                    )
                )
                outcome.append(_reviewed(record))
        return outcome

    async def decide(
        self,
        placement: str,
        subject: Subject,
        banner_id: str,
        decision: Decision,
        reason: str | None,
        actor: str,
    ) -> ReviewedBanner | None:
        """One decision (see ``decide_many``); None: stale, nothing changed."""
        found = await self.decide_many(
            [ReviewDecision(placement, subject, banner_id, decision, reason)], actor
        )
        return found[0]

    async def approve_many(self, banners: Sequence[tuple[str, Subject, str]], actor: str) -> int:
        """Approve (placement, subject, banner_id) each; how many were still those banners."""
        decided = await self.decide_many(
            [ReviewDecision(p, s, b, "approved") for p, s, b in banners], actor
        )
        return sum(d is not None for d in decided)

    async def setting(self, placement: str) -> ReviewSetting:
        async with self.db.sessions() as session:
            record = await session.get(PlacementSettingsRecord, placement)
        if record is None:
            return ReviewSetting(placement, False, None, None)
        return ReviewSetting(
            placement, record.review_required, record.updated_by, aware(record.updated_at)
        )

    async def settings(self) -> dict[str, bool]:
        """{placement: review required} for every placement with a setting stored."""
        async with self.db.sessions() as session:
            records = await session.scalars(select(PlacementSettingsRecord))
            return {r.placement: r.review_required for r in records}

    async def require(
        self, placement: str, required: bool, actor: str, template: str = ""
    ) -> ReviewSetting:
        """Switch review on or off for a placement (its next job's banners follow), audited
        under ``template`` (the placement's default template)."""
        now = _now()
        async with self.db.writing(f"placement:{placement}") as session:
            record = await session.get(PlacementSettingsRecord, placement)
            before = record is not None and record.review_required
            if record is None:
                record = PlacementSettingsRecord(placement=placement)
                session.add(record)
            record.review_required = required
            record.updated_by = actor[:80]
            record.updated_at = now
            session.add(
                AuditRecord(
                    at=now,
                    actor=actor[:80],
                    action="review.require" if required else "review.not_required",
                    template=template,
                    detail={"placement": placement, "from": before, "to": required},
                )
            )
        return ReviewSetting(placement, required, actor[:80], now)
