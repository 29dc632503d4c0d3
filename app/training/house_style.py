"""The house-style training set: banner copy written to the style guide, for categories the
demo catalog and the eval datasets never name.

One YAML file a category under ``data/house_style/categories/``: its products and its
examples. An example says which template it answers, the shopper's interests and recent
views, which products the prompt shows (numbered 1..n in that order), the brand voice, and
the copy a marketer would publish. The prompt itself is rendered from the project's own
templates when the set is built for training, so the model learns the prompts it is served.

``check`` holds every example to what serving holds copy to (the schema with its grammar's
patterns and the rubric, with no finding at all) and the set to its promise: nothing of the
demo catalog or the eval datasets in it, so every eval measures what the model learned and
not what it memorised. Run it as ``python -m app.training.house_style [FILE ...]``.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app import rubric
from app.generation.schemas import SCHEMAS, BannerCopy, copy_error, output_model

Split = Literal["train", "held_out"]

# The templates an example may answer, and the schema each one's copy follows
# (prompts/<template>.j2 ``schema``; tests/test_house_style.py checks they agree).
TEMPLATE_SCHEMAS: dict[str, str] = {
    "hero_banner": "banner",
    "grid_heading": "grid_heading",
    "because_you_viewed": "grid_heading",
    "new_arrivals": "grid_heading",
    "category_spotlight": "spotlight",
    "brand_showcase": "spotlight",
    "back_in_stock": "spotlight",
}
# How many products each template's prompt lists at most (its ``k``).
TEMPLATE_K: dict[str, int] = {
    "hero_banner": 6,
    "grid_heading": 8,
    "because_you_viewed": 6,
    "new_arrivals": 6,
    "category_spotlight": 6,
    "brand_showcase": 5,
    "back_in_stock": 3,
}

# Names the set must never hold: the eval datasets' categories beyond the demo catalog's
# (which are read from data/products.jsonl). The clothing set's class, department and
# division names and MovieLens's genres, as eval/datasets.py reads them.
EVAL_CATEGORY_NAMES: tuple[str, ...] = (
    # clothing: classes
    "Blouses", "Casual bottoms", "Chemises", "Dresses", "Fine gauge", "Intimates", "Jackets",
    "Jeans", "Knits", "Layering", "Legwear", "Lounge", "Outerwear", "Pants", "Shorts",
    "Skirts", "Sleep", "Sweaters", "Swim", "Trend",
    # clothing: departments and divisions
    "Bottoms", "Intimate", "Tops", "General", "General Petite", "Initmates",
    # MovieLens genres
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip

MIN_EXAMPLES = 2000
MIN_TRAIN_CATEGORIES = 40


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Product(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9]*-[0-9]{2,3}$")
    title: str = Field(min_length=3, max_length=120)
    brand: str = Field(min_length=2, max_length=40)
    description: str = Field(min_length=10, max_length=300)
    tags: tuple[str, ...] = Field(default=(), max_length=8)
    # What the shopper's catalog says of it, and the copy may say too: nothing else.
    category: str = ""


class Example(_Strict):
    template: str
    voice: str
    interests: tuple[str, ...] = Field(default=(), max_length=6)
    recent: tuple[str, ...] = Field(default=(), max_length=3)
    anchor: str | None = None
    shown: tuple[str, ...] = Field(min_length=1, max_length=8)
    headline: str
    subheadline: str
    cta: str
    layout: str
    tone: str
    products: tuple[int, ...]

    def output(self) -> dict[str, object]:
        """The copy as the model writes it: the schema's JSON object."""
        return {
            "headline": self.headline,
            "subheadline": self.subheadline,
            "cta": self.cta,
            "layout": self.layout,
            "tone": self.tone,
            "products": list(self.products),
        }


class CategoryFile(_Strict):
    category: str = Field(min_length=3, max_length=60)
    split: Split = "train"
    products: tuple[Product, ...] = Field(min_length=6)
    examples: tuple[Example, ...] = ()


class Voice(_Strict):
    shop: str = Field(min_length=2, max_length=40)
    voice: str = Field(min_length=10, max_length=200)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the set: where, and what, in words its writer can act on."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class HouseStyleSet:
    folder: Path
    voices: dict[str, Voice]
    categories: dict[Path, CategoryFile] = field(default_factory=dict)

    @property
    def examples(self) -> int:
        return sum(len(c.examples) for c in self.categories.values())

    def split(self, split: Split) -> list[CategoryFile]:
        return [c for c in self.categories.values() if c.split == split]


def load(folder: Path, files: Sequence[Path] = ()) -> tuple[HouseStyleSet, list[Problem]]:
    """The set in ``folder`` (its voices and every category file, or only ``files``), with
    the problems of files that do not parse."""
    problems: list[Problem] = []
    voices: dict[str, Voice] = {}
    try:
        raw = yaml.safe_load((folder / "voices.yaml").read_text(encoding="utf-8")) or {}
        voices = {str(k): Voice.model_validate(v) for k, v in raw.items()}
    except (OSError, yaml.YAMLError, ValidationError, AttributeError) as error:
        problems.append(Problem("voices.yaml", _short(error)))
    chosen = list(files) or sorted((folder / "categories").glob("*.yaml"))
    found = HouseStyleSet(folder, voices)
    for path in chosen:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            found.categories[path] = CategoryFile.model_validate(data)
        except (OSError, yaml.YAMLError) as error:
            problems.append(Problem(path.name, _short(error)))
        except ValidationError as error:
            for e in error.errors()[:10]:
                where = ".".join(str(p) for p in e["loc"])
                problems.append(Problem(f"{path.name}: {where}", e["msg"]))
    return found, problems


def _short(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]


@dataclass(frozen=True)
class Forbidden:
    """What the set may never name: the demo catalog's products, brands and categories, and
    the eval datasets' categories."""

    categories: frozenset[str]
    titles: frozenset[str]
    brands: frozenset[str]

    @classmethod
    def from_catalog(cls, products_jsonl: Path) -> Forbidden:
        rows = [json.loads(line) for line in products_jsonl.read_text().splitlines() if line]
        return cls(
            categories=frozenset(
                _norm(n) for n in [*EVAL_CATEGORY_NAMES, *(r["category"] for r in rows)]
            ),
            titles=frozenset(_norm(r["title"]) for r in rows),
            brands=frozenset(_norm(r["brand"]) for r in rows),
        )

    def brand_in(self, text: str) -> str | None:
        """A demo brand named in ``text``, if any."""
        said = f" {_norm(text)} "
        return next((b for b in sorted(self.brands) if f" {b} " in said), None)


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[\w']+", text.casefold().replace("&", " and ")))


def check(found: HouseStyleSet, forbidden: Forbidden, *, whole: bool = True) -> list[Problem]:
    """Every problem of the set: each example against the schema and the rubric, each file
    against the forbidden names, and (``whole``) the set against its size promises."""
    problems: list[Problem] = []
    ids: Counter[str] = Counter()
    copies: dict[tuple[str, str], str] = {}
    for path, category in found.categories.items():
        problems.extend(_check_file(path.name, category, found.voices, forbidden))
        ids.update(p.id for p in category.products)
        for number, example in enumerate(category.examples, 1):
            key = (_norm(example.headline), _norm(example.subheadline))
            where = f"{path.name}: example {number}"
            if key in copies:
                problems.append(Problem(where, f"the same copy as {copies[key]}"))
            copies.setdefault(key, where)
    problems.extend(
        Problem("set", f"product id {pid} is used in {n} files") for pid, n in ids.items() if n > 1
    )
    names = Counter(_norm(c.category) for c in found.categories.values())
    problems.extend(
        Problem("set", f"category '{name}' has {n} files") for name, n in names.items() if n > 1
    )
    if whole:
        train = found.split("train")
        if len(train) < MIN_TRAIN_CATEGORIES:
            problems.append(
                Problem("set", f"{len(train)} training categories, {MIN_TRAIN_CATEGORIES} needed")
            )
        if not found.split("held_out"):
            problems.append(Problem("set", "no held-out category: the gate needs one"))
        if found.examples < MIN_EXAMPLES:
            problems.append(Problem("set", f"{found.examples} examples, {MIN_EXAMPLES} needed"))
    return problems


def _check_file(
    name: str, category: CategoryFile, voices: dict[str, Voice], forbidden: Forbidden
) -> list[Problem]:
    problems: list[Problem] = []
    if _norm(category.category) in forbidden.categories:
        problems.append(Problem(name, f"category '{category.category}' is an eval category"))
    products = {p.id: p for p in category.products}
    if len(products) != len(category.products):
        problems.append(Problem(name, "two products share an id"))
    for product in category.products:
        where = f"{name}: product {product.id}"
        if product.category and product.category != category.category:
            problems.append(Problem(where, "its category is not the file's"))
        if _norm(product.title) in forbidden.titles:
            problems.append(Problem(where, "a demo catalog product"))
        if _norm(product.brand) in forbidden.brands:
            problems.append(Problem(where, f"brand '{product.brand}' is a demo brand"))
        if (brand := forbidden.brand_in(f"{product.title} {product.description}")) is not None:
            problems.append(Problem(where, f"names the demo brand '{brand}'"))
        if re.search(r"[0-9%$€£]", product.description):
            # The copy may not say a number, and a fact it may not say only teaches invention.
            problems.append(Problem(where, "a number in the description"))
    brands = {p.brand for p in category.products}
    for number, example in enumerate(category.examples, 1):
        where = f"{name}: example {number}"
        problems.extend(
            Problem(where, message)
            for message in _check_example(example, category, products, brands, voices, forbidden)
        )
    return problems


def _check_example(
    example: Example,
    category: CategoryFile,
    products: dict[str, Product],
    brands: set[str],
    voices: dict[str, Voice],
    forbidden: Forbidden,
) -> Iterable[str]:
    if example.template not in TEMPLATE_SCHEMAS:
        yield f"unknown template '{example.template}' (one of {', '.join(TEMPLATE_SCHEMAS)})"
        return
    if example.voice not in voices:
        yield f"unknown voice '{example.voice}' (one of {', '.join(voices)})"
    missing = [p for p in (*example.shown, *example.recent) if p not in products]
    if example.anchor is not None and example.anchor not in products:
        missing.append(example.anchor)
    if missing:
        yield f"products not in this file: {', '.join(missing)}"
        return
    if len(set(example.shown)) != len(example.shown):
        yield "a product is shown twice"
    k = TEMPLATE_K[example.template]
    if len(example.shown) > k:
        yield f"{len(example.shown)} products shown, {example.template} lists {k} at most"
    if example.anchor is not None and example.template != "because_you_viewed":
        yield "only because_you_viewed has an anchor"
    schema = TEMPLATE_SCHEMAS[example.template]
    model = schema_for(example)
    try:
        model.model_validate(example.output())
    except ValidationError as error:
        yield f"does not fit the schema '{schema}': {copy_error(error)}"
        return
    shown = [products[p] for p in example.shown]
    chosen = [shown[n - 1] for n in example.products]
    spec = SCHEMAS[schema]
    if not spec.min_products <= len(chosen) <= spec.max_products:
        yield f"{len(chosen)} products chosen, {spec.min_products}..{spec.max_products} allowed"
    if len(set(example.products)) != len(example.products):
        yield "a product is chosen twice"
    # What the looked-at product says is a fact too: the copy goes with it.
    anchor = [products[example.anchor]] if example.anchor else []
    facts = [AsShown(p, category.category) for p in [*chosen, *anchor]]
    for finding in review(example.headline, example.subheadline, example.cta, facts, category):
        yield f"rubric: {finding}"
    copy = f"{example.headline} {example.subheadline} {example.cta}"
    if (brand := forbidden.brand_in(copy)) is not None:
        yield f"names the demo brand '{brand}'"
    others = [b for b in brands - {p.brand for p in chosen} if _norm(b) in _norm(copy).split()]
    if others:
        yield f"names a brand it does not show: {', '.join(sorted(others))}"
    if example.template == "brand_showcase":
        named = {p.brand for p in shown}
        if len(named) != 1:
            yield "a brand showcase shows one brand's products"
        elif not any(_norm(b) in _norm(example.headline) for b in named):
            yield "a brand showcase's headline names the brand"


def schema_for(example: Example) -> type[BannerCopy]:
    """The schema the answer to ``example``'s prompt is written in, as served: its template's,
    for the products it shows, with the grammar's verbs."""
    schema = TEMPLATE_SCHEMAS[example.template]
    return output_model(schema, len(example.shown), False, rubric.GRAMMAR_CTA_VERBS)


def review(
    headline: str, subheadline: str, cta: str, facts: Sequence[AsShown], category: CategoryFile
) -> list[rubric.Finding]:
    """The rubric's findings on copy about ``facts``, a banner themed on the file's category:
    what the checker holds the set's copy to and the gate a model's answers."""
    name = category.category
    return rubric.review(headline, subheadline, cta, facts, theme=name, categories=[name])


@dataclass(frozen=True)
class AsShown:
    """A product of the set as the rubric reads it (its category is the file's)."""

    product: Product
    category: str

    @property
    def title(self) -> str:
        return self.product.title

    @property
    def description(self) -> str:
        return self.product.description


def main(argv: Sequence[str] | None = None) -> int:
    """Check the set (or the files named) and print every problem; 1 when there are any."""
    from app.config import PROJECT_ROOT

    files = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    found, problems = load(PROJECT_ROOT / "data" / "house_style", files)
    forbidden = Forbidden.from_catalog(PROJECT_ROOT / "data" / "products.jsonl")
    problems += check(found, forbidden, whole=not files)
    for problem in problems:
        print(problem)
    print(
        f"{len(found.categories)} files, {found.examples} examples, {len(problems)} problems",
        file=sys.stderr,
    )
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
