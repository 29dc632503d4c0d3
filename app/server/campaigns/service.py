"""The only code of the campaigns slice that touches the store and the pipeline: a save is
checked against the catalog, stored with its audit entry, and served from at once."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import ValidationError

from app.campaigns import Campaign
from app.pipeline import Pipeline
from app.server.campaigns.schemas import CampaignIn, CampaignList, CampaignOut, Status
from app.server.errors import Problem, field_name, invalid
from app.store.campaigns import CampaignStore


def status_of(campaign: Campaign, now: datetime) -> Status:
    if now < campaign.starts_at:
        return "planned"
    return "running" if now < campaign.ends_at else "ended"


class CampaignService:
    def __init__(self, store: CampaignStore, pipeline: Pipeline) -> None:
        self.store = store
        self.pipeline = pipeline
        self._stamp: tuple[int, datetime | None] | None = None

    async def reload(self) -> None:
        self._stamp = await self.store.stamp()
        self.pipeline.use_campaigns(await self.store.book())

    async def reload_if_changed(self) -> bool:
        """Pick up campaigns saved through another replica (they share the database)."""
        if await self.store.stamp() == self._stamp:
            return False
        await self.reload()
        return True

    def _checked(self, campaign_id: str, data: CampaignIn) -> Campaign:
        """The campaign, if every product and category it names is in the catalog."""
        catalog = self.pipeline.catalog
        for position, product_id in enumerate(data.products):
            if catalog.get(product_id) is None:
                raise invalid(f"products[{position}]", f"no product '{product_id}'")
        known = {p.category.casefold() for p in catalog.products}
        for position, category in enumerate(data.categories):
            if category.casefold() not in known:
                raise invalid(f"categories[{position}]", f"no category '{category}'")
        try:
            return Campaign(id=campaign_id, **data.model_dump())
        except ValidationError as error:  # the rules across fields (ends after it starts...)
            first = error.errors()[0]
            message = first["msg"].removeprefix("Value error, ")
            raise invalid(field_name(first["loc"]), message) from None

    async def put(self, campaign_id: str, data: CampaignIn, actor: str) -> CampaignOut:
        campaign = self._checked(campaign_id, data)
        created = await self.store.put(campaign, actor)
        await self.reload()
        return CampaignOut(
            campaign=campaign, status=status_of(campaign, datetime.now(UTC)), updated=not created
        )

    async def get(self, campaign_id: str) -> CampaignOut:
        campaign = await self.store.get(campaign_id)
        if campaign is None:
            raise Problem("not-found", f"no campaign '{campaign_id}'")
        return CampaignOut(campaign=campaign, status=status_of(campaign, datetime.now(UTC)))

    async def list(self) -> CampaignList:
        now = datetime.now(UTC)
        book = await self.store.book()
        ordered = sorted(book.campaigns, key=lambda c: (c.ends_at < now, c.starts_at, c.id))
        return CampaignList(
            campaigns=[CampaignOut(campaign=c, status=status_of(c, now)) for c in ordered],
            now=now,
        )

    async def delete(self, campaign_id: str, actor: str) -> None:
        if not await self.store.delete(campaign_id, actor):
            raise Problem("not-found", f"no campaign '{campaign_id}'")
        await self.reload()
