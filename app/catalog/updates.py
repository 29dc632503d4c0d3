"""Writes to the live catalog and shoppers: stored first, then switched into the pipeline.

Every write goes to the database before the in-memory state changes, so a failing write
changes nothing and a restart rebuilds what was acknowledged. Catalog writes are serialised
(one lock): two concurrent upserts cannot each start from the same catalog and lose the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.catalog.store import Catalog
from app.domain import Interaction, Product, Shopper
from app.pipeline import Pipeline
from app.retrieval.index import reindex, save_index
from app.retrieval.signals import InteractionSignals
from app.store.repositories import CatalogChanges

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpsertResult:
    created: list[str]
    updated: list[str]
    unchanged: int
    embedded: int  # products whose text changed, the only ones embedded again
    catalog_size: int


@dataclass(frozen=True)
class ShopperEvent:
    shopper_id: str
    event: Interaction


class CatalogUpdater:
    def __init__(
        self,
        pipeline: Pipeline,
        changes: CatalogChanges,
        *,
        index_dir: Path | None,
        signals_refresh_delay_s: float,
    ) -> None:
        self.pipeline = pipeline
        self.changes = changes
        self.index_dir = index_dir
        self.signals_refresh_delay_s = signals_refresh_delay_s
        self._lock = asyncio.Lock()
        self._refresh: asyncio.Task[None] | None = None

    async def upsert_products(self, products: Sequence[Product]) -> UpsertResult:
        """Create or replace products; only those whose text changed are embedded again."""
        async with self._lock:
            before = self.pipeline.catalog
            catalog, changed = before.upserted(products)
            created = [p.id for p in changed if p.id not in before]
            updated = [p.id for p in changed if p.id in before]
            if not changed:
                return UpsertResult([], [], len(products), 0, len(before))
            # Embedding is the slow part (~150 products/s here): off the event loop.
            index, embedded = await asyncio.to_thread(
                reindex, before, self.pipeline.index, catalog, self.pipeline.embedder
            )
            signals = await self._signals(catalog)
            await self.changes.upsert_products(changed)  # stored first: a failure changes nothing
            self.pipeline.use_catalog(catalog, index, signals)
            if self.index_dir is not None:
                try:
                    await asyncio.to_thread(
                        save_index, catalog, index, self.pipeline.embedder, self.index_dir
                    )
                except OSError:  # the next start rebuilds it; the update itself stands
                    log.exception("could not save the index to %s", self.index_dir)
            log.info(
                "catalog: %d created, %d updated, %d embedded", len(created), len(updated), embedded
            )
            return UpsertResult(
                created, updated, len(products) - len(changed), embedded, len(catalog)
            )

    async def withdraw_product(self, product_id: str) -> None:
        """Take a product off sale (LookupError if no such product is on sale). Nothing is
        embedded: the product keeps its row, its vector and the interactions with it."""
        async with self._lock:
            catalog = self.pipeline.catalog
            product = catalog.get(product_id)
            if product is None or not catalog.on_sale(product_id):
                raise LookupError(product_id)
            await self.changes.withdraw_products([product])  # stored first
            self.pipeline.use_catalog(
                catalog.withdrawing([product_id]),
                self.pipeline.index,
                self.pipeline.selector.signals,
            )
            log.info("catalog: %s withdrawn from sale", product_id)

    async def put_profile(self, profile: Shopper) -> Shopper:
        """Create or replace a shopper's profile; the history already recorded is kept."""
        await self.changes.put_profile(profile)
        shopper = self.pipeline.shoppers.put_profile(profile)
        self._schedule_refresh()  # the segment feeds segment popularity
        return shopper

    async def record_events(self, events: Sequence[ShopperEvent]) -> dict[str, int]:
        """Append events to shoppers' histories. Returns each shopper's history length.

        The shopper's vector is computed from the history, so the next request already sees
        them; popularity and co-occurrence are recomputed shortly after (bursts coalesce).
        """
        await self.changes.add_events([(e.shopper_id, e.event) for e in events])
        grouped: dict[str, list[Interaction]] = defaultdict(list)
        for item in events:
            grouped[item.shopper_id].append(item.event)
        lengths = {
            shopper_id: len(self.pipeline.shoppers.add_events(shopper_id, group).history)
            for shopper_id, group in grouped.items()
        }
        self._schedule_refresh()
        return lengths

    def _schedule_refresh(self) -> None:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._refresh_signals())

    async def _refresh_signals(self) -> None:
        await asyncio.sleep(self.signals_refresh_delay_s)
        async with self._lock:
            catalog = self.pipeline.catalog
            signals = await self._signals(catalog)
            self.pipeline.use_catalog(catalog, self.pipeline.index, signals)

    async def _signals(self, catalog: Catalog) -> InteractionSignals:
        """Popularity and co-occurrence from the shoppers' current histories, off the loop."""
        return await asyncio.to_thread(InteractionSignals, catalog, self.pipeline.shoppers)

    async def settled(self) -> None:
        """Wait for a scheduled signals refresh to finish."""
        if self._refresh is not None:
            await self._refresh

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
