"""The house-style set as the model is served it: each example's prompt rendered by the
project's own template through the same context the pipeline builds, and its copy as the
answer, written as the grammar writes it (compact JSON, the schema's field order).

Training on these rows teaches the prompts the model will be given, not a format of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from app.domain import Candidate, CandidateScores, Product, Shopper, Theme
from app.generation.schemas import SCHEMAS
from app.prompting.context import build_context
from app.prompting.templates import TemplateRegistry
from app.retrieval.themes import theme_why
from app.training.house_style import CategoryFile, Example, HouseStyleSet, Split

# The role of the copy in a chat: what the model writes.
ANSWER = "assistant"
# A stand-in for what the catalog gives and the templates never print.
_URL = "https://shop.example.com/p/{}"


@dataclass(frozen=True)
class TrainingRow:
    """One prompt and the copy it should get, with where it came from."""

    id: str
    template: str
    category: str
    split: Split
    messages: tuple[tuple[str, str], ...]  # the prompt, as the engine sends it
    answer: str  # the copy, as the grammar writes it

    def as_json(self) -> dict[str, Any]:
        """The row as a chat (TRL's conversational format) with its provenance."""
        chat = [{"role": role, "content": content} for role, content in self.messages]
        return {
            "id": self.id,
            "template": self.template,
            "category": self.category,
            "split": self.split,
            "messages": [*chat, {"role": ANSWER, "content": self.answer}],
        }


def answer_text(example: Example) -> str:
    """The copy as constrained decoding writes it: compact JSON, the schema's field order."""
    return json.dumps(example.output(), ensure_ascii=False, separators=(",", ":"))


def catalog_product(raw: Any, category: str) -> Product:
    """A product of the set as the catalog would hold it (no price: the set states none)."""
    return Product(
        id=raw.id,
        title=raw.title,
        description=raw.description,
        brand=raw.brand,
        category=category,
        tags=raw.tags,
        price=0.0,
        url=_URL.format(raw.id),
    )


def rows(
    found: HouseStyleSet,
    registry: TemplateRegistry,
    brand: dict[str, Any],
    *,
    with_examples: bool = True,
) -> Iterator[TrainingRow]:
    """Every example of ``found`` as a training row. ``brand``: the brand rules the prompts
    carry (each example's voice replaces its name and voice). ``with_examples``: whether the
    prompts show the templates' few-shot examples, as served today, or not (a model that has
    learnt the job needs none: shorter prompts, faster prefill)."""
    for path, category in sorted(found.categories.items()):
        for number, example in enumerate(category.examples, 1):
            row_id = f"{path.stem}-{number:03d}"
            yield _row(row_id, category, example, found, registry, brand, with_examples)


def _row(
    row_id: str,
    category: CategoryFile,
    example: Example,
    found: HouseStyleSet,
    registry: TemplateRegistry,
    brand: dict[str, Any],
    with_examples: bool,
) -> TrainingRow:
    products = {p.id: catalog_product(p, category.category) for p in category.products}
    template = registry.get(example.template)
    voice = found.voices[example.voice]
    shopper = Shopper(id="house-style", interests=example.interests)
    recent = [products[p] for p in example.recent]
    theme = None
    if template.header.retrieval.wants_theme:
        seen = [p.category for p in recent]
        theme = Theme(
            kind="category",
            name=category.category,
            why=theme_why(category.category, seen, shopper),
        )
    candidates = [
        Candidate(number=n, product=products[p], scores=CandidateScores(), source="semantic")
        for n, p in enumerate(example.shown, 1)
    ]
    context = build_context(
        shopper=shopper,
        recent_titles=[p.title for p in recent],
        candidates=candidates,
        brand=brand | {"name": voice.shop, "voice": voice.voice},
        placement=template.header.placement or example.template,
        spec=SCHEMAS[template.header.schema_name],
        anchor=products[example.anchor] if example.anchor else None,
        theme=theme,
    )
    prompt = template.render(context, with_examples=with_examples)
    return TrainingRow(
        id=row_id,
        template=example.template,
        category=category.category,
        split=category.split,
        messages=prompt.messages,
        answer=answer_text(example),
    )
