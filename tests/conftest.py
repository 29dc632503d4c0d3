"""Shared fixtures: a tiny hand-made catalog and a bag-of-words embedder with known geometry."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.domain import EventType, Interaction, Product, Shopper
from app.retrieval.index import ExactIndex
from app.retrieval.selector import CandidateSelector
from app.retrieval.signals import InteractionSignals
from tests.fakes import WordEmbedder
from tests.postgres import PostgresServer, running_postgres


def product(
    pid: str,
    title: str,
    category: str,
    price: float,
    *,
    in_stock: bool = True,
    description: str = "",
) -> Product:
    return Product(
        id=pid,
        title=title,
        description=description or f"{title} for everyday use.",
        brand="Testco",
        category=category,
        tags=(),
        price=price,
        url=f"https://shop.example.com/{pid}",
        in_stock=in_stock,
    )


TINY_PRODUCTS = (
    product("C1", "Coffee Grinder", "Coffee", 120.0),
    product("C2", "Coffee Kettle", "Coffee", 60.0),
    product("C3", "Coffee Beans", "Coffee", 18.0),
    product("C4", "Coffee Grinder Beans Bundle", "Coffee", 140.0, in_stock=False),
    product("T1", "Green Tea", "Tea", 12.0),
    product("R1", "Trail Running Shoe", "Running", 130.0),
    product("R2", "Running Shoe", "Running", 95.0),
    product("K1", "Camping Tent", "Camping", 300.0),
    product("K2", "Camping Headlamp", "Camping", 35.0),
    product("Y1", "Yoga Mat", "Fitness", 40.0),
)

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def event(pid: str, kind: EventType, days_ago: float) -> Interaction:
    return Interaction(product_id=pid, type=kind, ts=NOW - timedelta(days=days_ago))


@pytest.fixture
def tiny_catalog() -> Catalog:
    return Catalog(TINY_PRODUCTS)


@pytest.fixture
def tiny_shoppers() -> ShopperStore:
    # Coffee people also buy camping headlamps: the co-occurrence signal has something to find.
    return ShopperStore(
        [
            Shopper(
                id="coffee_fan",
                segment="regular",
                interests=("coffee",),
                history=(
                    event("C1", EventType.VIEW, 10),
                    event("C3", EventType.PURCHASE, 9),
                    event("K2", EventType.VIEW, 8),
                ),
            ),
            Shopper(
                id="coffee_two",
                segment="regular",
                history=(event("C2", EventType.VIEW, 3), event("K2", EventType.ADD_TO_CART, 2)),
            ),
            Shopper(
                id="runner",
                segment="sporty",
                interests=("trail running",),
                history=(event("R1", EventType.VIEW, 1), event("R2", EventType.PURCHASE, 1)),
            ),
            Shopper(
                id="camper",
                segment="sporty",
                history=(
                    event("K1", EventType.PURCHASE, 5),
                    event("K2", EventType.VIEW, 5),
                    event("R1", EventType.VIEW, 4),
                ),
            ),
            Shopper(id="newcomer", segment="regular"),
        ]
    )


@pytest.fixture
def word_embedder() -> WordEmbedder:
    return WordEmbedder()


@pytest.fixture
def test_settings(tmp_path: Path) -> Settings:
    return Settings(
        cache_dir=tmp_path / "cache",
        search_k=50,
        mmr_lambda=1.0,
        semantic_weight=0.6,
        collaborative_weight=0.3,
        popularity_weight=0.1,
        # Every read sees the database as it is: the read path's short memory of stored rows
        # is tested on its own (tests/test_jobs_api.py).
        read_cache_s=0.0,
        # One sample a banner: a scripted engine's answers are then the attempts, in order.
        # Best-of-n is tested on its own (tests/test_choosing.py).
        best_of=1,
    )


@pytest.fixture
def selector(
    tiny_catalog: Catalog,
    tiny_shoppers: ShopperStore,
    word_embedder: WordEmbedder,
    test_settings: Settings,
) -> CandidateSelector:
    from app.retrieval.embedder import product_text

    vectors = word_embedder.encode([product_text(p) for p in tiny_catalog.products])
    return CandidateSelector(
        tiny_catalog,
        ExactIndex(vectors),
        word_embedder,
        InteractionSignals(tiny_catalog, tiny_shoppers),
        test_settings,
    )


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: SQLite in a file, or one of its own on the test run's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'marquee.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture
def data_files_settings(
    tmp_path: Path,
    database_url: str,
    tiny_catalog: Catalog,
    tiny_shoppers: ShopperStore,
    test_settings: Settings,
) -> Settings:
    """Settings whose data files hold the tiny catalog and shoppers, on the test's database:
    what a pre-generation job plans from (tests/fakes.py ``file_loader`` builds the app's
    pipeline from the same files)."""
    products = tmp_path / "products.jsonl"
    products.write_text("".join(p.model_dump_json() + "\n" for p in tiny_catalog.products))
    people = tmp_path / "shoppers.jsonl"
    people.write_text("".join(s.model_dump_json() + "\n" for s in tiny_shoppers.all()))
    return test_settings.model_copy(
        update={
            "database_url": database_url,
            "products_path": products,
            "shoppers_path": people,
            "signals_refresh_delay_s": 0.0,
        }
    )
