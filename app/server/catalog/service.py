"""The catalog slice's service: products, shoppers and events, read and written live.

It alone touches the pipeline's catalog and shoppers and the change store. Every write goes to
the database before the in-memory state changes, so a failing write changes nothing and a
restart rebuilds what was acknowledged. Catalog writes are serialised (one lock): two
concurrent upserts cannot each start from the same catalog and lose the other.

Replicas on one database follow each other's writes (``follow``, every
``follow_writes_s``): products and profiles written since the last look (read again over an
overlap, which changes nothing for what is here already), and events past the last row
applied, each applied once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.catalog.store import Catalog
from app.domain import Interaction, Product, Shopper
from app.guards import suspicious_text
from app.pipeline import Pipeline
from app.retrieval.collaborative import SavedModel
from app.retrieval.index import VectorIndex, reindex, save_index
from app.retrieval.selector import CandidateFilters
from app.retrieval.signals import InteractionSignals
from app.server.catalog.schemas import (
    EventIn,
    EventsAccepted,
    ProductPage,
    SearchHit,
    SearchResults,
    ShopperOut,
    ShopperPut,
    SuspiciousText,
    UpsertResult,
)
from app.server.errors import Problem
from app.server.metrics import SUSPICIOUS_TEXT
from app.store.repositories import CatalogChanges, StoredEvent

log = logging.getLogger(__name__)
RECENT_EVENTS_SHOWN = 20
MAX_FIELD_ERRORS = 50
# Following other replicas: products and profiles written up to this long before the last look
# are read again (another host's clock, a transaction that committed late); event rows skipped
# over (on PostgreSQL a transaction can commit after a later one, and a refused duplicate uses
# up a row number) are asked for again for a while, at most this many.
FOLLOW_OVERLAP = timedelta(seconds=60)
EVENT_GAP_WAIT_S = 60.0
MAX_EVENT_GAPS = 1000


class CatalogService:
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
        # Events: written here and read back by ``follow`` under one lock, so each reaches
        # memory once; rows this process stored are skipped when read back.
        self._events_lock = asyncio.Lock()
        self._events_through: int | None = None  # None: where the shoppers' load ended
        self._event_gaps: dict[int, float] = {}  # row -> when to stop asking for it
        self._own_rows: set[int] = set()
        self._followed_at: datetime | None = None  # None: never looked (read everything)

    # --- reading -------------------------------------------------------------------------------

    def products(self, offset: int, limit: int, category: str | None) -> ProductPage:
        products = self.pipeline.catalog.on_sale_products
        if category:
            products = tuple(p for p in products if p.category.casefold() == category.casefold())
        return ProductPage(
            products=list(products[offset : offset + limit]), total=len(products), offset=offset
        )

    def product(self, product_id: str) -> Product:
        catalog = self.pipeline.catalog
        product = catalog.get(product_id)
        if product is None or not catalog.on_sale(product.id):
            raise Problem("not-found", f"no product '{product_id}' on sale")
        return product

    def search(
        self,
        query: str,
        limit: int,
        *,
        category: str | None = None,
        max_price: float | None = None,
        in_stock_only: bool = True,
    ) -> SearchResults:
        filters = CandidateFilters(
            in_stock_only=in_stock_only,
            exclude_purchased=False,  # a search, not a recommendation
            include_categories=(category,) if category else (),
            max_price=max_price,
        )
        hits = self.pipeline.selector.search(query, limit, filters)
        return SearchResults(
            query=query, results=[SearchHit(product=p, score=round(s, 4)) for p, s in hits]
        )

    def shopper(self, shopper_id: str) -> ShopperOut:
        if not self.pipeline.shoppers.known(shopper_id):
            raise Problem("not-found", f"no shopper '{shopper_id}'")
        return _shopper_out(self.pipeline.shoppers.get(shopper_id))

    # --- writing -------------------------------------------------------------------------------

    async def upsert_products(self, products: Sequence[Product]) -> UpsertResult:
        """Create or replace products; only those whose text changed are embedded again."""
        async with self._lock:
            before = self.pipeline.catalog
            catalog, changed = before.upserted(products, datetime.now(UTC))
            created = [p.id for p in changed if p.id not in before]
            updated = [p.id for p in changed if p.id in before]
            if not changed:
                return UpsertResult(
                    created=[],
                    updated=[],
                    unchanged=len(products),
                    embedded=0,
                    catalog_size=len(before),
                    suspicious_text=_suspicious(products),
                )
            index, embedded, signals = await self._derived(before, catalog)
            await self.changes.upsert_products(changed)  # stored first: a failure changes nothing
            await self._switch(catalog, index, signals)
            log.info(
                "catalog: %d created, %d updated, %d embedded", len(created), len(updated), embedded
            )
            return UpsertResult(
                created=created,
                updated=updated,
                unchanged=len(products) - len(changed),
                embedded=embedded,
                catalog_size=len(catalog),
                suspicious_text=_suspicious(products),
            )

    async def _derived(
        self, before: Catalog, catalog: Catalog
    ) -> tuple[VectorIndex, int, InteractionSignals]:
        """The index (embedding only what changed) and the signals of ``catalog``, off the
        loop: embedding is the slow part (~150 products/s here)."""
        index, embedded = await asyncio.to_thread(
            reindex, before, self.pipeline.index, catalog, self.pipeline.embedder
        )
        return index, embedded, await self._signals(catalog)

    async def _switch(
        self, catalog: Catalog, index: VectorIndex, signals: InteractionSignals
    ) -> None:
        self.pipeline.use_catalog(catalog, index, signals)
        if self.index_dir is not None:
            try:
                await asyncio.to_thread(
                    save_index, catalog, index, self.pipeline.embedder, self.index_dir
                )
            except OSError:  # the next start rebuilds it; the update itself stands
                log.exception("could not save the index to %s", self.index_dir)

    async def withdraw_product(self, product_id: str) -> None:
        """Take a product off sale. Nothing is embedded: the product keeps its row, its vector
        and the interactions with it."""
        async with self._lock:
            catalog = self.pipeline.catalog
            product = self.product(product_id)
            await self.changes.withdraw_products([product])  # stored first
            self.pipeline.use_catalog(
                catalog.withdrawing([product_id]),
                self.pipeline.index,
                self.pipeline.selector.signals,
            )
            log.info("catalog: %s withdrawn from sale", product_id)

    async def put_profile(self, shopper_id: str, data: ShopperPut) -> ShopperOut:
        """Create or replace a shopper's profile; the history already recorded is kept."""
        profile = Shopper(id=shopper_id, **data.model_dump())
        await self.changes.put_profile(profile)
        shopper = self.pipeline.shoppers.put_profile(profile)
        self._schedule_refresh()  # the segment feeds segment popularity
        return _shopper_out(shopper)

    async def record_events(
        self, events: Sequence[EventIn], idempotency_key: str | None = None
    ) -> EventsAccepted:
        """Append events to shoppers' histories, each id once: an event whose id is recorded
        already is skipped, so a retried batch changes nothing. Says how many were recorded
        and each shopper's history length.

        All or nothing: one event naming a product not in the catalog, or an id twice, refuses
        the batch. The shopper's vector is computed from the history, so the next request
        already sees them; popularity and co-occurrence are recomputed shortly after (bursts
        coalesce).
        """
        catalog = self.pipeline.catalog
        unknown = [
            {"field": f"events[{i}].product_id", "message": f"unknown product '{e.product_id}'"}
            for i, e in enumerate(events)
            if e.product_id not in catalog
        ]
        if unknown:
            raise Problem(
                "invalid-request",
                f"{len(unknown)} event(s) name products not in the catalog; nothing was recorded",
                errors=unknown[:MAX_FIELD_ERRORS],
            )
        ids = _event_ids(events, idempotency_key)
        # Refused rather than half-recorded: the store would keep the first and skip the
        # rest, and the client meant two events (or reused an id by mistake).
        first: dict[str, int] = {}
        repeated = []
        for i, event_id in enumerate(ids):
            if event_id is not None and first.setdefault(event_id, i) != i:
                repeated.append(
                    {
                        "field": f"events[{i}].event_id",
                        "message": f"'{event_id}' is also the id of events[{first[event_id]}]",
                    }
                )
        if repeated:
            raise Problem(
                "invalid-request",
                f"{len(repeated)} event id(s) appear twice in the batch; nothing was recorded",
                errors=repeated[:MAX_FIELD_ERRORS],
            )
        now = datetime.now(UTC)
        pairs = [
            (e.shopper_id, Interaction(product_id=e.product_id, type=e.type, ts=e.ts or now))
            for e in events
        ]
        async with self._events_lock:
            added = await self.changes.add_events(pairs, ids)  # stored first
            self._own_rows.update(added.rows)  # in memory now: not again when read back
            # Only what was stored now reaches memory: a duplicate is there already (recorded
            # by this process or another, or loaded from the database at start), and a
            # restart rebuilds exactly what the database holds.
            grouped: dict[str, list[Interaction]] = {shopper_id: [] for shopper_id, _ in pairs}
            for i in added.positions:
                shopper_id, interaction = pairs[i]
                grouped[shopper_id].append(interaction)
            shoppers = self.pipeline.shoppers
            lengths = {}
            for shopper_id, group in grouped.items():
                shopper = (
                    shoppers.add_events(shopper_id, group) if group else shoppers.get(shopper_id)
                )
                lengths[shopper_id] = len(shopper.history)
        if added.positions:
            self._schedule_refresh()
        accepted = len(added.positions)
        return EventsAccepted(
            accepted=accepted, duplicates=len(events) - accepted, history_sizes=lengths
        )

    # --- following other replicas ----------------------------------------------------------------

    async def follow(self) -> int:
        """Bring into memory what other replicas wrote since the last call: products (embedded
        here too), withdrawals, profiles and events. Returns how many changes reached memory
        (0 when there was nothing new)."""
        started = datetime.now(UTC)
        moment = None if self._followed_at is None else self._followed_at - FOLLOW_OVERLAP
        async with self._events_lock:
            after = self._events_through
            if after is None:
                after = self.pipeline.shoppers.events_through_row
            written = await self.changes.written_since(moment, after, sorted(self._event_gaps))
            histories = self._take_events(after, written.events)
        shoppers = self.pipeline.shoppers
        for profile in written.profiles:
            known = shoppers.known(profile.id)
            if not known or shoppers.get(profile.id).model_copy(update={"history": ()}) != profile:
                shoppers.put_profile(profile)
                histories += 1
        changes = histories
        async with self._lock:
            before = self.pipeline.catalog
            off_sale = set(written.withdrawn)
            # As a restart lays them over the seed: every product written, in order of first
            # arrival, then the withdrawals; one withdrawn that is here already stays as it is.
            catalog, changed = before.upserted(
                p for p in written.products if p.id not in off_sale or p.id not in before
            )
            catalog = catalog.withdrawing(i for i in off_sale if i in catalog)
            if catalog is not before:
                changes += len(changed) + len(catalog.withdrawn - before.withdrawn)
                if changed:
                    # Its signals are computed from the shoppers as they are now, with the
                    # events and profiles above: no refresh needed after.
                    index, _, signals = await self._derived(before, catalog)
                    await self._switch(catalog, index, signals)
                    histories = 0
                else:  # withdrawals only: nothing to embed, the same signals
                    self.pipeline.use_catalog(
                        catalog, self.pipeline.index, self.pipeline.selector.signals
                    )
        self._followed_at = started
        if histories:  # popularity and the collaborative model follow the histories
            self._schedule_refresh()
        return changes

    def _take_events(self, after: int, events: list[StoredEvent]) -> int:
        """Apply events read back past row ``after`` (and rows still awaited), each once."""
        seen = {stored.row for stored in events}
        grouped: dict[str, list[Interaction]] = defaultdict(list)
        for stored in events:
            self._event_gaps.pop(stored.row, None)
            if stored.row in self._own_rows:
                self._own_rows.discard(stored.row)
                continue
            grouped[stored.shopper_id].append(stored.event)
        through = max([after, *seen])
        now = time.monotonic()
        for row in range(max(after + 1, through - MAX_EVENT_GAPS), through):
            if row not in seen:
                self._event_gaps.setdefault(row, now + EVENT_GAP_WAIT_S)
        self._event_gaps = {row: until for row, until in self._event_gaps.items() if until > now}
        self._own_rows = {r for r in self._own_rows if r > through or r in self._event_gaps}
        for shopper_id, group in grouped.items():
            self.pipeline.shoppers.add_events(shopper_id, group)
        self._events_through = through
        return sum(len(group) for group in grouped.values())

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
        """Popularity and the collaborative model from the shoppers' current histories, off
        the loop (requests meanwhile use the previous ones); the model is saved beside the
        index, so the next start loads it."""
        return await asyncio.to_thread(
            InteractionSignals.from_settings,
            catalog,
            self.pipeline.shoppers,
            self.pipeline.settings,
            None if self.index_dir is None else SavedModel(self.index_dir),
        )

    async def settled(self) -> None:
        """Wait for a scheduled signals refresh to finish."""
        if self._refresh is not None:
            await self._refresh

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh


def _suspicious(products: Sequence[Product]) -> list[SuspiciousText]:
    """Flag, don't refuse: a real title may trip a rule, and a merchant fixes it in the feed."""
    found = []
    for product in products:
        texts = {
            "title": product.title,
            "description": product.description,
            "brand": product.brand,
            "category": product.category,
            **{f"tags[{i}]": tag for i, tag in enumerate(product.tags)},
        }
        for field, text in texts.items():
            findings = suspicious_text(text)
            if findings:
                SUSPICIOUS_TEXT.labels(field.split("[")[0]).inc()
                found.append(SuspiciousText(product_id=product.id, field=field, findings=findings))
    if found:
        log.warning("catalog: suspicious text in %s", sorted({f.product_id for f in found}))
    return found


def _shopper_out(shopper: Shopper) -> ShopperOut:
    return ShopperOut(
        id=shopper.id,
        name=shopper.name,
        locale=shopper.locale,
        segment=shopper.segment,
        interests=list(shopper.interests),
        events=len(shopper.history),
        recent=list(reversed(shopper.history[-RECENT_EVENTS_SHOWN:])),
    )


def _event_ids(events: Sequence[EventIn], idempotency_key: str | None) -> list[str | None]:
    """Each event's own id; without one, ``<key>:<index>`` when the batch came with an
    Idempotency-Key, so the same batch sent again with the same key derives the same ids.
    Without either: None, an event that is never deduplicated."""
    return [
        e.event_id or (f"{idempotency_key}:{i}" if idempotency_key else None)
        for i, e in enumerate(events)
    ]
