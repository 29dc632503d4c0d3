"""The safety net after generation: parse, resolve products, and refuse invented claims.

A 135M model copies its examples and invents discounts. Constrained decoding guarantees the
shape; these checks guard the content. A failed check means a retry, and after the retries a
deterministic fallback built from catalog facts (flagged as such), never an invented claim.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from app.campaigns import NO_CAMPAIGNS, Campaign, CampaignBook
from app.domain import Candidate
from app.generation.schemas import BannerCopy, SchemaSpec, copy_error, copy_pattern
from app.locales import DEFAULT_LOCALE, language_of, numbers_in
from app.prompting.templates import RenderedPrompt
from app.rubric import DEFAULT_RULES, RubricRules, is_word, review

_WORD = re.compile(r"[\w'’-]+")
# Offers the catalog would have to state for the copy to claim them.
# ("deal with spills" and "deals out cards" are verbs, a bake sale is no offer: not these.)
_OFFER = re.compile(
    r"(?<!bake )(?<!yard )(?<!garage )\b(sale|on sale|discount(?:ed|s)?|clearance|bogo|"
    r"deals?(?! (?:with|out)\b)|coupon|promo(?: code)?|"
    r"free (?:shipping|delivery|returns|gift)|half (?:off|price)|limited time|today only)\b",
    re.IGNORECASE,
)
# Our own prompt's scaffolding (its delimiters, field names and wording, a theme's "why"):
# never copy, and stricter than ``suspicious_text`` because catalog titles may use brackets
# ("[2-Pack]").
_LEAKS = re.compile(
    r"[<>{}\[\]`]|\b(?:headline|subheadline|cta|json|candidates?)\b|"
    r"\bproducts? (?:list|numbers?)\b|\bwhat they look(?:ed)? at\b|\bclose to their stated\b",
    re.IGNORECASE,
)
TEXT_FIELDS = ("headline", "subheadline", "cta", "badge")
# Words no finished phrase ends on: copy stopped by a length or word cap mid-thought ("Gear
# up for", "Shop the best of the") ends with one. ("in", "on", "up" end phrases: "Dive in".)
# A headline or subheadline may end on a preposition or a pointing word, as English does
# ("Ice worth waiting for", "Loved the steamers? Try these"): there only the words no
# sentence ends on count. A call to action is capped in words, so a cut one ends on any.
_NEVER_LAST = frozenset(
    {"a", "an", "the", "and", "or", "but", "nor", "than", "your", "our", "my", "their", "its"}
)
_PREPOSITIONS = frozenset({"of", "for", "to", "with", "from", "by", "as"})
_DANGLING = _NEVER_LAST | _PREPOSITIONS | {"this", "these", "those", "that"}

# What must never reach a shopper or a prompt unflagged, whoever wrote it (catalog or model).
# Checked in this order; each match is cut out (as a line break: it was a boundary) before the
# next family looks, so ``<s>`` is reported once, as a token, and a role after a removed token
# still starts its line.
_SUSPICIOUS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # Chat-template and special tokens: a model reads them as turn boundaries, not as text.
    (
        "special_token",
        re.compile(
            r"<[|｜](?:[^<>]{0,40}>)?|\[/?INST\]|<</?SYS>>|"
            r"</?(?:s|bos|eos|unk|pad|start_of_turn|end_of_turn)>|"
            r"#{2,}\s*(?:instruction|response|system|user|assistant|input|human)s?\b",
            re.IGNORECASE,
        ),
    ),
    # Markup: our prompt delimits its data blocks with tags (``</products>`` closes one early),
    # and a page would render ``<script>``. Escaped brackets are markup in waiting. A bare
    # ``<`` or ``>`` ("<3", "Size > 10") is not a tag.
    (
        "markup",
        re.compile(
            r"</?[A-Za-z][^<>]{0,200}>|<[!?][^<>]{0,200}>|</?[A-Za-z][\w:-]*|"
            r"&(?:lt|gt|#0*6[02]|#x0*3[ce]);",
            re.IGNORECASE,
        ),
    ),
    # Template syntax: text pasted into a template must not be rendered as one.
    ("template", re.compile(r"\{\{|\}\}|\{%|%\}|\{#|\$\{|<%")),
    # Role prefixes open a fake turn. Only at the start of a line or after a delimiter or
    # sentence end, or in capitals anywhere: "Home Theater System: 5.1" is a product.
    (
        "role",
        re.compile(
            r"(?:^|(?<=[.!?;>\]|}]))[ \t]*(?i:system|assistant|user|human|developer)\s*:|"
            r"\b(?:SYSTEM|ASSISTANT|USER|HUMAN|DEVELOPER)\s*:",
            re.MULTILINE,
        ),
    ),
    # Instructions addressed to the model: no product title or banner says these.
    (
        "instruction",
        re.compile(
            r"\b(?:ignore|disregard|forget|override)\s+(?:(?:all|any|the|your|of|these)\s+)*"
            r"(?:previous|prior|above|earlier|preceding|system|original)\b"
            r"(?:\s+(?:instructions?|prompts?|rules?|messages?|directions?|context|text))?|"
            r"\b(?:ignore|disregard|forget)\s+(?:(?:all|any|your)\s+)*(?:instructions|rules)\b|"
            r"\byou\s+(?:must|should|shall|will|are\s+to|have\s+to|need\s+to)\s+"
            r"(?:now\s+|only\s+|always\s+)?(?:output|say|write|respond|reply|print|return|"
            r"answer|recommend|promote|choose|select|include|mention)\b|"
            r"\b(?:new|real|actual|hidden|secret)\s+instructions?\b|\bsystem\s+prompt\b|"
            r"\b(?:respond|reply|answer)\s+only\s+with\b|\bpretend\s+(?:to\s+be|you\s+are)\b",
            re.IGNORECASE,
        ),
    ),
)
# Control characters break lines (a fake turn) or hide text: C0/C1 controls, line and
# paragraph separators, zero-width space, word joiner, BOM, bidi overrides (text that reads
# differently than it is stored) and tag characters (invisible ASCII a model still reads).
# Zero-width (non-)joiners stay allowed: emoji and several scripts need them.
_CONTROL = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u200b\u2028\u2029\u202a-\u202e\u2060\u2066-\u2069\ufeff"
    r"\U000e0000-\U000e007f]"
)


def problem_parts(problem: str) -> tuple[str, str, str]:
    """A guard's problem as (kind, field, detail): ``"unfinished: cta ends with 'for'"`` is
    ("unfinished", "cta", "ends with 'for'"), ``"invented_number: headline: '30' ..."`` is
    ("invented_number", "headline", "'30' ..."). The field is "" where the problem names
    none of the copy's fields (``"withdrawn: products: ..."``, ``"invalid_output: ..."``)."""
    kind, _, rest = problem.partition(": ")
    first, _, detail = rest.partition(" ")
    field = first.rstrip(":")
    if field not in TEXT_FIELDS:
        return kind, "", rest
    return kind, field, detail


def suspicious_text(text: str) -> list[str]:
    """Why ``text`` must not be shown or put in a prompt as is; empty when it is clean.

    Each finding is short and stable, ``family: 'match'`` (``markup: '</products>'``) or
    ``control: U+202E``, in the order found, each once.
    """
    findings = [f"control: U+{ord(ch):04X}" for ch in _CONTROL.findall(text)]
    for family, pattern in _SUSPICIOUS:
        for match in pattern.finditer(text):
            shown = " ".join(match.group(0).split())
            findings.append(f"{family}: '{shown[:40]}'")
        text = pattern.sub("\n", text)
    return list(dict.fromkeys(findings))


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


# A run of this many words shared with the template's examples or instructions is a soft
# finding: copy leaning on the prompt's own phrasing ("gear up for", "for your next").
SHARED_RUN = 3
# A run this long shared with the examples or the instructions is borrowed, not written: the
# copy is refused (MARQUEE_BORROWED_RUN; 0: only the soft finding above).
BORROWED_RUN = 4


@dataclass
class GuardResult:
    copy: BannerCopy | None
    products: list[Candidate] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # any one refuses the copy
    # Soft findings: the copy may be served, but a best-of-n choice prefers one without them.
    notes: list[str] = field(default_factory=list)
    campaigns: list[Campaign] = field(default_factory=list)  # running ones the copy names

    @property
    def ok(self) -> bool:
        return self.copy is not None and not self.problems


def _terms_pattern(terms: Iterable[str]) -> re.Pattern[str] | None:
    words = sorted({t.strip().casefold() for t in terms if t.strip()}, key=len, reverse=True)
    if not words:
        return None
    return re.compile(r"\b(" + "|".join(re.escape(t) for t in words) + r")\b", re.IGNORECASE)


class Guards:
    def __init__(
        self,
        banned_terms: Iterable[str],
        banned_by_language: Mapping[str, Iterable[str]] | None = None,
        borrowed_run: int = BORROWED_RUN,
    ) -> None:
        """``banned_by_language``: more terms for copy in one language ("de": [...]), on top
        of ``banned_terms``, which hold in every language. ``borrowed_run``: copy sharing a
        run of this many words with the template's examples or instructions is refused (0:
        never)."""
        self.borrowed_run = borrowed_run
        common = list(banned_terms)
        self._banned = _terms_pattern(common)
        self._banned_in = {
            language_of(language): _terms_pattern([*common, *terms])
            for language, terms in (banned_by_language or {}).items()
        }

    def banned_term(self, value: str, locale: str = DEFAULT_LOCALE) -> str | None:
        """The first banned term in ``value``, as written there (None: none is)."""
        banned = self._banned_in.get(language_of(locale), self._banned)
        hit = banned.search(value) if banned is not None else None
        return hit.group(0) if hit else None

    def check(
        self,
        text: str,
        schema: type[BannerCopy],
        spec: SchemaSpec,
        candidates: list[Candidate],
        examples: list[dict[str, Any]],
        prompt: RenderedPrompt | None = None,
        campaigns: CampaignBook = NO_CAMPAIGNS,
        now: datetime | None = None,
        locale: str = DEFAULT_LOCALE,
        *,
        rules: RubricRules = DEFAULT_RULES,
        theme: str | None = None,
    ) -> GuardResult:
        """``campaigns``: every campaign the store knows. A running one that covers a shown
        product lends the copy its name, discount and offer words; naming any other (ended,
        not started, or about other products) is refused. ``locale``: the copy's (its number
        format: ``1.234,50`` in de-DE; its language's banned terms). ``rules``: the
        template's and brand's publishability rules (app/rubric.py): its hard findings refuse
        the copy, its soft ones go with it to best-of-n; ``theme``: a themed set's name (a
        headline that is only that name is bare)."""
        try:
            copy = schema.model_validate_json(text)
        except ValidationError as error:
            return GuardResult(None, problems=[f"invalid_output: {copy_error(error)}"])

        problems: list[str] = []
        products = self._resolve(copy, candidates, spec, problems)
        fields = {name: getattr(copy, name) for name in TEXT_FIELDS if getattr(copy, name)}
        shown = [c.product for c in products]
        honoured = campaigns.covering(shown, now) if campaigns else []
        self._check_claims(fields, candidates, problems, honoured, locale)
        named = self._check_campaigns(fields, campaigns, honoured, problems, now)
        self._check_form(fields, spec, problems)
        self._check_examples(fields, examples, problems)
        if prompt is not None:
            self._check_echo(fields, prompt, problems)
        for name, value in fields.items():
            term = self.banned_term(value, locale)
            if term is not None:
                problems.append(f"banned_term: {name}: '{term}'")
        for name, run in borrowed_phrases(fields, examples, prompt, self.borrowed_run):
            problems.append(f"borrowed_phrase: {name}: '{run}'")
        notes = self._soft_findings(fields, examples, prompt)
        findings = review(
            copy.headline,
            copy.subheadline,
            copy.cta,
            shown,
            theme=theme,
            categories=[c.product.category for c in candidates],
            rules=rules,
        )
        problems.extend(str(f) for f in findings if f.hard)
        notes.extend(str(f) for f in findings if not f.hard)
        return GuardResult(copy, products, problems, notes, named)

    @staticmethod
    def _soft_findings(
        fields: dict[str, str],
        examples: list[dict[str, Any]],
        prompt: RenderedPrompt | None,
    ) -> list[str]:
        """What makes copy weaker without making it wrong: phrases lifted from the prompt,
        shouting (a product's title as the headline is the rubric's bare heading)."""
        notes = [
            f"shared_phrase: {name}: '{run}'"
            for name, run in borrowed_phrases(fields, examples, prompt, SHARED_RUN)
        ]
        for name, value in fields.items():
            capitals = [w for w in value.split() if len(w) >= 3 and w.isalpha() and w.isupper()]
            if len(capitals) >= 2 or value.count("!") > 1:
                notes.append(f"shouting: {name}")
        return notes

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
        fields: dict[str, str],
        candidates: list[Candidate],
        problems: list[str],
        honoured: Sequence[Campaign] = (),
        locale: str = DEFAULT_LOCALE,
    ) -> None:
        numbers, fact_text = candidate_facts(candidates)
        # A running campaign on a shown product states its discount and offer words.
        for campaign in honoured:
            numbers |= numbers_in(campaign.facts)
            fact_text += " " + campaign.facts.casefold()
        for name, value in fields.items():
            for number in sorted(numbers_in(value, locale) - numbers):
                problems.append(f"invented_number: {name}: '{number}' is not in the catalog")
            for match in _OFFER.finditer(value):
                if match.group(0).casefold() not in fact_text:
                    problems.append(f"invented_offer: {name}: '{match.group(0)}'")

    @staticmethod
    def _check_campaigns(
        fields: dict[str, str],
        campaigns: CampaignBook,
        honoured: list[Campaign],
        problems: list[str],
        now: datetime | None,
    ) -> list[Campaign]:
        """The running campaigns the copy names; a name of any other is a problem."""
        named: list[Campaign] = []
        if not campaigns:
            return named
        now = now or datetime.now(UTC)
        for name, value in fields.items():
            for campaign in campaigns.named_in(value):
                if campaign in honoured:
                    if campaign not in named:
                        named.append(campaign)
                elif not campaign.running(now):
                    problems.append(f"campaign_not_running: {name}: '{campaign.name}'")
                else:
                    problems.append(f"campaign_not_shown: {name}: '{campaign.name}'")
        return named

    @staticmethod
    def _check_form(fields: dict[str, str], spec: SchemaSpec, problems: list[str]) -> None:
        limits = spec.limits()
        for name, value in fields.items():
            stripped = value.strip()
            if not stripped or not any(ch.isalnum() for ch in stripped):
                problems.append(f"empty: {name}")
                continue
            # Text that fills its cap exactly on a part of a word was cut there by the grammar
            # ("Shop everything kitchenw"); a whole word there is where it ended ("Explore new
            # arrivals" is 20 characters of a 20-character call to action).
            last = _WORD.findall(value.casefold())[-1] if value[-1].isalnum() else ""
            never_last = _DANGLING if name == "cta" else _NEVER_LAST
            if last and len(value) >= limits[name] and not is_word(last):
                problems.append(f"cut_at_limit: {name}")
            elif last in never_last:
                problems.append(f"unfinished: {name} ends with '{value.split()[-1]}'")
            reason = _degenerate(value)
            if reason:
                problems.append(f"degenerate: {name}: {reason}")
            # One definition of suspicious for catalog and model text; our prompt's own
            # scaffolding is looked for only when that found nothing (one report per field).
            findings = suspicious_text(value)
            problems.extend(f"suspicious: {name}: {finding}" for finding in findings)
            leak = None if findings else _LEAKS.search(value)
            if leak:
                problems.append(f"prompt_leak: {name}: '{leak.group(0)}'")

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


# A banner's n samples (and the echo and shared-phrase checks of each) read one prompt: its
# words are worked out once, for the few prompts in flight.
@lru_cache(maxsize=64)
def instruction_text(prompt: RenderedPrompt) -> str:
    """The prompt's own words: system and user turns without the delimited data blocks."""
    parts = [content for role, content in prompt.messages if role != "assistant"]
    return _normalised(_DATA_BLOCK.sub(" ", "\n".join(parts)))


@lru_cache(maxsize=64)
def _instruction_runs(prompt: RenderedPrompt, length: int) -> frozenset[str]:
    return frozenset(word_runs(instruction_text(prompt), length))


def borrowed_phrases(
    fields: Mapping[str, str],
    examples: Sequence[Mapping[str, Any]],
    prompt: RenderedPrompt | None,
    length: int,
) -> list[tuple[str, str]]:
    """(field, run) for each copy field that shares a run of ``length`` words with the
    template's examples (their headline and subheadline) or its instructions (the prompt
    without its data blocks): the field's first such run. Empty for ``length`` 0."""
    if length <= 0:
        return []
    lifted = {
        run
        for example in examples
        for name in ("headline", "subheadline")
        if isinstance(example.get(name), str)
        for run in word_runs(example[name], length)
    }
    if prompt is not None:
        lifted |= _instruction_runs(prompt, length)
    found = []
    for name, value in fields.items():
        first = next((run for run in word_runs(value, length) if run in lifted), None)
        if first is not None:
            found.append((name, first))
    return found


def word_runs(text: str, length: int) -> list[str]:
    """Every run of ``length`` consecutive words of ``text``, in order, case-folded,
    space-joined."""
    words = _normalised(text).split()
    return [" ".join(words[i : i + length]) for i in range(len(words) - length + 1)]


def _fit(text: str, limit: int) -> str:
    """Cut at a word boundary to fit ``limit`` characters."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(" ,;:-")
    return cut + "…"


def _quotable(text: str, allowed: re.Pattern[str]) -> bool:
    """Catalog words the fallback may show: readable, not suspicious, no prompt scaffolding,
    and within the characters the template's copy may use (``allowed``)."""
    return (
        any(ch.isalnum() for ch in text)
        and allowed.fullmatch(text) is not None
        and not suspicious_text(text)
        and not _LEAKS.search(text)
    )


# What a section that is about one thing says in its fallback: (headline, with a category,
# how the subheadline ends). Other sections say "picked for you" or "popular".
FALLBACK_OCCASIONS = {
    "back_in_stock": ("Back in stock", "Back in stock: {}", ", restocked for you."),
    "new_arrivals": ("New in", "New in {}", ", just arrived in the shop."),
}


def fallback_copy(
    candidates: list[Candidate],
    spec: SchemaSpec,
    personal: bool,
    digits: bool = False,
    occasion: str = "",
) -> tuple[dict[str, Any], list[Candidate]]:
    """A plain banner from catalog facts only: the answer when the model's copy is refused.

    The products stay (their numbers and prices are facts); their words are quoted only when
    they pass the same checks as the model's copy, since a title can carry an injection, and
    fit the same schema (``digits``: the template's ``copy_digits``), so a CMS gets one shape.
    ``occasion``: the section's retrieval focus, when the section is about it (new arrivals).
    """
    allowed = re.compile(copy_pattern(digits))
    chosen = candidates[: max(spec.min_products, min(3, spec.max_products))]
    # The category names the banner only when every product shown is of it: a grid of a
    # candle, a tea and a bag was served as "Picked for you: Bags & Travel".
    (commonest, count), *_ = Counter(c.product.category for c in chosen).most_common(1)
    whole = count == len(chosen) and _quotable(commonest, allowed)
    category = commonest if whole else None
    titles = [c.product.title for c in chosen if _quotable(c.product.title, allowed)][:2]
    opening = "Picked for you" if personal else "Popular right now"
    with_category = "Picked for you: {}" if personal else "Popular in {}"
    ending = ", chosen for you." if personal else ", loved by shoppers."
    if occasion in FALLBACK_OCCASIONS:
        opening, with_category, ending = FALLBACK_OCCASIONS[occasion]
    plain = {"headline": opening, "subheadline": "A few favourites" + ending}  # quotes nothing
    fields = dict(plain)
    if category is not None:
        fields["headline"] = with_category.format(category)
        fields["subheadline"] = f"Our {category} picks" + ending
    if titles:
        fields["subheadline"] = " and ".join(titles) + ending
    fitted = {name: _fit(value, spec.limits()[name]) for name, value in fields.items()}
    problems: list[str] = []
    Guards._check_form(fitted, spec, problems)
    if problems:  # e.g. two titles that repeat a phrase: say less rather than say it badly
        fitted = {name: _fit(value, spec.limits()[name]) for name, value in plain.items()}
    copy = {
        **fitted,
        "cta": _fit("Shop now", spec.cta_max),
        "layout": spec.layouts[0],
        "tone": "practical",
        "badge": None,
        "products": [c.number for c in chosen],
    }
    return copy, chosen
