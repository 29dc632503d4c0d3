"""In-memory product catalog and shopper store, shared by every stage.

A ``Catalog`` never changes: an update makes a new one (``upserted``, ``withdrawing``), so a
request that holds one sees a consistent set of products. The ``ShopperStore`` is updated in
place, one shopper at a time (a dict assignment is atomic).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path

from app.catalog.loader import load_products, load_shoppers
from app.domain import MAX_HISTORY, Interaction, Product, Shopper


class Catalog:
    """Products in a fixed order: row ``i`` of every matrix in retrieval is ``products[i]``.

    A withdrawn product keeps its row (its vector and the interactions with it keep their
    meaning) but is not on sale: never offered, listed or found.
    """

    def __init__(
        self,
        products: Sequence[Product],
        version: str | None = None,
        withdrawn: Iterable[str] = (),
    ) -> None:
        self.products: tuple[Product, ...] = tuple(products)
        self._row = {product.id: row for row, product in enumerate(self.products)}
        if len(self._row) != len(self.products):
            raise ValueError("duplicate product ids in catalog")
        self.withdrawn = frozenset(withdrawn)
        if not self.withdrawn <= self._row.keys():
            raise ValueError("withdrawn products must be in the catalog")
        if version is not None:
            self.__dict__["version"] = version

    @cached_property
    def version(self) -> str:
        """A fingerprint of the contents: answers cached for one version are stale for the next."""
        return _digest(
            "catalog", *(p.model_dump_json() for p in self.products), *sorted(self.withdrawn)
        )

    @classmethod
    def from_file(cls, path: Path) -> Catalog:
        return cls(load_products(path))

    def __len__(self) -> int:
        return len(self.products)

    def __contains__(self, product_id: object) -> bool:
        return product_id in self._row

    def get(self, product_id: str) -> Product | None:
        row = self._row.get(product_id)
        return None if row is None else self.products[row]

    def on_sale(self, product_id: str) -> bool:
        return product_id in self._row and product_id not in self.withdrawn

    @cached_property
    def on_sale_products(self) -> tuple[Product, ...]:
        if not self.withdrawn:
            return self.products
        return tuple(p for p in self.products if p.id not in self.withdrawn)

    def row(self, product_id: str) -> int:
        return self._row[product_id]

    def rows(self, product_ids: Iterable[str]) -> list[int]:
        return [self._row[pid] for pid in product_ids if pid in self._row]

    @cached_property
    def newest_arrival(self) -> datetime | None:
        """When the latest product on sale was added (None: no product has the date)."""
        return max((p.added_at for p in self.on_sale_products if p.added_at), default=None)

    @property
    def categories(self) -> list[str]:
        return sorted({product.category for product in self.products})

    def upserted(
        self, products: Iterable[Product], now: datetime | None = None
    ) -> tuple[Catalog, list[Product]]:
        """A new catalog with ``products`` written over it, and the products that changed.

        A known id keeps its row (so vectors and interaction signals keep their meaning); a
        new id is appended. A product equal to the one stored is not a change, unless it was
        withdrawn: written anew, it is on sale again. With ``now``, dates a write leaves out
        are kept or stamped (``stamped``).
        """
        rows = list(self.products)
        index = dict(self._row)
        changed: list[Product] = []
        for product in products:
            row = index.get(product.id)
            if now is not None:
                product = stamped(product, None if row is None else rows[row], now)
            if row is None:
                index[product.id] = len(rows)
                rows.append(product)
            elif rows[row] != product or product.id in self.withdrawn:
                rows[row] = product
            else:
                continue
            changed.append(product)
        if not changed:
            return self, changed
        version = _digest(self.version, *(p.model_dump_json() for p in changed))
        withdrawn = self.withdrawn - {p.id for p in changed}
        return Catalog(rows, version, withdrawn), changed

    def withdrawing(self, product_ids: Iterable[str]) -> Catalog:
        """A new catalog where these products are no longer on sale."""
        ids = sorted(set(product_ids) - self.withdrawn)
        if not ids:
            return self
        version = _digest(self.version, "withdrawn", *ids)
        return Catalog(self.products, version, self.withdrawn | set(ids))


def stamped(product: Product, before: Product | None, now: datetime) -> Product:
    """``product`` as written, with the dates it leaves out: ``added_at`` is kept from the
    stored product (``now`` for a new one); ``restocked_at`` is kept, or ``now`` when this
    write brings it from out of stock into stock. A date the write gives wins."""
    dates: dict[str, datetime | None] = {}
    if product.added_at is None:
        dates["added_at"] = now if before is None else before.added_at
    if product.restocked_at is None and before is not None:
        back = product.in_stock and not before.in_stock
        dates["restocked_at"] = now if back else before.restocked_at
    dates = {name: value for name, value in dates.items() if value is not None}
    return product.model_copy(update=dates) if dates else product


def _digest(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\x00")
    return digest.hexdigest()[:32]


def shopper_version(shopper: Shopper) -> str:
    """A fingerprint of a shopper's profile and history (history only grows at its end)."""
    last = shopper.history[-1].model_dump_json() if shopper.history else ""
    profile = shopper.model_dump_json(exclude={"history"})
    return _digest(profile, str(len(shopper.history)), last)


class ShopperStore:
    def __init__(self, shoppers: Iterable[Shopper]) -> None:
        self._by_id = {shopper.id: shopper for shopper in shoppers}
        # The database's events these histories hold, up to this row: a replica following
        # other replicas' writes reads on from there (app/server/catalog/service.py).
        self.events_through_row = 0

    @classmethod
    def from_file(cls, path: Path, catalog: Catalog) -> ShopperStore:
        return cls(load_shoppers(path, known_products={p.id for p in catalog.products}))

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Shopper]:
        return iter(list(self._by_id.values()))

    def known(self, shopper_id: str) -> bool:
        return shopper_id in self._by_id

    def get(self, shopper_id: str) -> Shopper:
        """The stored shopper, or a cold-start shopper: an unknown id is not an error."""
        return self._by_id.get(shopper_id) or Shopper(id=shopper_id)

    def all(self) -> list[Shopper]:
        return list(self._by_id.values())

    def put_profile(self, profile: Shopper) -> Shopper:
        """Store a shopper's profile; the history already known is kept."""
        known = self._by_id.get(profile.id)
        history = known.history if known is not None else ()
        shopper = profile.model_copy(update={"history": history})
        self._by_id[profile.id] = shopper
        return shopper

    def add_events(self, shopper_id: str, events: Sequence[Interaction]) -> Shopper:
        """Append events to a shopper's history (an unknown id becomes a known shopper).

        History stays in time order and keeps the newest ``MAX_HISTORY`` events.
        """
        shopper = self.get(shopper_id)
        history = sorted((*shopper.history, *events), key=lambda e: e.ts)[-MAX_HISTORY:]
        updated = shopper.model_copy(update={"history": tuple(history)})
        self._by_id[shopper_id] = updated
        return updated
