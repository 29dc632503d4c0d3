"""The plain types every stage shares."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, HttpUrl, StringConstraints

ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]

# The constrained strings every layer shares, declared once: the core validates with them and
# the HTTP side builds its wire types and path parameters from them.
# ASCII only, as documented: ``\w`` means different things to Python's ``re`` (path
# parameters) and pydantic's Rust engine (bodies), so "²" passed one and failed the other.
IDENTIFIER_CHARS = "A-Za-z0-9_.:-"
IDENTIFIER_PATTERN = rf"^[{IDENTIFIER_CHARS}]{{1,64}}$"  # products, shoppers, events, banners
NAME_PATTERN = r"^[a-z][a-z0-9_]{1,48}$"  # templates and placements
LABEL_PATTERN = r"^[a-z][a-z0-9_-]{1,39}$"  # template labels: production, candidate, ...
LOCALE_PATTERN = r"^[a-z]{2}(-[A-Z]{2})?$"  # en, en-US
# API keys: the id is the part of mq_<id>_<secret> that names a key (app.store.repositories
# KEY_SHAPE); the name is what lists and the audit log show (ops, cms-prod, anna@shop.example).
KEY_ID_PATTERN = r"^[A-Za-z0-9]{1,32}$"
KEY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,79}$"

Identifier = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=64, pattern=rf"^[{IDENTIFIER_CHARS}]+$"
    ),
]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Label = Annotated[str, StringConstraints(pattern=LABEL_PATTERN)]
Locale = Annotated[str, StringConstraints(pattern=LOCALE_PATTERN)]
KeyName = Annotated[str, StringConstraints(pattern=KEY_NAME_PATTERN)]
ShopperName = Annotated[str, StringConstraints(strip_whitespace=True, max_length=80)]
Segment = Annotated[str, StringConstraints(strip_whitespace=True, max_length=40)]
Interest = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]
MAX_INTERESTS = 20
# Template versions are stored as 32-bit integers (PostgreSQL INTEGER): a larger number in a
# request is refused as invalid, never sent to the database (where SQLite overflows: a 500).
MAX_VERSION = 2**31 - 1


def to_identifier(text: str) -> str:
    """``text`` with what an identifier may not hold replaced by ``_`` (a segment's name as
    the id of the shopper standing in for it)."""
    return re.sub(rf"[^{IDENTIFIER_CHARS}]", "_", text)[:64] or "_"


MAX_HISTORY = 10_000  # events kept per shopper: the newest win


class EventType(StrEnum):
    VIEW = "view"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"


class FeedbackKind(StrEnum):
    """What a shopper did with a served banner."""

    IMPRESSION = "impression"
    CLICK = "click"
    CONVERSION = "conversion"


class Product(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Identifier
    title: ShortText
    description: Annotated[str, StringConstraints(strip_whitespace=True, max_length=4000)] = ""
    brand: ShortText
    category: ShortText
    tags: tuple[
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=60)], ...
    ] = ()
    price: float = Field(ge=0, le=1_000_000)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "USD"
    in_stock: bool = True
    url: HttpUrl
    image_url: HttpUrl | None = None
    # When it was first sold, and when it last came back into stock (the catalog API stamps
    # both when a write leaves them out): the new arrivals and back in stock sections.
    added_at: AwareDatetime | None = None
    restocked_at: AwareDatetime | None = None


class Interaction(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    product_id: Identifier
    type: EventType
    ts: AwareDatetime


class Shopper(BaseModel):
    """A shopper as retrieval sees them. An unknown id becomes a shopper with no history."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Identifier
    name: ShopperName = ""
    locale: Locale = "en-US"
    segment: Segment = "unknown"
    interests: tuple[Interest, ...] = Field(default=(), max_length=MAX_INTERESTS)
    history: tuple[Interaction, ...] = Field(default=(), max_length=MAX_HISTORY)

    @property
    def purchased_ids(self) -> frozenset[str]:
        return frozenset(e.product_id for e in self.history if e.type is EventType.PURCHASE)

    @property
    def is_cold_start(self) -> bool:
        return not self.history and not self.interests


class CandidateScores(BaseModel):
    """Why a product was picked: each signal in [0, 1], then the blend and the MMR score."""

    model_config = ConfigDict(frozen=True)

    semantic: float = 0.0
    collaborative: float = 0.0
    popularity: float = 0.0
    relevance: float = 0.0
    mmr: float = 0.0


class Candidate(BaseModel):
    """A product offered to the model under its number (1..K) in the prompt."""

    model_config = ConfigDict(frozen=True)

    number: int = Field(ge=1)
    product: Product
    scores: CandidateScores
    # "semantic", "collaborative" or "popular": which signal brought it in ("newest": new
    # arrivals for a shopper with nothing to rank by).
    source: str


class ResolvedProduct(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    title: str
    price: float
    currency: str
    url: str
    image_url: str | None

    @classmethod
    def of(cls, product: Product) -> ResolvedProduct:
        return cls(
            id=product.id,
            title=product.title,
            price=product.price,
            currency=product.currency,
            url=str(product.url),
            image_url=str(product.image_url) if product.image_url else None,
        )


class StageTimings(BaseModel):
    retrieval_ms: float = 0.0
    render_ms: float = 0.0
    generation_ms: float = 0.0
    guards_ms: float = 0.0
    total_ms: float = 0.0


# Why a shopper gets a theme, in the words the prompt, the CMS and the studio show.
LOOKED_AT_LATELY = "what they looked at lately"
LOOKED_AT_BEFORE = "what they looked at before"


def close_to_interests(interests: Sequence[str]) -> str:
    return "close to their stated interests: " + ", ".join(interests[:3])


class Theme(BaseModel):
    """What a themed banner is about: the one story its products tell (app/pipeline.py)."""

    model_config = ConfigDict(frozen=True)

    # A brand: one the shopper is into across categories. A cluster: products like one, by
    # the embedding, where no category or brand has enough to show.
    kind: Literal["category", "brand", "cluster"]
    name: str  # the category or the brand; for a cluster, "like <the product's title>"
    why: str  # why this shopper gets it, in words the CMS and the studio can show
    # The theme the shopper is most into, when it had too few products to show.
    instead_of: str | None = None

    @property
    def named(self) -> str | None:
        """What the copy is about by name: the category or the brand; None for a cluster,
        whose name ("like <a product's title>") is no subject a headline could be."""
        return None if self.kind == "cluster" else self.name


class NamedCampaign(BaseModel):
    """A running campaign the copy names (app/campaigns.py): when it ends, so does the
    banner's freshness."""

    id: str
    name: str
    ends_at: datetime


class CopyScore(BaseModel):
    """Why a sample that passed the guards was served or not (best-of-n, app/choosing.py).
    Each part is in [0, 1] (the cosines clipped at 0). ``total`` is the weighted sum of
    personal, relevance beyond ``baseline``, novelty and length, less the soft findings'
    penalty; ``theme`` is reported, not weighed."""

    sample: int  # its position among the round's samples
    chosen: bool
    total: float
    personal: float  # the copy's closeness to the shopper (their history and interests)
    relevance: float  # ... to the products it shows
    # ... to the catalog at large (the unit mean of every product): relevance must beat it, or
    # the copy is off topic (a soft finding).
    baseline: float = 0.0
    theme: float | None = None  # ... to a themed set's theme name (None: not themed)
    novelty: float  # 1 - its closeness to the shopper's latest banners (1: none seen)
    length: float  # how well it fills its fields: neither a stub nor cut at the cap
    soft: list[str] = Field(default_factory=list)  # the guards' soft findings


class Banner(BaseModel):
    """What the CMS renders: copy, layout and catalog products, plus how it was made."""

    id: str
    shopper_id: str
    template: str
    template_version: int
    template_label: str = "production"  # the label (or experiment arm) that chose the version
    # The brand rules' version it was judged by (None: rules from the prompts folder).
    brand_version: int | None = None
    placement: str = "home_hero"
    variant: int
    headline: str
    subheadline: str
    cta: str
    layout: str
    badge: str | None = None
    tone: str | None = None
    products: list[ResolvedProduct]
    # "Because you viewed": the product the banner's are neighbours of, for the CMS to name.
    anchor: ResolvedProduct | None = None
    model: str
    engine: str
    fallback: bool = False
    retries: int = 0
    flags: list[str] = Field(default_factory=list)  # guard findings of rejected attempts
    # What a marketer would not publish in the copy served (app/rubric.py: "vague: copy:
    # ..."); empty: publishable as written. Only soft findings reach a shopper: the hard ones
    # are refused.
    findings: list[str] = Field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0  # prompt tokens of every attempt, as the engine counted them
    samples: int = 0  # texts the model wrote for this banner, every attempt's samples together
    # The scores of the samples that passed in the served round, best first, the served one
    # marked chosen (app/choosing.py; one with one sample a banner, none when none passed).
    choice: list[CopyScore] = Field(default_factory=list)
    campaigns: list[NamedCampaign] = Field(default_factory=list)  # named in its copy
    locale: str = "en-US"  # the copy's language and number format
    # The shopper's locale is in a language the model does not write: the copy is in English.
    locale_fallback: bool = False
    # What the banner is about, for a template that asks for a themed set (None: a mixed set).
    theme: Theme | None = None
    timings: StageTimings = Field(default_factory=StageTimings)
    created_at: datetime


class HomepageSection(BaseModel):
    position: int
    template: str
    placement: str
    banner: Banner


class SkippedSection(BaseModel):
    """A section asked for that had nothing to show this shopper (nothing back in stock)."""

    template: str
    placement: str
    reason: str


class Homepage(BaseModel):
    """An ordered layout of sections for one shopper; no product appears twice."""

    id: str
    shopper_id: str
    sections: list[HomepageSection]
    total_ms: float
    skipped: list[SkippedSection] = Field(default_factory=list)


# --- pre-generation: who a stored banner is for, and what it was made from ------------------


class Audience(StrEnum):
    """Whom a pre-generated banner is for: one shopper, a segment (shown to its shoppers until
    they have their own), or everyone else (``popular``)."""

    SHOPPER = "shopper"
    SEGMENT = "segment"
    POPULAR = "popular"


class Subject(BaseModel):
    """One audience of a placement: the unit a pre-generation job makes a banner for."""

    model_config = ConfigDict(frozen=True)

    audience: Audience
    key: str = ""  # the shopper id or segment name; "" for popular

    @property
    def shopper_id(self) -> str:
        """The id the banner is generated (and its seeds drawn) for."""
        if self.audience is Audience.SHOPPER:
            return self.key
        if self.audience is Audience.SEGMENT:
            return f"segment:{self.key}"
        return "popular"


class BannerInputs(BaseModel):
    """What a stored banner was made from; when any of it changes the banner is stale."""

    model_config = ConfigDict(frozen=True)

    shopper_version: str
    template_version: int
    template_label: str
    model: str
    brand_version: int | None = None
    # The shown products' facts when it was made: id -> (price, in stock).
    facts: dict[str, tuple[float, bool]]
    # The product a "because you viewed" banner names (app/pipeline.py): once withdrawn, the
    # banner is stale. Its stock is not checked: it is named, not offered.
    anchor: str | None = None
    # The campaigns its copy names, id -> when it ends: past that, the banner is stale.
    campaigns: dict[str, datetime] = Field(default_factory=dict)
