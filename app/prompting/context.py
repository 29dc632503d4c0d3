"""The data a template sees. Product and profile text is data, never instructions.

Every string that comes from the catalog or a shopper is cleaned here, once, before any
template can see it: control characters stripped, whitespace folded, angle brackets and
backticks removed (the prompt's blocks are delimited with tags), length capped.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from app.campaigns import Campaign
from app.domain import LOOKED_AT_LATELY, Candidate, Product, Shopper, Theme, close_to_interests
from app.generation.schemas import SchemaSpec
from app.locales import DEFAULT_LOCALE, CopyLocale, format_price

FIELD_CAPS = {
    "title": 120,
    "brand": 60,
    "category": 60,
    "description": 240,
    "tag": 40,
    "interest": 60,
    "name": 40,
    "segment": 40,
}
_DELIMITERS = re.compile(r"[<>`]")
_SPACES = re.compile(r"\s+")

# The variables a template may use; the pipeline always provides all of them (``anchor`` is
# None unless the template's retrieval focus is "anchor" and the shopper has viewed something).
CONTEXT_VARIABLES = frozenset(
    {
        "shopper",
        "candidates",
        "brand",
        "placement",
        "k",
        "limits",
        "anchor",
        "campaigns",
        "language",
        "theme",
    }
)


def clean(text: str, cap: int) -> str:
    """Printable, single-line, delimiter-free, at most ``cap`` characters."""
    kept = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
    kept = _SPACES.sub(" ", _DELIMITERS.sub("", kept)).strip()
    if len(kept) > cap:
        kept = kept[: cap - 1].rstrip() + "…"
    return kept


def candidate_context(candidate: Candidate, locale: str = DEFAULT_LOCALE) -> dict[str, Any]:
    """``locale``: the shopper's, which the price is written for ("1.234,50 €")."""
    product = candidate.product
    return {
        "number": candidate.number,
        "title": clean(product.title, FIELD_CAPS["title"]),
        "brand": clean(product.brand, FIELD_CAPS["brand"]),
        "category": clean(product.category, FIELD_CAPS["category"]),
        "price": format_price(product.price, product.currency, locale),
        "tags": [clean(tag, FIELD_CAPS["tag"]) for tag in product.tags[:8]],
        "description": clean(product.description, FIELD_CAPS["description"]),
    }


def anchor_context(anchor: Product | None) -> dict[str, str] | None:
    """The product a "because you viewed" section is about: named, never offered."""
    if anchor is None:
        return None
    return {
        "title": clean(anchor.title, FIELD_CAPS["title"]),
        "category": clean(anchor.category, FIELD_CAPS["category"]),
    }


def theme_context(theme: Theme | None) -> dict[str, str] | None:
    """What a themed set is about, and why this shopper gets it (catalog words: cleaned)."""
    if theme is None:
        return None
    return {
        "name": clean(theme.name, FIELD_CAPS["title"]),
        "kind": theme.kind,
        "why": clean(theme.why, FIELD_CAPS["title"]),
    }


def campaign_context(campaign: Campaign, candidates: list[Candidate]) -> dict[str, Any]:
    """A running campaign as the template sees it: what it is called, what it offers, and
    which of the numbered candidates it covers (the copy may only claim it for those)."""
    return {
        "name": clean(campaign.name, 60),
        "offer": clean(campaign.offer, 120),
        "discount_percent": campaign.discount_percent,
        "products": [c.number for c in candidates if campaign.covers(c.product)],
    }


def shopper_context(shopper: Shopper, recent_titles: list[str]) -> dict[str, Any]:
    return {
        "name": clean(shopper.name, FIELD_CAPS["name"]),
        "locale": shopper.locale,
        "segment": clean(shopper.segment, FIELD_CAPS["segment"]),
        "interests": [clean(i, FIELD_CAPS["interest"]) for i in shopper.interests[:8]],
        "recent": [clean(t, FIELD_CAPS["title"]) for t in recent_titles[:5]],
        "is_new": not shopper.history,
    }


def build_context(
    *,
    shopper: Shopper,
    recent_titles: list[str],
    candidates: list[Candidate],
    brand: dict[str, Any],
    placement: str,
    spec: SchemaSpec,
    anchor: Product | None = None,
    campaigns: Sequence[Campaign] = (),
    locale: CopyLocale | None = None,
    theme: Theme | None = None,
) -> dict[str, Any]:
    """``campaigns``: the running ones that cover a candidate (``CampaignBook.covering``).
    ``locale``: the copy's language (``language``, in English words: an instruction such as
    "Write in {{ language }}" needs it) and the shopper's price format."""
    locale = locale or CopyLocale(shopper.locale, DEFAULT_LOCALE, False)
    return {
        "shopper": shopper_context(shopper, recent_titles),
        "candidates": [candidate_context(c, locale.requested) for c in candidates],
        "brand": brand,
        "placement": clean(placement, 40),
        "k": len(candidates),
        "limits": spec.limits(),
        "anchor": anchor_context(anchor),
        "campaigns": [campaign_context(c, candidates) for c in campaigns],
        "language": locale.language,
        "theme": theme_context(theme),
    }


def example_context(
    *,
    interests: list[str],
    products: list[dict[str, str]],
    brand: dict[str, Any],
    placement: str,
    spec: SchemaSpec,
    viewed: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The same shape as ``build_context``, for a few-shot example written in a template."""
    return {
        "shopper": {
            "name": "",
            "locale": "en-US",
            "segment": "example",
            "interests": [clean(i, FIELD_CAPS["interest"]) for i in interests],
            "recent": [],
            "is_new": False,
        },
        "candidates": [
            {
                "number": number,
                "title": clean(p["title"], FIELD_CAPS["title"]),
                "brand": clean(p.get("brand", ""), FIELD_CAPS["brand"]),
                "category": clean(p["category"], FIELD_CAPS["category"]),
                "price": "",
                "tags": [],
                "description": clean(p.get("description", ""), FIELD_CAPS["description"]),
            }
            for number, p in enumerate(products, 1)
        ],
        "brand": brand,
        "placement": clean(placement, 40),
        "k": len(products),
        "limits": spec.limits(),
        "anchor": None
        if viewed is None
        else {
            "title": clean(viewed["title"], FIELD_CAPS["title"]),
            "category": clean(viewed["category"], FIELD_CAPS["category"]),
        },
        "campaigns": [],  # an example shows copy without one: no sale is claimed by habit
        "language": "English",
        "theme": _example_theme(interests, products),
    }


def _example_theme(interests: list[str], products: list[dict[str, str]]) -> dict[str, str]:
    """An example's theme, for a themed template: its products' commonest category."""
    categories = [p["category"] for p in products]
    name = max(categories, key=categories.count) if categories else ""
    why = close_to_interests(interests) if interests else LOOKED_AT_LATELY
    return {
        "name": clean(name, FIELD_CAPS["title"]),
        "kind": "category",
        "why": clean(why, FIELD_CAPS["title"]),
    }
