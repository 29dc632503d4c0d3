"""Impressions, clicks and conversions on served banners, counted per template version."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.domain import Banner, FeedbackKind
from app.store.db import Database, FeedbackRecord


@dataclass(frozen=True)
class ArmCounts:
    """What one template version under one label collected on a placement."""

    template: str
    version: int
    label: str
    impressions: int
    clicks: int
    conversions: int


class FeedbackStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, event_id: str, banner: Banner, kind: FeedbackKind) -> bool:
        """Store one event; False when this event id was recorded before (nothing changes)."""
        try:
            async with self.db.writing() as session:
                if await session.get(FeedbackRecord, event_id) is not None:
                    return False
                session.add(
                    FeedbackRecord(
                        event_id=event_id,
                        banner_id=banner.id,
                        kind=kind.value,
                        placement=banner.placement,
                        template=banner.template,
                        template_version=banner.template_version,
                        template_label=banner.template_label,
                        shopper_id=banner.shopper_id,
                        at=datetime.now(UTC),
                    )
                )
        except IntegrityError:  # the same event id, sent twice at once
            return False
        return True

    async def counts(self, placement: str) -> list[ArmCounts]:
        query = (
            select(
                FeedbackRecord.template,
                FeedbackRecord.template_version,
                FeedbackRecord.template_label,
                FeedbackRecord.kind,
                func.count(),
            )
            .where(FeedbackRecord.placement == placement)
            .group_by(
                FeedbackRecord.template,
                FeedbackRecord.template_version,
                FeedbackRecord.template_label,
                FeedbackRecord.kind,
            )
        )
        arms: dict[tuple[str, int, str], dict[str, int]] = {}
        async with self.db.sessions() as session:
            for template, version, label, kind, count in (await session.execute(query)).all():
                arms.setdefault((template, version, label), {})[kind] = count
        return [
            ArmCounts(
                template=template,
                version=version,
                label=label,
                impressions=kinds.get(FeedbackKind.IMPRESSION, 0),
                clicks=kinds.get(FeedbackKind.CLICK, 0),
                conversions=kinds.get(FeedbackKind.CONVERSION, 0),
            )
            for (template, version, label), kinds in sorted(arms.items())
        ]
