"""The campaigns table: saves (audited), deletes, and the book the pipeline serves from."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, func, select

from app.campaigns import Campaign, CampaignBook
from app.store.db import AuditRecord, CampaignRecord, Database


class CampaignStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def book(self) -> CampaignBook:
        """Every stored campaign, as the pipeline serves them."""
        async with self.db.sessions() as session:
            payloads = (await session.scalars(select(CampaignRecord.payload))).all()
        return CampaignBook.of(Campaign.model_validate(payload) for payload in payloads)

    async def get(self, campaign_id: str) -> Campaign | None:
        async with self.db.sessions() as session:
            record = await session.get(CampaignRecord, campaign_id)
        return None if record is None else Campaign.model_validate(record.payload)

    async def stamp(self) -> tuple[int, datetime | None]:
        """(how many, the latest change): a replica that sees another reloads its book."""
        async with self.db.sessions() as session:
            row = (
                await session.execute(
                    select(func.count(CampaignRecord.id), func.max(CampaignRecord.updated_at))
                )
            ).one()
        return int(row[0]), row[1]

    async def put(self, campaign: Campaign, actor: str) -> bool:
        """Save ``campaign`` (True: it is new), with an audit entry, in one transaction."""
        now = datetime.now(UTC)
        async with self.db.writing(f"campaign:{campaign.id}") as session:
            record = await session.get(CampaignRecord, campaign.id)
            created = record is None
            if record is None:
                record = CampaignRecord(id=campaign.id)
                session.add(record)
            record.payload = campaign.model_dump(mode="json")
            record.ends_at = campaign.ends_at
            record.updated_by = actor
            record.updated_at = now
            session.add(
                AuditRecord(
                    at=now,
                    actor=actor,
                    action="campaign",
                    template="",
                    detail={"campaign": campaign.id, "created": created, **record.payload},
                )
            )
        return created

    async def delete(self, campaign_id: str, actor: str) -> bool:
        """False when there was no such campaign (nothing is written)."""
        now = datetime.now(UTC)
        async with self.db.writing(f"campaign:{campaign_id}") as session:
            gone = await session.execute(
                delete(CampaignRecord).where(CampaignRecord.id == campaign_id)
            )
            if not getattr(gone, "rowcount", 0):
                return False
            session.add(
                AuditRecord(
                    at=now,
                    actor=actor,
                    action="delete_campaign",
                    template="",
                    detail={"campaign": campaign_id},
                )
            )
        return True
