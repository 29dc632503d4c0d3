"""Versioned prompt templates: immutable versions, movable labels, splits, an audit log.

A save never overwrites: it adds version N+1. Labels (``production``, ``staging``, experiment
arms) are pointers moved in one row update. Both use optimistic concurrency: the writer says
which version it started from, and a stale writer gets ``Conflict`` instead of losing someone
else's edit. The (name, version) unique key makes the check hold across processes too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.prompting.templates import (
    BRAND,
    BRAND_FILE,
    PRODUCTION,
    TEMPLATE_SUFFIX,
    PromptTemplate,
    Split,
    TemplateRegistry,
    brand_text,
    parse_brand,
    parse_template,
    seeded_brand_text,
)
from app.store.db import (
    AuditRecord,
    Database,
    ExperimentRecord,
    TemplateLabelRecord,
    TemplateVersionRecord,
    aware,
)


class Conflict(Exception):
    """The caller's expected version is not the current one."""

    def __init__(self, message: str, current: int | None) -> None:
        super().__init__(message)
        self.current = current


@dataclass(frozen=True)
class VersionInfo:
    """What is known about a version without its text."""

    name: str
    version: int
    content_hash: str
    author: str
    message: str
    draft: bool
    created_at: datetime


@dataclass(frozen=True)
class StoredVersion(VersionInfo):
    source: str

    def info(self) -> VersionInfo:
        return VersionInfo(
            **{f.name: getattr(self, f.name) for f in fields(VersionInfo)}  # all but the text
        )

    @classmethod
    def of(cls, record: TemplateVersionRecord) -> StoredVersion:
        return cls(
            name=record.name,
            version=record.version,
            source=record.source,
            content_hash=record.content_hash,
            author=record.author,
            message=record.message,
            draft=record.draft,
            created_at=aware(record.created_at),
        )

    def parsed(self) -> PromptTemplate:
        return parse_template(self.source, f"{self.name}@{self.version}", self.version, stored=True)


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    template: str
    detail: dict[str, Any]


def content_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


class TemplateStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- reading ------------------------------------------------------------------------------

    async def names(self) -> list[str]:
        async with self.db.sessions() as session:
            rows = await session.scalars(select(TemplateVersionRecord.name).distinct())
            return sorted(rows.all())

    async def latest_versions(self) -> dict[str, int]:
        """{template: its newest version}, in one query."""
        query = select(TemplateVersionRecord.name, func.max(TemplateVersionRecord.version))
        async with self.db.sessions() as session:
            rows = await session.execute(query.group_by(TemplateVersionRecord.name))
            return {name: version for name, version in sorted(rows.tuples().all())}

    async def latest(self, name: str) -> int | None:
        async with self.db.sessions() as session:
            return await session.scalar(
                select(func.max(TemplateVersionRecord.version)).where(
                    TemplateVersionRecord.name == name
                )
            )

    async def versions(self, name: str) -> list[StoredVersion]:
        """Every version of a template, newest first."""
        async with self.db.sessions() as session:
            records = await session.scalars(
                select(TemplateVersionRecord)
                .where(TemplateVersionRecord.name == name)
                .order_by(TemplateVersionRecord.version.desc())
            )
            return [StoredVersion.of(r) for r in records]

    async def get(self, name: str, version: int) -> StoredVersion | None:
        async with self.db.sessions() as session:
            record = await session.scalar(
                select(TemplateVersionRecord).where(
                    TemplateVersionRecord.name == name, TemplateVersionRecord.version == version
                )
            )
        return None if record is None else StoredVersion.of(record)

    async def labels(self, name: str | None = None) -> dict[str, dict[str, int]]:
        """{template: {label: version}}."""
        query = select(TemplateLabelRecord)
        if name is not None:
            query = query.where(TemplateLabelRecord.name == name)
        found: dict[str, dict[str, int]] = {}
        async with self.db.sessions() as session:
            for record in await session.scalars(query):
                found.setdefault(record.name, {})[record.label] = record.version
        return found

    async def splits(self) -> dict[str, Split]:
        async with self.db.sessions() as session:
            records = (await session.scalars(select(ExperimentRecord))).all()
        return {r.placement: _split(r) for r in records}

    async def revision(self) -> int:
        """The newest audit entry's id: it changes with every save, label move and split."""
        async with self.db.sessions() as session:
            return (await session.scalar(select(func.max(AuditRecord.id)))) or 0

    async def audit(self, name: str | None = None, limit: int = 100) -> list[AuditEntry]:
        query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
        if name is not None:
            query = query.where(AuditRecord.template == name)
        async with self.db.sessions() as session:
            records = await session.scalars(query)
            return [
                AuditEntry(aware(r.at), r.actor, r.action, r.template, r.detail) for r in records
            ]

    async def registry(self, brand: dict[str, Any]) -> TemplateRegistry:
        """What the pipeline serves: every labelled version, parsed, the splits, and the
        brand rules' production version (``brand`` until one is stored)."""
        # Every label with the version it points at, in one query (an outer join: a label
        # pointing at no stored version is an error to report, not one to skip silently).
        query = (
            select(TemplateLabelRecord, TemplateVersionRecord)
            .outerjoin(
                TemplateVersionRecord,
                (TemplateVersionRecord.name == TemplateLabelRecord.name)
                & (TemplateVersionRecord.version == TemplateLabelRecord.version),
            )
            .order_by(TemplateLabelRecord.name, TemplateLabelRecord.label)
        )
        async with self.db.sessions() as session:
            rows = (await session.execute(query)).tuples().all()
        production: list[PromptTemplate] = []
        labelled: dict[str, dict[str, PromptTemplate]] = {}
        brand_version: int | None = None
        for label, record in rows:
            if record is None:
                raise LookupError(
                    f"label {label.name}:{label.label} points at missing version {label.version}"
                )
            if label.name == BRAND:  # the brand rules: production serves, other labels mark
                if label.label == PRODUCTION:
                    brand, brand_version = parse_brand(record.source), record.version
                continue
            template = StoredVersion.of(record).parsed()
            if label.label == PRODUCTION:
                production.append(template)
            else:
                labelled.setdefault(label.name, {})[label.label] = template
        return TemplateRegistry(
            production,
            brand,
            labelled=labelled,
            splits=await self.splits(),
            brand_version=brand_version,
        )

    # --- writing ------------------------------------------------------------------------------

    async def save(
        self,
        name: str,
        source: str,
        *,
        author: str,
        message: str,
        draft: bool,
        expected_latest: int | None,
        label: str | None = None,
    ) -> StoredVersion:
        """Add a version. ``expected_latest``: the newest version the author started from
        (None for a new template). Raises Conflict when someone saved in between.
        ``label``: also point this label at the new version, in the same transaction."""
        now = datetime.now(UTC)
        try:
            async with self.db.writing(f"template:{name}") as session:
                latest = await session.scalar(
                    select(func.max(TemplateVersionRecord.version)).where(
                        TemplateVersionRecord.name == name
                    )
                )
                if latest != expected_latest:
                    raise Conflict(
                        f"template '{name}' is at version {latest}: "
                        + (
                            "send the version your edit started from (If-Match)"
                            if expected_latest is None
                            else f"your edit started from {expected_latest}; reload it and "
                            "apply your change again"
                        ),
                        latest,
                    )
                record = TemplateVersionRecord(
                    name=name,
                    version=(latest or 0) + 1,
                    source=source,
                    content_hash=content_hash(source),
                    author=author,
                    message=message,
                    draft=draft,
                    created_at=now,
                )
                session.add(record)
                session.add(
                    AuditRecord(
                        at=now,
                        actor=author,
                        action="save_draft" if draft else "save",
                        template=name,
                        detail={"version": record.version, "message": message},
                    )
                )
                if label is not None:
                    await _point_label(session, name, label, record.version, author, now)
        except IntegrityError:  # another process took the same version number first
            raise Conflict(
                f"template '{name}' changed while saving", await self.latest(name)
            ) from None
        return StoredVersion.of(record)

    async def move_label(
        self,
        name: str,
        label: str,
        version: int,
        *,
        actor: str,
        expected_current: int | None = None,
        check_expected: bool = False,
    ) -> int | None:
        """Point ``label`` at ``version``; returns the version it pointed at before.

        With ``check_expected``, the move happens only if the label still points at
        ``expected_current`` (None: the label does not exist yet).
        """
        now = datetime.now(UTC)
        async with self.db.writing(f"template:{name}") as session:
            target = await session.scalar(
                select(TemplateVersionRecord).where(
                    TemplateVersionRecord.name == name, TemplateVersionRecord.version == version
                )
            )
            if target is None:
                raise LookupError(f"template '{name}' has no version {version}")
            if target.draft:
                raise ValueError(f"version {version} is a draft: save it without draft to label it")
            current = await session.get(TemplateLabelRecord, (name, label))
            previous = current.version if current is not None else None
            if check_expected and previous != expected_current:
                raise Conflict(
                    f"label '{label}' points at version {previous}, not {expected_current}",
                    previous,
                )
            await _point_label(session, name, label, version, actor, now)
        return previous

    async def set_split(self, placement: str, split: Split | None, *, actor: str) -> None:
        """Start, change or (``None``) stop a placement's experiment."""
        now = datetime.now(UTC)
        async with self.db.writing(f"experiment:{placement}") as session:
            await session.execute(
                delete(ExperimentRecord).where(ExperimentRecord.placement == placement)
            )
            if split is not None:
                session.add(
                    ExperimentRecord(
                        placement=placement,
                        template=split.template,
                        control=split.control,
                        variant=split.variant,
                        variant_weight=split.variant_weight,
                        strategy=split.strategy,
                        min_share=split.min_share,
                        period_s=split.period_s,
                        updated_by=actor,
                        updated_at=now,
                    )
                )
            session.add(
                AuditRecord(
                    at=now,
                    actor=actor,
                    action="split" if split else "stop_split",
                    template=split.template if split else "",
                    detail={"placement": placement, **(_split_detail(split) if split else {})},
                )
            )

    async def move_bandit(self, placement: str, split: Split, weight: float) -> bool:
        """Set a thompson split's weight for its next period, unless another replica did since
        ``split`` was read (then False: nothing is written twice)."""
        now = datetime.now(UTC)
        async with self.db.writing(f"experiment:{placement}") as session:
            moved = await session.execute(
                update(ExperimentRecord)
                .where(
                    ExperimentRecord.placement == placement,
                    ExperimentRecord.strategy == "thompson",
                    ExperimentRecord.updated_at <= (split.since or now),
                )
                .values(variant_weight=weight, updated_by="bandit", updated_at=now)
            )
            if getattr(moved, "rowcount", 0) != 1:
                return False
            session.add(
                AuditRecord(
                    at=now,
                    actor="bandit",
                    action="bandit",
                    template=split.template,
                    detail={"placement": placement, "variant_weight": weight},
                )
            )
        return True

    async def seed(
        self,
        folder: Path,
        banned_terms: list[str] | None = None,
        banned_by_language: dict[str, list[str]] | None = None,
    ) -> list[str]:
        """Templates in ``folder`` that the database does not have yet become version 1,
        labelled production; so do the brand rules (``brand.yaml``, with ``banned_terms``
        and ``banned_by_language`` written in where the file has none; None: left out, so
        the service's settings apply). Returns the names seeded."""
        known = set(await self.names())
        sources: list[tuple[str, str, str]] = []  # (name, text, file)
        if BRAND not in known:
            text = seeded_brand_text(brand_text(folder), banned_terms, banned_by_language)
            sources.append((BRAND, text, BRAND_FILE))
        for path in sorted(folder.glob(f"*{TEMPLATE_SUFFIX}")):
            source = path.read_text(encoding="utf-8")
            name = parse_template(source, str(path)).name
            if name not in known:
                sources.append((name, source, path.name))
        seeded = []
        for name, source, file_name in sources:
            try:
                # Version 1 and its production label in one transaction: a replica starting
                # beside this one never sees the template without a production version.
                await self.save(
                    name,
                    source,
                    author="seed",
                    message=f"seeded from {file_name}",
                    draft=False,
                    expected_latest=None,
                    label=PRODUCTION,
                )
            except Conflict:  # another replica seeded it first
                continue
            seeded.append(name)
        return seeded


async def _point_label(
    session: AsyncSession, name: str, label: str, version: int, actor: str, now: datetime
) -> None:
    """Point ``label`` at ``version`` and audit the move (inside the caller's transaction,
    which holds the template's write lock)."""
    record = await session.get(TemplateLabelRecord, (name, label))
    previous = record.version if record is not None else None
    if record is None:
        session.add(
            TemplateLabelRecord(
                name=name, label=label, version=version, updated_by=actor, updated_at=now
            )
        )
    else:
        record.version = version
        record.updated_by = actor
        record.updated_at = now
    session.add(
        AuditRecord(
            at=now,
            actor=actor,
            action="move_label",
            template=name,
            detail={"label": label, "from": previous, "to": version},
        )
    )


def _split(record: ExperimentRecord) -> Split:
    return Split(
        record.template,
        record.control,
        record.variant,
        record.variant_weight,
        "thompson" if record.strategy == "thompson" else "split",
        record.min_share,
        record.period_s,
        aware(record.updated_at),
    )


def _split_detail(split: Split) -> dict[str, Any]:
    return {
        "template": split.template,
        "control": split.control,
        "variant": split.variant,
        "variant_weight": split.variant_weight,
        "strategy": split.strategy,
        "min_share": split.min_share,
        "period_s": split.period_s,
    }
