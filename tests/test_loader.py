from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.catalog.loader import CatalogError, load_products, load_shoppers
from app.config import PROJECT_ROOT

GOOD = {
    "id": "P1",
    "title": "Brewfield Burr Grinder",
    "description": "Steel burrs.",
    "brand": "Brewfield",
    "category": "Coffee & Tea",
    "tags": ["coffee"],
    "price": 129.99,
    "currency": "USD",
    "in_stock": True,
    "url": "https://shop.example.com/p1",
    "image_url": "https://cdn.example.com/p1.jpg",
}


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_demo_catalog_meets_the_brief() -> None:
    products = load_products(PROJECT_ROOT / "data" / "products.jsonl")
    shoppers = load_shoppers(
        PROJECT_ROOT / "data" / "shoppers.jsonl", known_products={p.id for p in products}
    )
    assert len(products) >= 600
    assert len({p.category for p in products}) >= 10
    assert len({p.title for p in products}) == len(products)
    assert len(shoppers) >= 60
    assert any(not s.history for s in shoppers), "cold-start shoppers are part of the demo"
    with_history = [s for s in shoppers if s.history]
    assert len(with_history) >= 40
    assert {e.type for s in with_history for e in s.history} == {"view", "add_to_cart", "purchase"}


def test_jsonl_bad_row_names_the_line(tmp_path: Path) -> None:
    bad = dict(GOOD, id="P2", price="cheap")
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, bad])
    with pytest.raises(CatalogError, match=r"p\.jsonl:2: field 'price'"):
        load_products(path)


def test_jsonl_broken_json_names_the_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, "", '{"id": "P3",'])
    with pytest.raises(CatalogError, match=r":3: invalid JSON"):
        load_products(path)


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, GOOD])
    with pytest.raises(CatalogError, match="duplicate id 'P1' \\(first on line 1\\)"):
        load_products(path)


def test_csv_products_load_with_lists_and_booleans(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text(
        "id,title,description,brand,category,tags,price,currency,in_stock,url,image_url\n"
        "P1,Burr Grinder,Steel burrs.,Brewfield,Coffee,coffee;grinder,129.99,USD,false,"
        "https://shop.example.com/p1,\n"
    )
    (item,) = load_products(path)
    assert item.tags == ("coffee", "grinder")
    assert item.in_stock is False
    assert item.image_url is None
    assert item.price == pytest.approx(129.99)


def test_csv_bad_row_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text(
        "id,title,brand,category,price,url\n"
        "P1,Grinder,B,Coffee,10,https://shop.example.com/1\n"
        "P2,Kettle,B,Coffee,-5,https://shop.example.com/2\n"
    )
    with pytest.raises(CatalogError, match=r"p\.csv:3: field 'price'"):
        load_products(path)


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="file not found"):
        load_products(tmp_path / "nope.jsonl")
    (tmp_path / "p.xml").write_text("<x/>")
    with pytest.raises(CatalogError, match="unsupported format"):
        load_products(tmp_path / "p.xml")


def test_shopper_events_about_unknown_products_are_dropped(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [
            {
                "id": "u1",
                "history": [
                    {"product_id": "P1", "type": "view", "ts": "2026-10-01T10:00:00+00:00"},
                    {"product_id": "GONE", "type": "purchase", "ts": "2026-10-02T10:00:00+00:00"},
                ],
            }
        ],
    )
    (shopper,) = load_shoppers(path, known_products={"P1"})
    assert [e.product_id for e in shopper.history] == ["P1"]


def test_shopper_event_type_is_validated(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [
            {
                "id": "u1",
                "history": [
                    {"product_id": "P1", "type": "wishlist", "ts": "2026-10-01T10:00:00+00:00"}
                ],
            }
        ],
    )
    with pytest.raises(CatalogError, match=r":1: field 'history\.0\.type'"):
        load_shoppers(path)
