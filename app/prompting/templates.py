"""Prompt templates: a YAML header (what the template is and how to sample) over a Jinja body.

    ---
    name: hero_banner
    version: 1
    schema: banner
    k: 8
    ...
    ---
    {# the Jinja body: the user message sent to the model #}

Line numbers in errors are the file's own: the header is replaced by a Jinja comment of the
same height before compiling.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from app.domain import Locale, Name
from app.generation.engine import MAX_BEST_OF, SamplingParams
from app.generation.schemas import SCHEMAS, BannerCopy, SchemaSpec, copy_error, output_model
from app.locales import DEFAULT_LOCALE, known_locale, language_of
from app.prompting.context import example_context
from app.prompting.sandbox import TemplateError, compile_template, make_environment, render
from app.rubric import RubricRules

log = logging.getLogger("marquee.templates")

TEMPLATE_SUFFIX = ".j2"
BRAND_FILE = "brand.yaml"
# The brand rules' name in the template store; no template may take it.
BRAND = "brand"
MAX_TEMPLATE_BYTES = 64_000


class RetrievalHints(BaseModel):
    """How a template wants its candidates chosen."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # top_category (a spotlight): one category the shopper likes. top_brand (a brand
    # showcase): one brand's range, the brand of their most relevant product with enough of
    # it to show. anchor ("because you viewed"): neighbours of the product of the shopper's
    # latest event, named as ``anchor``. new_arrivals: the catalog's latest additions, in
    # the shopper's categories first. back_in_stock: what they looked at that came back.
    # The last two may have nothing to show: a homepage then leaves the section out.
    focus: Literal[
        "none", "top_category", "top_brand", "anchor", "new_arrivals", "back_in_stock"
    ] = "none"
    # A themed set (a hero tells one story): the candidates all come from the theme the
    # shopper is most into (a category, else a cluster of like products), ranked and
    # diversified inside it; a homepage gives its themed sections different themes. A
    # spotlight (top_category) is themed by nature. False: a mixed set, as a grid wants.
    themed: bool = False

    @property
    def wants_theme(self) -> bool:
        return self.themed or self.focus == "top_category"

    @property
    def may_be_empty(self) -> bool:
        """Whether a shopper may have nothing for this section (and then gets none)."""
        return self.focus in ("new_arrivals", "back_in_stock")


BannedTerm = Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=80)]
# A banned phrase says something ("your morning"): letters, spaces and inner punctuation.
BannedPhrase = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=80, pattern=r"\w.*\w"),
]
# A call-to-action verb ("shop", "gear up"): one or two words of letters, an inner apostrophe
# or hyphen (so it fits every schema's button of three words); no digits, which the copy's
# grammar keeps out unless a template asks for them.
CtaVerb = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        min_length=2,
        max_length=24,
        pattern=r"^[^\W\d_]+(?:['’-][^\W\d_]+)*(?: [^\W\d_]+(?:['’-][^\W\d_]+)*)?$",
    ),
]
LanguageCode = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}$")]


class Brand(BaseModel):
    """The brand rules every template sees as ``brand``, and the words no copy may use.

    Seeded from ``prompts/brand.yaml`` and then versioned in the template store as the
    document ``brand`` (edited, linted, diffed and published like a template).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(default="our store", min_length=1, max_length=80)
    voice: str = Field(default="friendly and brief", max_length=300)
    rules: list[str] = Field(default_factory=list, max_length=20)
    # Refused in copy in every language. None (the key absent): the service's
    # MARQUEE_BANNED_TERMS, which the store writes in when it seeds the brand rules.
    banned_terms: list[BannedTerm] | None = Field(default=None, max_length=500)
    # More terms for copy in one language, on top of banned_terms: {"de": ["gratis"]}.
    banned_terms_by_language: dict[LanguageCode, list[BannedTerm]] | None = None
    # Tired phrases no copy may use ("a new page in", "elevate your"), case and punctuation
    # ignored (app/rubric.py). None (the key absent): the rubric's defaults; []: none.
    banned_phrases: list[BannedPhrase] | None = Field(default=None, max_length=500)


class ExampleProduct(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    title: str = Field(min_length=1, max_length=120)
    category: str = Field(min_length=1, max_length=60)
    description: str = Field(default="", max_length=240)
    brand: str = Field(default="", max_length=60)


class FewShotExample(BaseModel):
    """A worked example: a sample shopper and product list, and the copy we want for them.

    It is rendered through the template itself, so the model sees the exact prompt format
    followed by the answer, as an earlier turn of the conversation.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    interests: list[str] = Field(default_factory=list, max_length=8)
    viewed: ExampleProduct | None = None  # the example's ``anchor``
    products: list[ExampleProduct] = Field(min_length=1, max_length=20)
    output: dict[str, Any]


class TemplateHeader(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    # In a file, informational; a version saved in the studio gets its number from the store.
    version: int = Field(default=1, ge=1)
    description: str = Field(min_length=1, max_length=300)
    schema_name: str = Field(alias="schema")
    k: int = Field(default=8, ge=2, le=20)
    placement: Name = "home_hero"
    sampling: SamplingParams = SamplingParams()
    system: str = Field(min_length=1, max_length=4000)
    examples: list[FewShotExample] = Field(default_factory=list, max_length=4)
    # How many examples a prompt shows (None: all). With fewer than written, a banner gets
    # those whose products share no category with its candidates: a small model copies an
    # example about what it is writing about (the coffee example over coffee), so a banner
    # on the example's own subject is shown another. The guards check against them all.
    examples_shown: int | None = Field(default=None, ge=1, le=4)
    retrieval: RetrievalHints = RetrievalHints()
    # Digits in the copy ("4K", "2-person"): off, so the grammar never lets the model write a
    # number; on, each number is still checked against the catalog by the guards.
    copy_digits: bool = False
    # What a call to action starts with ("shop", "gear up"): the grammar allows only these
    # and the rubric checks them. None: app/rubric.py's English defaults for English copy,
    # and no verb rule for copy in another language (give the language's own verbs).
    cta_verbs: list[CtaVerb] | None = Field(default=None, min_length=1, max_length=200)
    # Samples per banner (best-of-n); None: the service's MARQUEE_BEST_OF.
    best_of: int | None = Field(default=None, ge=1, le=MAX_BEST_OF)
    # A locale variant: what shoppers of ``locale`` get instead of the template
    # ``variant_of`` (its text in their language). "de-DE" serves de-DE first; "de" serves
    # every German locale that has no variant of its own.
    variant_of: Name | None = None
    locale: Locale | None = None

    @model_validator(mode="after")
    def _variant_has_both(self) -> TemplateHeader:
        if (self.variant_of is None) != (self.locale is None):
            raise ValueError("a locale variant names both variant_of and locale")
        if self.variant_of == self.name:
            raise ValueError("a template is not a variant of itself")
        if self.locale is not None and not known_locale(self.locale):
            raise ValueError(f"locale '{self.locale}' is not one CLDR knows")
        return self

    @field_validator("cta_verbs", mode="before")
    @classmethod
    def _some_verbs(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError(
                "cta_verbs is empty: no call to action could be written; list the verbs one "
                "may start with, or leave the key out for the default list"
            )
        return value

    @field_validator("name")
    @classmethod
    def _not_the_brand(cls, value: str) -> str:
        if value == BRAND:
            raise ValueError(f"'{BRAND}' is the brand rules' name; choose another")
        return value

    @field_validator("schema_name")
    @classmethod
    def _known_schema(cls, value: str) -> str:
        if value not in SCHEMAS:
            raise ValueError(f"unknown schema '{value}' (known: {', '.join(SCHEMAS)})")
        return value


@dataclass(frozen=True)
class RenderedPrompt:
    template: str
    version: int
    messages: tuple[tuple[str, str], ...]

    @property
    def text(self) -> str:
        return "\n\n".join(f"[{role}]\n{content}" for role, content in self.messages)


class PromptTemplate:
    def __init__(
        self, header: TemplateHeader, source: str, origin: str, *, stored: bool = False
    ) -> None:
        """``stored``: a version saved before, read back. Its examples met the rules of their
        day; an example that breaks a copy rule added since (a digit, four words in a call to
        action) is logged, not fatal, so no saved version stops loading. Saves are strict."""
        self.header = header
        self.source = source  # compile-ready: header already turned into a comment
        self.origin = origin
        self.spec: SchemaSpec = SCHEMAS[header.schema_name]
        self._env = make_environment(lambda _name: (self.source, self.origin))
        self._compiled = compile_template(self._env, header.name, origin)
        # Examples must fit the schema they teach, or they teach the wrong thing.
        for number, example in enumerate(header.examples, 1):
            try:
                model = output_model(
                    header.schema_name,
                    len(example.products),
                    header.copy_digits,
                    self.cta_verbs(header.locale or DEFAULT_LOCALE),
                )
                model.model_validate(example.output)
            except ValidationError as error:
                copy_rules_only = all(
                    e["type"] == "string_pattern_mismatch" for e in error.errors()
                )
                if stored and copy_rules_only:
                    log.warning(
                        "template %s: example %d breaks a copy rule (%s); a new version "
                        "should fix it",
                        origin,
                        number,
                        copy_error(error),
                    )
                    continue
                raise TemplateError(
                    header.name,
                    None,
                    f"example {number} does not fit schema "
                    f"'{header.schema_name}': {copy_error(error)}",
                ) from None

    @property
    def name(self) -> str:
        return self.header.name

    @property
    def environment(self) -> ImmutableSandboxedEnvironment:
        return self._env

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def output_model(self) -> type[BannerCopy]:
        """The schema of copy in the template's own language, for all ``k`` candidates."""
        header = self.header
        verbs = self.cta_verbs(header.locale or DEFAULT_LOCALE)
        return output_model(header.schema_name, header.k, header.copy_digits, verbs)

    def cta_verbs(self, locale: str) -> tuple[str, ...]:
        """What the grammar lets a call to action in ``locale``'s language start with: the
        template's own ``cta_verbs``, else the rubric's general English ones for English copy;
        empty (any word) for another language the template gives no verbs for."""
        return rubric_rules(self.header.cta_verbs, None, locale).grammar_verbs

    def rubric(self, locale: str, brand: dict[str, Any]) -> RubricRules:
        """The publishability rules of this template's copy in ``locale``, under ``brand``."""
        return rubric_rules(self.header.cta_verbs, brand.get("banned_phrases"), locale)

    @property
    def example_outputs(self) -> list[dict[str, Any]]:
        return [example.output for example in self.header.examples]

    def shown_examples(self, categories: Collection[str]) -> list[FewShotExample]:
        """The examples a prompt about products of ``categories`` shows (``examples_shown``):
        first those whose products share none of them, in the order written."""
        examples, limit = self.header.examples, self.header.examples_shown
        if limit is None or limit >= len(examples):
            return list(examples)
        mine = {category.casefold() for category in categories}
        about_mine = [any(p.category.casefold() in mine for p in e.products) for e in examples]
        chosen = sorted(range(len(examples)), key=lambda i: (about_mine[i], i))[:limit]
        return [examples[i] for i in sorted(chosen)]

    def render(self, context: dict[str, Any], *, with_examples: bool = True) -> RenderedPrompt:
        """System message, then each example shown as a (prompt, answer) turn, then the real
        prompt. ``with_examples``: False leaves the examples out (a model trained on the job,
        app/training)."""
        messages: list[tuple[str, str]] = [("system", self.header.system.strip())]
        categories = [c["category"] for c in context.get("candidates", [])]
        shown = self.shown_examples(categories) if with_examples else []
        for example in shown:
            sample = example_context(
                interests=example.interests,
                products=[p.model_dump() for p in example.products],
                brand=context["brand"],
                placement=context["placement"],
                spec=self.spec,
                viewed=example.viewed.model_dump() if example.viewed else None,
            )
            messages.append(("user", render(self._compiled, self.name, sample).strip()))
            messages.append(("assistant", json.dumps(example.output, ensure_ascii=False)))
        messages.append(("user", render(self._compiled, self.name, context).strip()))
        return RenderedPrompt(self.name, self.version, tuple(messages))


def parse_template(
    text: str, origin: str, version: int | None = None, *, stored: bool = False
) -> PromptTemplate:
    """Parse a template file's text. Raises TemplateError naming the template and line.

    ``version``: the stored version number, which wins over the header's. ``stored``: a
    version read back from the store (see PromptTemplate).
    """
    label = Path(origin).stem
    if len(text.encode()) > MAX_TEMPLATE_BYTES:
        raise TemplateError(label, None, f"larger than {MAX_TEMPLATE_BYTES} bytes")
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise TemplateError(label, 1, "a template starts with a '---' header block")
    end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
    if end is None:
        raise TemplateError(label, 1, "the header block is not closed with '---'")
    raw = yaml_mapping("".join(lines[1:end]), label, 2, "the header")
    try:
        header = TemplateHeader.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "header"
        raise TemplateError(
            str(raw.get("name", label)), None, f"header field '{field}': {first['msg']}"
        ) from None
    if version is not None:
        header = header.model_copy(update={"version": version})
    # Keep the file's line numbers: the header becomes a comment exactly as tall as it was.
    source = "{#" + "\n" * (end + 1) + "#}" + "".join(lines[end + 1 :])
    return PromptTemplate(header, source, origin, stored=stored)


PRODUCTION = "production"


SplitStrategy = Literal["split", "thompson"]


@dataclass(frozen=True)
class Split:
    """A placement's traffic split between two labels of one template, stable per shopper.

    ``split``: the weight is the marketer's. ``thompson``: the weight is the chance that the
    variant has the better click rate, given the clicks so far (Thompson sampling as
    probability matching), set again every ``period_s`` and never below ``min_share`` for
    either arm; each period draws every shopper's arm afresh, and holds it until the next.
    """

    template: str
    control: str
    variant: str
    variant_weight: float  # share of shoppers who get the variant, in [0, 1]
    strategy: SplitStrategy = "split"
    min_share: float = 0.1
    period_s: float = 86_400.0
    since: datetime | None = None  # when the weight was set

    def label_for(self, placement: str, shopper_id: str) -> str:
        # A hash, not a random draw: a shopper keeps their arm across requests and replicas
        # (for thompson, until the next period: the period's start salts the hash).
        key = f"{placement}\x00{shopper_id}"
        if self.strategy == "thompson" and self.since is not None:
            key += f"\x00{self.since.timestamp():.0f}"
        digest = hashlib.sha256(key.encode()).digest()
        position = int.from_bytes(digest[:8], "big") / 2**64
        return self.variant if position < self.variant_weight else self.control

    def due(self, now: datetime) -> bool:
        """Whether a thompson split's weight is to be set again."""
        if self.strategy != "thompson":
            return False
        return self.since is None or (now - self.since).total_seconds() >= self.period_s


class TemplateRegistry:
    """The templates in use, by name and label, plus the brand rules every template sees.

    ``templates`` are the production versions; ``labelled`` adds other labels (staging,
    experiment arms); ``splits`` maps a placement to its traffic split. Immutable: the studio
    builds a new registry when a label moves and the pipeline switches to it in one assignment.
    """

    def __init__(
        self,
        templates: list[PromptTemplate],
        brand: dict[str, Any],
        *,
        labelled: dict[str, dict[str, PromptTemplate]] | None = None,
        splits: dict[str, Split] | None = None,
        brand_version: int | None = None,
    ) -> None:
        """``brand_version``: the stored version of ``brand`` (None: from the prompts folder)."""
        self._by_name: dict[str, PromptTemplate] = {}
        for template in templates:
            if template.name in self._by_name:
                raise TemplateError(
                    template.name,
                    None,
                    f"defined twice ({self._by_name[template.name].origin}, {template.origin})",
                )
            self._by_name[template.name] = template
        self._labelled = labelled or {}
        self.splits = splits or {}
        self.brand = brand
        self.brand_version = brand_version
        # {template: {locale: its variant}}: the production variants, by their locale.
        self._variants: dict[str, dict[str, PromptTemplate]] = {}
        for template in templates:
            header = template.header
            if header.variant_of is not None and header.locale is not None:
                self._variants.setdefault(header.variant_of, {})[header.locale] = template

    @classmethod
    def from_folder(cls, folder: Path) -> TemplateRegistry:
        templates = [
            parse_template(path.read_text(encoding="utf-8"), str(path))
            for path in sorted(folder.glob(f"*{TEMPLATE_SUFFIX}"))
        ]
        return cls(templates, load_brand(folder))

    def with_brand(self, brand: dict[str, Any], version: int | None = None) -> TemplateRegistry:
        """The same templates, labels and splits under other brand rules (a brand preview)."""
        return TemplateRegistry(
            list(self._by_name.values()),
            brand,
            labelled=self._labelled,
            splits=self.splits,
            brand_version=version,
        )

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)

    def get(self, name: str, label: str = PRODUCTION) -> PromptTemplate:
        template = self._by_name.get(name)
        if template is None:
            raise KeyError(f"unknown template '{name}' (known: {', '.join(self.names)})")
        if label == PRODUCTION:
            return template
        labelled = self._labelled.get(name, {}).get(label)
        if labelled is None:
            known = ", ".join(sorted({PRODUCTION, *self._labelled.get(name, {})}))
            raise KeyError(f"template '{name}' has no label '{label}' (known: {known})")
        return labelled

    def variant(self, name: str, locale: str) -> PromptTemplate | None:
        """The production variant of ``name`` for ``locale``: the one for exactly it, else
        the one for its language ("de" for de-AT), else another of its language."""
        variants = self._variants.get(name, {})
        language = language_of(locale)
        same_language = sorted(tag for tag in variants if language_of(tag) == language)
        for tag in (locale, language, *same_language):
            if tag in variants:
                return variants[tag]
        return None

    def choose(
        self, name: str, shopper_id: str, label: str | None = None, locale: str | None = None
    ) -> tuple[PromptTemplate, str]:
        """The version a shopper gets: an explicit label, else the template's variant for
        their ``locale`` (a shopper with one is outside the placement's experiment: the
        experiment compares versions of the same text), else their arm of the placement's
        split (when it splits this template), else production."""
        if label is None and locale is not None:
            variant = self.variant(name, locale)
            if variant is not None:
                return variant, PRODUCTION
        if label is None:
            split = self.splits.get(self.get(name).header.placement)
            label = PRODUCTION
            if split is not None and split.template == name:
                label = split.label_for(self.get(name).header.placement, shopper_id)
        return self.get(name, label), label

    @property
    def placements(self) -> list[str]:
        """Every placement some template fills, sorted."""
        return sorted({template.header.placement for template in self._by_name.values()})

    def default_for(self, placement: str) -> PromptTemplate:
        """The placement's template (never a locale variant: ``choose`` picks those)."""
        for template in self._by_name.values():
            if template.header.placement == placement and template.header.variant_of is None:
                return template
        raise KeyError(
            f"unknown placement '{placement}' (placements: {', '.join(self.placements)})"
        )


def load_brand(folder: Path) -> dict[str, Any]:
    """The brand rules in ``folder/brand.yaml`` (defaults when there is none)."""
    return parse_brand(brand_text(folder))


def brand_text(folder: Path) -> str:
    """The text of ``folder/brand.yaml`` ("" when there is none: every default)."""
    brand_path = folder / BRAND_FILE
    return brand_path.read_text(encoding="utf-8") if brand_path.exists() else ""


def yaml_mapping(text: str, name: str, first_line: int, what: str) -> dict[str, Any]:
    """A YAML mapping (empty text: an empty one). Raises TemplateError naming ``name`` and
    the file's line (the text starts on ``first_line``)."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + first_line if mark is not None else None
        raise TemplateError(name, line, f"{what}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise TemplateError(name, first_line, f"{what}: not a mapping of fields")
    return raw


def parse_brand(text: str) -> dict[str, Any]:
    """Brand rules from their YAML text. Raises TemplateError naming the line or field."""
    if len(text.encode()) > MAX_TEMPLATE_BYTES:
        raise TemplateError(BRAND, None, f"larger than {MAX_TEMPLATE_BYTES} bytes")
    raw = yaml_mapping(text, BRAND, 1, "the brand rules")
    try:
        return Brand.model_validate(raw).model_dump()
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(map(str, first["loc"]))
        raise TemplateError(
            BRAND,
            line_of_field(text, first["loc"][0]) if first["loc"] else None,
            f"field '{field}': {first['msg']}",
        ) from None


def line_of_field(text: str, field: object) -> int | None:
    """The line a top-level YAML field starts on (where a problem with it is shown)."""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith(f"{field}:"):
            return number
    return None


def seeded_brand_text(
    text: str, banned_terms: list[str] | None, banned_by_language: dict[str, list[str]] | None
) -> str:
    """The brand rules' first stored version: the file's text, with the service's banned
    terms written in where the file does not set its own (the studio then shows and edits
    them; a comment says where they came from). None: write nothing for that key."""
    brand = parse_brand(text)
    added = ""
    if brand["banned_terms"] is None and banned_terms is not None:
        added += yaml.safe_dump({"banned_terms": banned_terms}, allow_unicode=True)
    if brand["banned_terms_by_language"] is None and banned_by_language:
        added += yaml.safe_dump(
            {"banned_terms_by_language": banned_by_language}, allow_unicode=True
        )
    if not added:
        return text
    body = text if not text or text.endswith("\n") else text + "\n"
    return body + "# Seeded from MARQUEE_BANNED_TERMS (and _BY_LANGUAGE); edit them here.\n" + added


def rubric_rules(
    cta_verbs: Collection[str] | None, banned_phrases: Collection[str] | None, locale: str
) -> RubricRules:
    """The rubric's rules for copy in ``locale`` from a template's ``cta_verbs`` and a brand's
    ``banned_phrases`` (None: the defaults)."""
    return RubricRules(
        cta_verbs=None if cta_verbs is None else tuple(cta_verbs),
        banned_phrases=None if banned_phrases is None else tuple(banned_phrases),
        english=language_of(locale) == "en",
    )
