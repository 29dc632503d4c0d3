"""The safety net after generation: parse, resolve products, and refuse invented claims.

A 135M model copies its examples and invents discounts. Constrained decoding guarantees the
shape; these checks guard the content. A failed check means a retry, and after the retries a
deterministic fallback built from catalog facts (flagged as such), never an invented claim.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError

from app.domain import Candidate
from app.generation.schemas import BannerCopy, SchemaSpec
from app.prompting.templates import RenderedPrompt

_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
_WORD = re.compile(r"[\w'’-]+")
# Offers the catalog would have to state for the copy to claim them.
_OFFER = re.compile(
    r"\b(sale|on sale|discount(?:ed|s)?|clearance|bogo|deals?|coupon|promo(?: code)?|"
    r"free (?:shipping|delivery|returns|gift)|half (?:off|price)|limited time|today only)\b",
    re.IGNORECASE,
)
# Prompt scaffolding that has no place in customer-facing copy.
_LEAKS = re.compile(
    r"[<>{}\[\]`]|\b(?:headline|subheadline|cta|json|candidates?)\b|"
    r"\bproducts? (?:list|numbers?)\b",
    re.IGNORECASE,
)
TEXT_FIELDS = ("headline", "subheadline", "cta", "badge")


def _canonical_number(token: str) -> str | None:
    try:
        value = Decimal(token.replace(",", ""))
    except InvalidOperation:
        return None
    return format(value.normalize(), "f")


def numbers_in(text: str) -> set[str]:
    """Every number in a text, canonical (``1,299.00`` and ``1299`` are the same number)."""
    found = (_canonical_number(token) for token in _NUMBER.findall(text))
    return {number for number in found if number is not None}


def candidate_facts(candidates: Iterable[Candidate]) -> tuple[set[str], str]:
    """Numbers the catalog states about these candidates, and their text (for offer words)."""
    numbers: set[str] = set()
    texts: list[str] = []
    for candidate in candidates:
        product = candidate.product
        text = " ".join([product.title, product.description, product.brand, *product.tags])
        texts.append(text)
        numbers |= numbers_in(text)
        numbers |= numbers_in(f"{product.price:.2f}")
    return numbers, " ".join(texts).casefold()


def _normalised(text: str) -> str:
    return " ".join(_WORD.findall(text.casefold()))


def _degenerate(text: str) -> str | None:
    words = _WORD.findall(text.casefold())
    for first, second, third in zip(words, words[1:], words[2:], strict=False):
        if first == second == third:
            return f"word repeated: '{first}'"
    trigrams = Counter(zip(words, words[1:], words[2:], strict=False))
    repeated = [gram for gram, count in trigrams.items() if count > 1]
    if repeated:
        return f"phrase repeated: '{' '.join(repeated[0])}'"
    if len(words) >= 8 and len(set(words)) / len(words) < 0.5:
        return "too few distinct words"
    if re.search(r"(.)\1{4,}", text):
        return "character run"
    return None


@dataclass
class GuardResult:
    copy: BannerCopy | None
    products: list[Candidate] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.copy is not None and not self.problems


class Guards:
    def __init__(self, banned_terms: Iterable[str]) -> None:
        terms = sorted(
            {t.strip().casefold() for t in banned_terms if t.strip()}, key=len, reverse=True
        )
        self._banned = (
            re.compile(r"\b(" + "|".join(re.escape(t) for t in terms) + r")\b", re.IGNORECASE)
            if terms
            else None
        )

    def check(
        self,
        text: str,
        schema: type[BannerCopy],
        spec: SchemaSpec,
        candidates: list[Candidate],
        examples: list[dict[str, Any]],
        prompt: RenderedPrompt | None = None,
    ) -> GuardResult:
        try:
            copy = schema.model_validate_json(text)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "output"
            return GuardResult(None, problems=[f"invalid_output: {where}: {first['msg']}"])

        problems: list[str] = []
        products = self._resolve(copy, candidates, spec, problems)
        fields = {name: getattr(copy, name) for name in TEXT_FIELDS if getattr(copy, name)}
        self._check_claims(fields, candidates, problems)
        self._check_form(fields, spec, problems)
        self._check_examples(fields, examples, problems)
        if prompt is not None:
            self._check_echo(fields, prompt, problems)
        if self._banned is not None:
            for name, value in fields.items():
                hit = self._banned.search(value)
                if hit:
                    problems.append(f"banned_term: {name}: '{hit.group(0)}'")
        return GuardResult(copy, products, problems)

    @staticmethod
    def _resolve(
        copy: BannerCopy, candidates: list[Candidate], spec: SchemaSpec, problems: list[str]
    ) -> list[Candidate]:
        by_number = {candidate.number: candidate for candidate in candidates}
        resolved: list[Candidate] = []
        for number in copy.products:
            candidate = by_number.get(number)
            if candidate is None:
                problems.append(f"unknown_product: {number} was not offered")
            elif candidate not in resolved:  # a repeated number is shown once
                resolved.append(candidate)
        if len(resolved) < spec.min_products:
            problems.append(f"too_few_products: {len(resolved)} distinct, need {spec.min_products}")
        return resolved

    @staticmethod
    def _check_claims(
        fields: dict[str, str], candidates: list[Candidate], problems: list[str]
    ) -> None:
        numbers, fact_text = candidate_facts(candidates)
        for name, value in fields.items():
            for number in sorted(numbers_in(value) - numbers):
                problems.append(f"invented_number: {name}: '{number}' is not in the catalog")
            for match in _OFFER.finditer(value):
                if match.group(0).casefold() not in fact_text:
                    problems.append(f"invented_offer: {name}: '{match.group(0)}'")

    @staticmethod
    def _check_form(fields: dict[str, str], spec: SchemaSpec, problems: list[str]) -> None:
        limits = spec.limits()
        for name, value in fields.items():
            stripped = value.strip()
            if not stripped or not any(ch.isalnum() for ch in stripped):
                problems.append(f"empty: {name}")
                continue
            # Text that fills its cap exactly was cut there by the grammar, mid-thought.
            if len(value) >= limits[name] and value[-1].isalnum():
                problems.append(f"cut_at_limit: {name}")
            reason = _degenerate(value)
            if reason:
                problems.append(f"degenerate: {name}: {reason}")
            leak = _LEAKS.search(value)
            if leak:
                problems.append(f"prompt_leak: {name}: '{leak.group(0)}'")
        headline, subheadline = fields.get("headline"), fields.get("subheadline")
        if headline and subheadline and _normalised(headline) == _normalised(subheadline):
            problems.append("degenerate: subheadline repeats the headline")

    @staticmethod
    def _check_echo(fields: dict[str, str], prompt: RenderedPrompt, problems: list[str]) -> None:
        """Copy that repeats the instructions ("A short line about...") is not copy."""
        instructions = instruction_text(prompt)
        for name, value in fields.items():
            words = _normalised(value)
            if len(words.split()) >= 3 and words in instructions:
                problems.append(f"prompt_echo: {name}")

    @staticmethod
    def _check_examples(
        fields: dict[str, str], examples: list[dict[str, Any]], problems: list[str]
    ) -> None:
        for example in examples:
            for name in ("headline", "subheadline"):
                given, shown = fields.get(name), example.get(name)
                if given and isinstance(shown, str) and _normalised(given) == _normalised(shown):
                    problems.append(f"copied_example: {name}")


_DATA_BLOCK = re.compile(r"<(\w+)>.*?</\1>", re.DOTALL)


def instruction_text(prompt: RenderedPrompt) -> str:
    """The prompt's own words: system and user turns without the delimited data blocks."""
    parts = [content for role, content in prompt.messages if role != "assistant"]
    return _normalised(_DATA_BLOCK.sub(" ", "\n".join(parts)))


def _fit(text: str, limit: int) -> str:
    """Cut at a word boundary to fit ``limit`` characters."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(" ,;:-")
    return cut + "…"


def fallback_copy(
    candidates: list[Candidate], spec: SchemaSpec, personal: bool
) -> tuple[dict[str, Any], list[Candidate]]:
    """A plain banner from catalog facts only: the answer when the model's copy is refused."""
    chosen = candidates[: max(spec.min_products, min(3, spec.max_products))]
    category = Counter(c.product.category for c in chosen).most_common(1)[0][0]
    headline = f"Picked for you: {category}" if personal else f"Popular in {category}"
    titles = [c.product.title for c in chosen[:2]]
    subheadline = " and ".join(titles) + (
        ", chosen for you." if personal else ", loved by shoppers."
    )
    copy = {
        "headline": _fit(headline, spec.headline_max),
        "subheadline": _fit(subheadline, spec.subheadline_max),
        "cta": _fit("Shop now", spec.cta_max),
        "layout": spec.layouts[0],
        "tone": "practical",
        "badge": None,
        "products": [c.number for c in chosen],
    }
    return copy, chosen
