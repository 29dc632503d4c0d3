"""In-memory product catalog and shopper store, loaded once and shared by every stage."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from app.catalog.loader import load_products, load_shoppers
from app.domain import Product, Shopper


class Catalog:
    """Products in a fixed order: row ``i`` of every matrix in retrieval is ``products[i]``."""

    def __init__(self, products: Sequence[Product]) -> None:
        self.products: tuple[Product, ...] = tuple(products)
        self._row = {product.id: row for row, product in enumerate(self.products)}
        if len(self._row) != len(self.products):
            raise ValueError("duplicate product ids in catalog")

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

    def row(self, product_id: str) -> int:
        return self._row[product_id]

    def rows(self, product_ids: Iterable[str]) -> list[int]:
        return [self._row[pid] for pid in product_ids if pid in self._row]

    @property
    def categories(self) -> list[str]:
        return sorted({product.category for product in self.products})


class ShopperStore:
    def __init__(self, shoppers: Iterable[Shopper]) -> None:
        self._by_id = {shopper.id: shopper for shopper in shoppers}

    @classmethod
    def from_file(cls, path: Path, catalog: Catalog) -> ShopperStore:
        return cls(load_shoppers(path, known_products={p.id for p in catalog.products}))

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_id.values())

    def known(self, shopper_id: str) -> bool:
        return shopper_id in self._by_id

    def get(self, shopper_id: str) -> Shopper:
        """The stored shopper, or a cold-start shopper: an unknown id is not an error."""
        return self._by_id.get(shopper_id) or Shopper(id=shopper_id)

    def all(self) -> list[Shopper]:
        return list(self._by_id.values())
