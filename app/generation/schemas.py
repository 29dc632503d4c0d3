"""Output schemas: what the model must write, as Pydantic models Outlines compiles to a grammar.

Products are named by their candidate number (1..K), never by id: the schema is the same for
every request of a template (so its grammar compiles once), and the model cannot name a product
that was not offered. Every string has a maxLength and every array a maxItems: without them a
small model can loop inside a string until the token budget runs out and the JSON is cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

Tone = Literal["warm", "playful", "premium", "practical", "urgent"]


class BannerCopy(BaseModel):
    """The fields every schema has; the per-template subclasses add the limits."""

    model_config = ConfigDict(extra="forbid")

    headline: str
    subheadline: str
    cta: str
    layout: str
    tone: Tone
    badge: str | None = None
    products: list[int]


@dataclass(frozen=True)
class SchemaSpec:
    name: str
    description: str
    headline_max: int
    subheadline_max: int
    cta_max: int
    badge_max: int
    layouts: tuple[str, ...]
    min_products: int
    max_products: int

    def limits(self) -> dict[str, int]:
        return {
            "headline": self.headline_max,
            "subheadline": self.subheadline_max,
            "cta": self.cta_max,
            "badge": self.badge_max,
            "min_products": self.min_products,
            "max_products": self.max_products,
        }


SCHEMAS: dict[str, SchemaSpec] = {
    spec.name: spec
    for spec in (
        SchemaSpec(
            "banner",
            "A hero banner: headline, supporting line, call to action.",
            60,
            120,
            24,
            20,
            ("hero", "split", "grid", "carousel"),
            1,
            4,
        ),
        SchemaSpec(
            "grid_heading",
            "The heading over a grid of products.",
            48,
            100,
            20,
            20,
            ("grid", "carousel"),
            2,
            6,
        ),
        SchemaSpec(
            "spotlight",
            "A category spotlight: one theme, a few products.",
            60,
            140,
            24,
            20,
            ("hero", "split"),
            1,
            3,
        ),
    )
}


class UnknownSchemaError(KeyError):
    pass


def _text(max_length: int) -> Any:
    return Annotated[str, Field(min_length=1, max_length=max_length)]


@lru_cache(maxsize=64)
def output_model(schema: str, k: int) -> type[BannerCopy]:
    """The schema ``schema`` for ``k`` candidates, built once and reused (grammar cache key)."""
    spec = SCHEMAS.get(schema)
    if spec is None:
        raise UnknownSchemaError(f"unknown schema '{schema}' (known: {', '.join(SCHEMAS)})")
    if k < spec.min_products:
        raise ValueError(f"schema '{schema}' needs at least {spec.min_products} candidates")
    # Literal types built at run time: the allowed numbers and layouts become JSON enums.
    number: Any = Literal.__getitem__(tuple(range(1, k + 1)))
    layout: Any = Literal.__getitem__(spec.layouts)
    model: type[BannerCopy] = create_model(
        f"{spec.name.title().replace('_', '')}K{k}",
        __base__=BannerCopy,
        __doc__=spec.description,
        headline=(_text(spec.headline_max), ...),
        subheadline=(_text(spec.subheadline_max), ...),
        cta=(_text(spec.cta_max), ...),
        layout=(layout, ...),
        tone=(Tone, ...),
        badge=(Annotated[str | None, Field(max_length=spec.badge_max)], None),
        products=(
            list[number],
            Field(
                min_length=spec.min_products,
                max_length=spec.max_products,
            ),
        ),
    )
    return model
