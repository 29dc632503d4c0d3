"""Generate the demo catalog and demo shoppers, deterministically.

    python scripts/make_demo_data.py            # writes data/products.jsonl, data/shoppers.jsonl

The same seed always yields byte-identical files, so the committed data can be re-made and
diffed. Shoppers follow personas (favourite categories, a price band, a segment) and buy
things that go together, so both the semantic and the collaborative retrieval signals have
real structure to find.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

SEED = 20261101
NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Kind:
    """One product type within a category: how to name it and what it costs."""

    noun: str
    price: tuple[float, float]
    features: tuple[str, ...]
    tags: tuple[str, ...]
    variants: tuple[str, ...] = ()


@dataclass(frozen=True)
class Category:
    name: str
    slug: str
    brands: tuple[str, ...]
    adjectives: tuple[str, ...]
    kinds: tuple[Kind, ...]
    uses: tuple[str, ...]
    interests: tuple[str, ...]
    out_of_stock_rate: float = 0.06
    extra: dict[str, str] = field(default_factory=dict)


COLOURS = (
    "Slate Blue",
    "Charcoal",
    "Forest Green",
    "Sand",
    "Black",
    "Ivory",
    "Rust",
    "Navy",
    "Olive",
    "Heather Grey",
    "Burgundy",
    "Sky Blue",
)

CATEGORIES: tuple[Category, ...] = (
    Category(
        "Running Shoes",
        "running-shoes",
        ("Northpeak", "Stridewell", "Kinetix", "Aerolope"),
        ("Trail", "Road", "Tempo", "Cushioned", "Lightweight", "All-Weather"),
        (
            Kind(
                "Runner",
                (79, 169),
                (
                    "a responsive foam midsole",
                    "a breathable engineered mesh upper",
                    "a grippy rubber outsole",
                    "an 8 mm heel-to-toe drop",
                ),
                ("running", "cushioning"),
                COLOURS,
            ),
            Kind(
                "Racing Flat",
                (99, 219),
                ("a carbon-infused plate", "a featherweight knit upper", "an aggressive rocker"),
                ("racing", "speed"),
                COLOURS,
            ),
            Kind(
                "Trail Shoe",
                (89, 189),
                ("4 mm lugs for loose terrain", "a rock plate", "a water-resistant upper"),
                ("trail", "outdoor"),
                COLOURS,
            ),
        ),
        ("daily miles", "race day", "muddy trails", "long runs"),
        ("trail running", "marathon training", "running shoes"),
    ),
    Category(
        "Outdoor & Camping",
        "outdoor",
        ("Ridgeline", "Cedar & Pine", "Summitcraft", "Bearpaw Gear"),
        ("Ultralight", "Four-Season", "Packable", "Weatherproof", "Compact", "Expedition"),
        (
            Kind(
                "Tent",
                (129, 549),
                ("double-wall construction", "colour-coded poles", "a full-coverage rainfly"),
                ("camping", "shelter"),
                ("2-Person", "3-Person", "4-Person"),
            ),
            Kind(
                "Sleeping Bag",
                (69, 329),
                (
                    "synthetic fill that stays warm when damp",
                    "a draft collar",
                    "a compression sack",
                ),
                ("camping", "sleep"),
                ("20°F", "30°F", "40°F"),
            ),
            Kind(
                "Headlamp",
                (24, 79),
                ("a rechargeable battery", "a red night-vision mode", "an IPX7 waterproof rating"),
                ("hiking", "lighting"),
                ("350 Lumen", "500 Lumen"),
            ),
            Kind(
                "Daypack",
                (49, 159),
                ("a hydration sleeve", "a ventilated back panel", "hip-belt pockets"),
                ("hiking", "bags"),
                ("18L", "24L", "30L"),
            ),
            Kind(
                "Trekking Poles",
                (39, 139),
                ("flick-lock adjusters", "cork grips", "carbide tips"),
                ("hiking", "trekking"),
                ("Aluminium", "Carbon"),
            ),
        ),
        ("weekend trips", "backcountry nights", "summit days"),
        ("camping", "hiking", "backpacking"),
    ),
    Category(
        "Kitchen & Cookware",
        "kitchen",
        ("Hearthstone", "Copperleaf", "Mise Kitchen", "Ferro & Co"),
        ("Cast-Iron", "Tri-Ply", "Nonstick", "Enamelled", "Professional", "Everyday"),
        (
            Kind(
                "Skillet",
                (29, 189),
                ("even heat retention", "an oven-safe handle", "a pre-seasoned surface"),
                ("cookware", "frying"),
                ("10-inch", "12-inch"),
            ),
            Kind(
                "Dutch Oven",
                (59, 329),
                ("a tight-fitting lid", "an enamelled interior", "wide loop handles"),
                ("cookware", "braising"),
                ("4.5 qt", "5.5 qt", "7 qt"),
            ),
            Kind(
                "Chef's Knife",
                (39, 249),
                (
                    "a full-tang German steel blade",
                    "a balanced pakkawood handle",
                    "a 15-degree edge",
                ),
                ("knives", "prep"),
                ("8-inch", "6-inch"),
            ),
            Kind(
                "Cutting Board",
                (19, 89),
                ("end-grain acacia", "a juice groove", "non-slip feet"),
                ("prep", "wood"),
                ("Large", "Medium"),
            ),
        ),
        ("weeknight dinners", "slow Sunday braises", "meal prep"),
        ("home cooking", "baking", "kitchen gear"),
    ),
    Category(
        "Coffee & Tea",
        "coffee-tea",
        ("Roastery Lane", "Morning Ritual", "Kettle & Leaf", "Brewfield"),
        ("Single-Origin", "Small-Batch", "Precision", "Classic", "Barista", "Organic"),
        (
            Kind(
                "Burr Grinder",
                (49, 299),
                ("40 grind settings", "conical steel burrs", "a low-retention chute"),
                ("coffee", "grinder"),
                ("Matte Black", "Steel"),
            ),
            Kind(
                "Pour-Over Kettle",
                (29, 169),
                ("a gooseneck spout", "temperature hold", "a built-in thermometer"),
                ("coffee", "tea", "kettle"),
                ("0.9 L", "1.2 L"),
            ),
            Kind(
                "Coffee Beans",
                (14, 29),
                ("notes of cocoa and cherry", "a medium roast", "beans roasted to order"),
                ("coffee", "beans"),
                (
                    "Ethiopia Yirgacheffe",
                    "Colombia Huila",
                    "Guatemala Antigua",
                    "House Espresso Blend",
                ),
            ),
            Kind(
                "Loose-Leaf Tea",
                (9, 24),
                ("whole leaves", "a resealable tin", "hand-picked harvests"),
                ("tea",),
                ("Sencha", "Earl Grey", "Assam", "Jasmine Pearl"),
            ),
            Kind(
                "French Press",
                (24, 89),
                ("a double-wall body", "a four-level filter", "a heat-resistant handle"),
                ("coffee", "brewing"),
                ("34 oz", "17 oz"),
            ),
        ),
        ("slow mornings", "the office desk", "weekend brunch"),
        ("specialty coffee", "tea", "coffee brewing"),
    ),
    Category(
        "Skincare & Beauty",
        "beauty",
        ("Lumière Botanics", "Dewpoint", "Kindred Skin", "Saltwater Apothecary"),
        ("Hydrating", "Gentle", "Brightening", "Fragrance-Free", "Nourishing", "Daily"),
        (
            Kind(
                "Face Serum",
                (18, 79),
                ("hyaluronic acid", "niacinamide", "a lightweight texture"),
                ("skincare", "serum"),
                ("30 ml", "50 ml"),
            ),
            Kind(
                "Moisturiser",
                (16, 64),
                ("ceramides", "squalane", "a non-greasy finish"),
                ("skincare", "moisturiser"),
                ("50 ml", "100 ml"),
            ),
            Kind(
                "Sunscreen",
                (14, 42),
                ("SPF 50 broad-spectrum protection", "no white cast", "a reef-conscious formula"),
                ("skincare", "sun"),
                ("50 ml", "100 ml"),
            ),
            Kind(
                "Lip Balm Set",
                (9, 26),
                ("shea butter", "a tinted finish", "recyclable tubes"),
                ("beauty", "lips"),
                ("Trio", "Quad"),
            ),
        ),
        ("morning routines", "travel bags", "sensitive skin"),
        ("skincare", "clean beauty", "self-care"),
    ),
    Category(
        "Audio & Headphones",
        "audio",
        ("Sonara", "Quietwave", "Arclight Audio", "Tempo Labs"),
        ("Wireless", "Noise-Cancelling", "Studio", "Sport", "Compact", "Hi-Fi"),
        (
            Kind(
                "Headphones",
                (79, 399),
                ("active noise cancelling", "30-hour battery life", "memory-foam ear cushions"),
                ("audio", "headphones"),
                ("Black", "Sand", "Silver"),
            ),
            Kind(
                "Earbuds",
                (49, 249),
                ("a pocketable charging case", "sweat resistance", "multipoint Bluetooth"),
                ("audio", "earbuds"),
                ("Black", "White", "Navy"),
            ),
            Kind(
                "Bluetooth Speaker",
                (39, 299),
                ("360-degree sound", "an IP67 rating", "a 20-hour battery"),
                ("audio", "speaker"),
                ("Mini", "Max"),
            ),
        ),
        ("commutes", "focused work", "backyard parties"),
        ("music", "podcasts", "audio gear"),
    ),
    Category(
        "Home Decor",
        "home-decor",
        ("Linen & Loom", "Oakhaven", "Terrace Home", "Marlow Studio"),
        ("Handwoven", "Minimalist", "Rustic", "Mid-Century", "Coastal", "Scandinavian"),
        (
            Kind(
                "Throw Blanket",
                (39, 149),
                ("a chunky knit", "organic cotton", "tasselled edges"),
                ("decor", "textiles"),
                COLOURS[:6],
            ),
            Kind(
                "Table Lamp",
                (49, 229),
                ("a linen shade", "a dimmable bulb", "a ceramic base"),
                ("decor", "lighting"),
                ("Ivory", "Sage", "Terracotta"),
            ),
            Kind(
                "Planter",
                (19, 99),
                ("a drainage hole", "a matte glaze", "a bamboo saucer"),
                ("decor", "plants"),
                ("Small", "Medium", "Large"),
            ),
            Kind(
                "Scented Candle",
                (16, 48),
                ("a cotton wick", "a 50-hour burn time", "a soy wax blend"),
                ("decor", "candles"),
                ("Cedar & Smoke", "Fig Leaf", "Sea Salt", "Amber"),
            ),
        ),
        ("cosy evenings", "reading nooks", "the living room"),
        ("interior design", "cosy home", "plants"),
    ),
    Category(
        "Fitness & Yoga",
        "fitness",
        ("Flowstate", "Ironclad", "Balance Works", "Pulse Athletic"),
        ("Non-Slip", "Adjustable", "Eco", "Pro", "Foldable", "Studio"),
        (
            Kind(
                "Yoga Mat",
                (29, 129),
                ("6 mm of cushioning", "natural tree rubber", "alignment lines"),
                ("yoga", "mat"),
                ("Sage", "Plum", "Charcoal"),
            ),
            Kind(
                "Dumbbell Set",
                (49, 399),
                ("quick-change plates", "knurled handles", "a storage tray"),
                ("strength", "weights"),
                ("5–25 lb", "5–50 lb"),
            ),
            Kind(
                "Resistance Bands",
                (14, 49),
                ("five resistance levels", "fabric loops", "a carry pouch"),
                ("strength", "mobility"),
                ("Set of 5", "Set of 3"),
            ),
            Kind(
                "Foam Roller",
                (19, 59),
                ("a textured surface", "high-density foam", "a hollow core"),
                ("recovery", "mobility"),
                ("18-inch", "36-inch"),
            ),
        ),
        ("home workouts", "morning flows", "recovery days"),
        ("yoga", "strength training", "home workouts"),
    ),
    Category(
        "Women's Apparel",
        "womens-apparel",
        ("Wren & Willow", "Coastline", "Atelier Nord", "Meadow Lane"),
        ("Merino", "Linen", "Relaxed", "Tailored", "Organic Cotton", "Recycled"),
        (
            Kind(
                "Sweater",
                (59, 189),
                ("soft merino wool", "ribbed cuffs", "a relaxed fit"),
                ("knitwear", "women"),
                COLOURS[:8],
            ),
            Kind(
                "Midi Dress",
                (69, 199),
                ("a flattering wrap silhouette", "side pockets", "breathable fabric"),
                ("dresses", "women"),
                COLOURS[4:10],
            ),
            Kind(
                "Rain Jacket",
                (89, 249),
                ("a waterproof shell", "sealed seams", "a packable hood"),
                ("outerwear", "women"),
                COLOURS[:6],
            ),
            Kind(
                "Wide-Leg Trousers",
                (59, 149),
                ("a high rise", "a fluid drape", "an elasticated back"),
                ("trousers", "women"),
                COLOURS[2:8],
            ),
        ),
        ("everyday wear", "the office", "weekend getaways"),
        ("women's fashion", "sustainable fashion", "capsule wardrobe"),
    ),
    Category(
        "Men's Apparel",
        "mens-apparel",
        ("Harbor & Co", "Fieldstone", "Northbound", "Common Thread"),
        ("Heavyweight", "Oxford", "Stretch", "Waxed", "Organic Cotton", "Brushed"),
        (
            Kind(
                "Shirt",
                (39, 119),
                ("a button-down collar", "a tailored fit", "mother-of-pearl buttons"),
                ("shirts", "men"),
                COLOURS[:8],
            ),
            Kind(
                "Chinos",
                (49, 129),
                ("four-way stretch", "a slim taper", "a hidden phone pocket"),
                ("trousers", "men"),
                COLOURS[3:9],
            ),
            Kind(
                "Field Jacket",
                (129, 329),
                ("a waxed-cotton shell", "a corduroy collar", "four bellows pockets"),
                ("outerwear", "men"),
                COLOURS[:5],
            ),
            Kind(
                "Crewneck Tee",
                (19, 49),
                ("heavyweight cotton", "a boxy fit", "a reinforced neckline"),
                ("basics", "men"),
                COLOURS,
            ),
        ),
        ("everyday wear", "the office", "cold mornings"),
        ("men's fashion", "workwear", "menswear basics"),
    ),
    Category(
        "Bags & Travel",
        "bags-travel",
        ("Transit Supply", "Wanderlust Goods", "Carryall", "Meridian"),
        ("Carry-On", "Weekender", "Commuter", "Water-Resistant", "Convertible", "Leather"),
        (
            Kind(
                "Backpack",
                (59, 229),
                ("a padded 16-inch laptop sleeve", "a luggage pass-through", "YKK zips"),
                ("bags", "travel"),
                ("20L", "28L", "35L"),
            ),
            Kind(
                "Duffel",
                (69, 249),
                ("a shoe compartment", "a detachable shoulder strap", "waxed canvas"),
                ("bags", "travel"),
                ("40L", "55L"),
            ),
            Kind(
                "Packing Cubes",
                (19, 49),
                ("compression zips", "mesh windows", "ripstop nylon"),
                ("travel", "organisation"),
                ("Set of 3", "Set of 6"),
            ),
            Kind(
                "Suitcase",
                (149, 449),
                ("360-degree spinner wheels", "a TSA-approved lock", "a polycarbonate shell"),
                ("travel", "luggage"),
                ("Cabin", "Check-In"),
            ),
        ),
        ("business trips", "long weekends", "daily commutes"),
        ("travel", "commuting", "minimalist packing"),
    ),
    Category(
        "Pet Supplies",
        "pets",
        ("Good Boy Goods", "Whisker & Tail", "Pawtrail", "Furnest"),
        ("Orthopaedic", "Chew-Proof", "Reflective", "Washable", "Calming", "Adjustable"),
        (
            Kind(
                "Dog Bed",
                (39, 179),
                ("memory-foam support", "a removable washable cover", "a non-skid base"),
                ("dogs", "beds"),
                ("Medium", "Large", "X-Large"),
            ),
            Kind(
                "Harness",
                (24, 69),
                ("no-pull front clip", "reflective stitching", "padded straps"),
                ("dogs", "walking"),
                ("Small", "Medium", "Large"),
            ),
            Kind(
                "Cat Tree",
                (49, 199),
                ("sisal scratching posts", "a hideaway condo", "a plush top perch"),
                ("cats", "furniture"),
                ("4-Tier", "5-Tier"),
            ),
            Kind(
                "Treat Pouch",
                (12, 29),
                ("a magnetic closure", "a poop-bag dispenser", "a belt clip"),
                ("dogs", "training"),
                ("Olive", "Rust", "Navy"),
            ),
        ),
        ("daily walks", "nap time", "training sessions"),
        ("dogs", "cats", "pet care"),
    ),
)

# Things people buy together, across or within categories: (kind nouns...).
BUNDLES: tuple[tuple[str, ...], ...] = (
    ("Tent", "Sleeping Bag", "Headlamp"),
    ("Daypack", "Trekking Poles", "Trail Shoe"),
    ("Burr Grinder", "Coffee Beans", "Pour-Over Kettle"),
    ("French Press", "Coffee Beans"),
    ("Skillet", "Chef's Knife", "Cutting Board"),
    ("Face Serum", "Moisturiser", "Sunscreen"),
    ("Yoga Mat", "Foam Roller", "Resistance Bands"),
    ("Runner", "Foam Roller", "Earbuds"),
    ("Backpack", "Packing Cubes", "Headphones"),
    ("Dog Bed", "Harness", "Treat Pouch"),
    ("Throw Blanket", "Scented Candle", "Loose-Leaf Tea"),
    ("Suitcase", "Packing Cubes", "Rain Jacket"),
)

SEGMENTS = {
    "bargain_hunter": (0.0, 0.45),
    "mainstream": (0.2, 0.8),
    "premium": (0.55, 1.0),
    "gift_shopper": (0.1, 0.7),
    "new_visitor": (0.0, 1.0),
}

FIRST_NAMES = (
    "Ava",
    "Ben",
    "Chloe",
    "Dev",
    "Elena",
    "Finn",
    "Grace",
    "Hugo",
    "Isla",
    "Jonah",
    "Kira",
    "Leo",
    "Maya",
    "Nico",
    "Olive",
    "Priya",
    "Quinn",
    "Rosa",
    "Sam",
    "Theo",
    "Uma",
    "Vik",
    "Willa",
    "Xander",
    "Yara",
    "Zane",
)
LOCALES = ("en-US", "en-US", "en-US", "en-GB", "en-CA", "en-AU")


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def make_products(rng: random.Random) -> list[dict[str, object]]:
    products: list[dict[str, object]] = []
    seen_titles: set[str] = set()
    for category in CATEGORIES:
        made = 0
        attempts = 0
        while made < 56 and attempts < 2000:
            attempts += 1
            kind = rng.choice(category.kinds)
            brand = rng.choice(category.brands)
            adjective = rng.choice(category.adjectives)
            variant = rng.choice(kind.variants) if kind.variants else ""
            title = f"{brand} {adjective} {kind.noun}" + (f", {variant}" if variant else "")
            if title in seen_titles or adjective.split()[0] in kind.noun:
                continue
            seen_titles.add(title)
            low, high = kind.price
            price = (
                round(rng.uniform(low, high)) - 0.01
                if high > 30
                else round(rng.uniform(low, high), 0) - 0.05
            )
            price = max(price, 4.95)
            features = rng.sample(kind.features, k=min(2, len(kind.features)))
            use = rng.choice(category.uses)
            description = (
                f"The {adjective.lower()} {kind.noun.lower()} from {brand}, made for {use}. "
                f"It pairs {features[0]} with {features[1]}"
                + (f", in {variant}." if variant else ".")
            )
            product_id = f"{category.slug[:3]}-{made + 1:03d}"
            tags = sorted({*kind.tags, slugify(adjective), category.slug})
            products.append(
                {
                    "id": product_id.upper(),
                    "title": title,
                    "description": description,
                    "brand": brand,
                    "category": category.name,
                    "tags": tags,
                    "price": round(price, 2),
                    "currency": "USD",
                    "in_stock": rng.random() > category.out_of_stock_rate,
                    "url": f"https://shop.example.com/p/{slugify(title)}",
                    "image_url": f"https://cdn.example.com/img/{product_id.lower()}.jpg",
                    "kind": kind.noun,
                }
            )
            made += 1
    return products


def price_rank(products: list[dict[str, object]]) -> dict[str, float]:
    """A product's price percentile within its kind (0 cheap .. 1 dear)."""
    by_kind: dict[str, list[dict[str, object]]] = {}
    for product in products:
        by_kind.setdefault(str(product["kind"]), []).append(product)
    rank: dict[str, float] = {}
    for items in by_kind.values():
        ordered = sorted(items, key=lambda p: float(p["price"]))  # type: ignore[arg-type]
        for position, product in enumerate(ordered):
            rank[str(product["id"])] = position / max(1, len(ordered) - 1)
    return rank


def make_shoppers(
    rng: random.Random, products: list[dict[str, object]], count: int = 72
) -> list[dict[str, object]]:
    rank = price_rank(products)
    by_category: dict[str, list[dict[str, object]]] = {}
    by_kind: dict[str, list[dict[str, object]]] = {}
    for product in products:
        by_category.setdefault(str(product["category"]), []).append(product)
        by_kind.setdefault(str(product["kind"]), []).append(product)

    shoppers: list[dict[str, object]] = []
    for number in range(1, count + 1):  # a larger count keeps the first 72 as they are
        segment = rng.choice(list(SEGMENTS))
        favourites = rng.sample(CATEGORIES, k=rng.choice((1, 2, 2, 3)))
        band = SEGMENTS[segment]
        interests = sorted({rng.choice(c.interests) for c in favourites})
        # New visitors are the cold-start cases: no history, sometimes no stated interests.
        cold = segment == "new_visitor" and number % 3 != 0
        if cold and number % 2 == 0:
            interests = []

        def pick(
            pool: list[dict[str, object]], band: tuple[float, float] = band
        ) -> dict[str, object]:
            fitting = [p for p in pool if band[0] <= rank[str(p["id"])] <= band[1]] or pool
            return rng.choice(fitting)

        events: list[dict[str, str]] = []
        if not cold:
            sessions = rng.randint(2, 9)
            when = NOW - timedelta(days=rng.randint(60, 150))
            for _ in range(sessions):
                when += timedelta(days=rng.randint(1, 14), hours=rng.randint(0, 12))
                if when > NOW:
                    break
                category = rng.choice(favourites)
                # Half of sessions follow a bundle that touches a favourite category.
                bundles = [b for b in BUNDLES if any(k.noun in b for k in category.kinds)]
                if bundles and rng.random() < 0.5:
                    kinds = rng.choice(bundles)
                    viewed = [pick(by_kind[k]) for k in kinds]
                else:
                    viewed = [pick(by_category[category.name]) for _ in range(rng.randint(2, 5))]
                for product in viewed:
                    when += timedelta(minutes=rng.randint(1, 9), seconds=rng.randint(0, 59))
                    events.append(
                        {"product_id": str(product["id"]), "type": "view", "ts": when.isoformat()}
                    )
                    roll = rng.random()
                    if roll < 0.3:
                        when += timedelta(minutes=rng.randint(1, 5))
                        events.append(
                            {
                                "product_id": str(product["id"]),
                                "type": "add_to_cart",
                                "ts": when.isoformat(),
                            }
                        )
                        if roll < 0.15:
                            when += timedelta(minutes=rng.randint(2, 20))
                            events.append(
                                {
                                    "product_id": str(product["id"]),
                                    "type": "purchase",
                                    "ts": when.isoformat(),
                                }
                            )
        shoppers.append(
            {
                "id": f"u{number:03d}",
                "name": rng.choice(FIRST_NAMES),
                "locale": rng.choice(LOCALES),
                "segment": segment,
                "interests": interests,
                "history": events,
            }
        )
    return shoppers


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def add_stock_dates(products: list[dict[str, object]], shoppers: list[dict[str, object]]) -> None:
    """When each product was added and, for some, when it came back into stock: the new
    arrivals and back in stock sections. Drawn from a generator of their own, so the products
    and shoppers are exactly what they were before these dates existed; a product is added a
    day before anyone's first event with it at the latest."""
    first_seen: dict[str, datetime] = {}
    for shopper in shoppers:
        for event in shopper["history"]:  # type: ignore[attr-defined]
            ts = datetime.fromisoformat(event["ts"])
            first_seen[event["product_id"]] = min(ts, first_seen.get(event["product_id"], ts))
    rng = random.Random(SEED + 1)
    for product in products:
        new = rng.random() < 0.12
        age = rng.uniform(1, 28) if new else rng.uniform(60, 720)
        added = NOW - timedelta(days=age)
        if str(product["id"]) in first_seen:
            added = min(added, first_seen[str(product["id"])] - timedelta(days=1))
        product["added_at"] = added.isoformat()
        if product["in_stock"] and not new and rng.random() < 0.05:
            product["restocked_at"] = (NOW - timedelta(days=rng.uniform(0.5, 20))).isoformat()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data")
    parser.add_argument(
        "--shoppers", type=int, default=72, help="how many (synthetic shoppers for load and scale)"
    )
    args = parser.parse_args()
    rng = random.Random(SEED)
    products = make_products(rng)
    shoppers = make_shoppers(rng, products, args.shoppers)
    add_stock_dates(products, shoppers)
    for product in products:
        del product["kind"]
    write_jsonl(args.out / "products.jsonl", products)
    write_jsonl(args.out / "shoppers.jsonl", shoppers)
    categories = {str(p["category"]) for p in products}
    print(
        f"{len(products)} products in {len(categories)} categories, {len(shoppers)} shoppers "
        f"-> {args.out}"
    )


if __name__ == "__main__":
    main()
