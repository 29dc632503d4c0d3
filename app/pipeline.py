"""The banner pipeline: shopper -> candidates -> prompt -> constrained copy -> guards -> Banner.

This is the one entry point the CLI, the HTTP API and the eval suite call. It never raises to
its caller for model misbehaviour: a refused or failed generation is retried with another seed,
then replaced by a fallback banner built from catalog facts and flagged ``fallback: true``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Sequence
from copy import copy as shallow_copy
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from opentelemetry.trace import StatusCode

from app.campaigns import MAX_CAMPAIGNS_IN_PROMPT, NO_CAMPAIGNS, Campaign, CampaignBook
from app.catalog.store import Catalog, ShopperStore
from app.choosing import OFF_TOPIC, CopyChooser, Sample, off_topic_in
from app.config import Settings
from app.domain import (
    Banner,
    Candidate,
    CandidateScores,
    CopyScore,
    Homepage,
    HomepageSection,
    NamedCampaign,
    ResolvedProduct,
    Shopper,
    SkippedSection,
    StageTimings,
)
from app.generation.engine import Engine, EngineError, GenerationRequest, GenerationResult
from app.generation.schemas import BannerCopy, output_model
from app.guards import GuardResult, Guards, fallback_copy
from app.locales import CopyLocale, copy_locale, language_of
from app.logs import get_logger
from app.models import trained_without_examples
from app.prompting.context import build_context
from app.prompting.templates import PromptTemplate, RenderedPrompt, TemplateRegistry
from app.retrieval.collaborative import SavedModel
from app.retrieval.embedder import Embedder
from app.retrieval.index import VectorIndex
from app.retrieval.selector import CandidateFilters, CandidateSelector, Selection
from app.retrieval.signals import InteractionSignals
from app.retrieval.themes import ThemePicker
from app.rubric import FINDINGS, review
from app.tracing import tracer

log = get_logger(__name__)


@dataclass(frozen=True)
class BannerRequest:
    """What a caller asks for. ``shopper`` (an inline profile) wins over ``shopper_id``."""

    shopper_id: str = "anonymous"
    shopper: Shopper | None = None
    template: str | None = None
    placement: str = "home_hero"
    count: int = 1
    filters: CandidateFilters = field(default_factory=CandidateFilters)
    # A template label; default: the shopper's experiment arm, or production.
    label: str | None = None
    # Mixed into the sampling seeds. A pre-generation job passes its id, so a banner made
    # again from the same inputs (rejected in review, past its age) is not the same text.
    variation: str = ""
    # What the shopper's latest banners said (``choosing.copy_text``): best-of-n prefers a
    # sample unlike them.
    recent_copy: tuple[str, ...] = ()
    # The locale to write for, over the shopper's own (a CMS page in another language).
    locale: str | None = None
    # Themes other sections of the same page took (a homepage's), for a themed template.
    avoid_themes: tuple[str, ...] = ()


MAX_SECTIONS = 8
AUTO_BEST_OF = 8


def auto_best_of(engine: Engine | None) -> int:
    """Samples per banner where MARQUEE_BEST_OF is auto: 8, where the samples of one prompt
    cost about one (vLLM computes their shared prompt once; an in-process model in bf16 or
    float16 batches the rows, decode being memory-bound). Measured on hero banners with the
    publishability rubric refusing restated and garbled copy: eight samples against four cost
    1.16x the engine time per served banner and take fallback from 12.5 % to 0 % and engine
    calls from 1.50 to 1.12 a banner (bench/results/best_of-transformers.md). 2 for an
    in-process model in float32 (AVX2 CPUs), where nothing shares the prompt and four rows
    cost 1.60x one, two 1.35x (bench/results/best_of-transformers-avx2.md)."""
    in_process = engine is not None and engine.name == "transformers"
    if in_process and getattr(engine, "dtype", "float32") == "float32":
        return 2
    return AUTO_BEST_OF


# The flag of a banner the engine never answered for (its copy is the fallback).
ENGINE_ERROR = "engine_error"


def engine_failed(banner: Banner) -> bool:
    """Whether the engine never answered for ``banner``: fallback copy because of an outage,
    not because the guards refused what the model wrote."""
    return any(flag.startswith(ENGINE_ERROR) for flag in banner.flags)


@dataclass(frozen=True)
class PreparedRequest:
    """A request after retrieval and rendering, ready for the engine."""

    request: BannerRequest
    shopper: Shopper
    template: PromptTemplate
    label: str  # which label chose the template version ("preview" for an unsaved one)
    selection: Selection
    # The running campaigns that cover a candidate, as the template was given them.
    campaigns: list[Campaign]
    locale: CopyLocale  # the language the copy is written in, and the shopper's locale
    prompt: RenderedPrompt | None  # None: too few candidates to write about
    started: float
    retrieval_ms: float
    render_ms: float

    @property
    def output_model(self) -> type[BannerCopy]:
        """The copy's schema, numbering only the candidates offered: a narrow section (one
        product back in stock) offers fewer than the template's ``k``, and the grammar must
        not let the model pick a number nobody was shown."""
        header = self.template.header
        offered = max(len(self.selection.candidates), self.template.spec.min_products)
        return output_model(
            header.schema_name,
            min(header.k, offered),
            header.copy_digits,
            self.template.cta_verbs(self.locale.written),
        )

    @property
    def empty(self) -> bool:
        """Nothing to show, in a section that may have nothing (nothing back in stock): a
        homepage or a pre-generation job makes no banner for it, rather than filler copy."""
        return self.prompt is None and self.template.header.retrieval.may_be_empty


@dataclass
class _Variant:
    """One banner being made: its attempts so far."""

    number: int
    attempts: int = 0
    samples: int = 0
    output_tokens: int = 0
    prompt_tokens: int = 0
    generation_ms: float = 0.0
    guards_ms: float = 0.0
    flags: list[str] = field(default_factory=list)
    accepted: GuardResult | None = None
    choice: list[CopyScore] = field(default_factory=list)  # the samples' scores, best first
    # The better round so far whose every sample was off topic (app/choosing.py), served if
    # the round written again does no better.
    standby: tuple[GuardResult, list[CopyScore]] | None = None

    def stand_by(self, verdict: GuardResult, choice: list[CopyScore], *, may_retry: bool) -> None:
        """A round whose every sample is off topic: it stands by if it beats the one standing
        by. The first such round is written again (when a retry remains); after that the one
        standing by is served. Once only: in a catalog of near-alike products (all clothing)
        copy is often no closer to its own products than to the rest, and more rounds cost
        more than they find."""
        first = self.standby is None
        if self.standby is None or choice[0].total > self.standby[1][0].total:
            self.standby = (verdict, choice)
        if first and may_retry:
            self.flags.append(f"attempt {self.attempts}: {OFF_TOPIC}: every sample that passed")
        else:
            self.accepted, self.choice = self.standby

    def settle(self) -> None:
        """After the last attempt: the off-topic standby, if nothing better was accepted."""
        if self.accepted is None and self.standby is not None:
            self.accepted, self.choice = self.standby


def _template_attributes(template: PromptTemplate, label: str) -> dict[str, str | int]:
    return {
        "marquee.template": template.name,
        "marquee.template.version": template.version,
        "marquee.template.label": label,
    }


def _seed(*parts: object) -> int:
    digest = hashlib.sha256(json.dumps(parts, default=str).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class Pipeline:
    def __init__(
        self,
        *,
        settings: Settings,
        shoppers: ShopperStore,
        selector: CandidateSelector,
        templates: TemplateRegistry,
        engine: Engine | None,
    ) -> None:
        self.settings = settings
        # A model trained on prompts without the templates' examples is served them without
        # too (app/training); the packaged model needs them.
        self.few_shot = not trained_without_examples(settings.llm_folder)
        self.shoppers = shoppers
        # The selector holds the catalog, its index and the interaction signals together: a
        # catalog update replaces it in one assignment, so no request sees a mix of the two.
        self.selector = selector
        self.templates = templates
        self.engine = engine
        self.guards = self._guards_for(templates.brand)
        self.campaigns = NO_CAMPAIGNS

    @classmethod
    def assemble(
        cls,
        settings: Settings,
        *,
        catalog: Catalog,
        shoppers: ShopperStore,
        embedder: Embedder,
        index: VectorIndex,
        engine: Engine | None,
        templates: TemplateRegistry | None = None,
        models_dir: Path | None = None,
    ) -> Pipeline:
        """The pipeline over these parts; the collaborative model is loaded from ``models_dir``
        when it was fitted there from the same data (else fitted, and saved there)."""
        saved = None if models_dir is None else SavedModel(models_dir)
        signals = InteractionSignals.from_settings(catalog, shoppers, settings, saved)
        selector = CandidateSelector(catalog, index, embedder, signals, settings)
        return cls(
            settings=settings,
            shoppers=shoppers,
            selector=selector,
            templates=templates or TemplateRegistry.from_folder(settings.prompts_dir),
            engine=engine,
        )

    @property
    def catalog(self) -> Catalog:
        return self.selector.catalog

    @property
    def index(self) -> VectorIndex:
        return self.selector.index

    @property
    def embedder(self) -> Embedder:
        return self.selector.embedder

    # --- swap points: the only ways the parts change while the pipeline serves ----------------
    # Each is one assignment, so a request in flight sees the old part or the new one, never a
    # mix.

    def use_catalog(
        self, catalog: Catalog, index: VectorIndex, signals: InteractionSignals
    ) -> None:
        """Switch to an updated catalog, its index and its interaction signals."""
        self.selector = CandidateSelector(
            catalog, index, self.selector.embedder, signals, self.settings
        )

    def use_templates(self, templates: TemplateRegistry) -> None:
        """Serve another set of templates, labels and splits (a publish, a rollback), and
        their brand rules. The guards change first: a request that sees the new brand's
        templates is never judged by the old brand's banned terms."""
        if templates.brand != self.templates.brand:
            self.guards = self._guards_for(templates.brand)
        self.templates = templates

    def trying(self, templates: TemplateRegistry) -> Pipeline:
        """This pipeline over other templates or brand rules, for a preview: it shares every
        part (retrieval, engine) and leaves this one serving what it served."""
        trial = shallow_copy(self)
        trial.guards = self._guards_for(templates.brand)
        trial.templates = templates
        return trial

    def _guards_for(self, brand: dict[str, Any]) -> Guards:
        """The guards of these brand rules; rules that name no banned terms keep the
        service's (MARQUEE_BANNED_TERMS and _BY_LANGUAGE)."""
        terms = brand.get("banned_terms")
        by_language = brand.get("banned_terms_by_language")
        return Guards(
            self.settings.banned_terms if terms is None else terms,
            self.settings.banned_terms_by_language if by_language is None else by_language,
            self.settings.borrowed_run,
        )

    def use_campaigns(self, campaigns: CampaignBook) -> None:
        """Write about another set of campaigns (one was saved, one ended)."""
        self.campaigns = campaigns

    def use_engine(self, engine: Engine | None) -> None:
        """Generate with another engine (the eval's arms; None: fallback copy only). The caller
        owns the engine it replaced."""
        self.engine = engine

    # --- the stages, each callable alone ---------------------------------------------------

    def shopper(self, request: BannerRequest) -> Shopper:
        """Who the request is for, in the locale it asks for (else their own)."""
        shopper = request.shopper or self.shoppers.get(request.shopper_id)
        if request.locale is not None and request.locale != shopper.locale:
            shopper = shopper.model_copy(update={"locale": request.locale})
        return shopper

    def template(
        self, request: BannerRequest, shopper: Shopper | None = None
    ) -> tuple[PromptTemplate, str]:
        """The template version this request gets, and the label that chose it.
        ``shopper``: ``self.shopper(request)``, when the caller has it already."""
        name = request.template or self.templates.default_for(request.placement).name
        shopper = shopper or self.shopper(request)
        return self.templates.choose(name, shopper.id, request.label, shopper.locale)

    def candidates(
        self,
        shopper: Shopper,
        template: PromptTemplate,
        filters: CandidateFilters | None = None,
        avoid_themes: Sequence[str] = (),
    ) -> Selection:
        """``avoid_themes``: themes other sections of the page took (a themed template takes
        another when the shopper is into another)."""
        filters = filters or CandidateFilters()
        k = template.header.k
        focus = template.header.retrieval.focus
        if focus == "anchor":
            # "Because you viewed": neighbours of the latest product they touched; a shopper
            # with none gets the usual selection, and the template sees no anchor.
            anchor = self.selector.anchor_for(shopper)
            if anchor is not None:
                return self.selector.similar(shopper, anchor, k, filters)
        if template.header.retrieval.wants_theme and focus in ("none", "top_category"):
            # A hero or a spotlight: one theme's products (app/retrieval/themes.py).
            picker = ThemePicker(self.selector)
            return picker.select(shopper, k, template.spec.min_products, filters, avoid_themes)
        if focus == "top_brand" and not filters.include_brands:
            # A range is two products at least, whatever the schema would accept.
            return self._brand_showcase(shopper, k, max(2, template.spec.min_products), filters)
        if focus == "new_arrivals" and filters.added_since is None:
            return self._new_arrivals(shopper, k, template.spec.min_products, filters)
        if focus == "back_in_stock" and filters.include_products is None:
            back = tuple(self.selector.back_in_stock(shopper))
            return self.selector.select(
                shopper, k, filters.model_copy(update={"include_products": back})
            )
        return self.selector.select(shopper, k, filters)

    def _new_arrivals(
        self, shopper: Shopper, k: int, min_products: int, filters: CandidateFilters
    ) -> Selection:
        """The catalog's latest additions (added within ``new_arrivals_days`` of the newest
        one, so a shop that adds nothing for a while still has its latest), ranked for the
        shopper: in the categories they have been looking at when those have enough, else
        all of them; the latest first for a shopper with nothing to rank by. A catalog with
        no added dates has none."""
        newest = self.catalog.newest_arrival
        if newest is None:
            return self.selector.select(
                shopper, k, filters.model_copy(update={"include_products": ()})
            )
        since = newest - timedelta(days=self.settings.new_arrivals_days)
        fresh = filters.model_copy(update={"added_since": since})
        if not self.selector.knows(shopper):
            return self.selector.newest(shopper, k, fresh)
        if not filters.include_categories:
            seen = dict.fromkeys(p.category for p in self.selector.recently_seen(shopper))
            if seen:
                mine = fresh.model_copy(update={"include_categories": tuple(seen)})
                selection = self.selector.select(shopper, k, mine)
                if len(selection.candidates) >= min_products:
                    return selection
        return self.selector.select(shopper, k, fresh)

    def _brand_showcase(
        self, shopper: Shopper, k: int, min_products: int, filters: CandidateFilters
    ) -> Selection:
        """One brand's range: the brands of the shopper's most relevant products, in that
        order, the first with at least ``min_products`` to show; with none, the usual mixed
        selection (the template then sees several brands, as a grid would)."""
        ranked = self.selector.select(shopper, 3 * k, filters).candidates
        for brand in dict.fromkeys(c.product.brand for c in ranked):
            only = filters.model_copy(update={"include_brands": (brand,)})
            selection = self.selector.select(shopper, k, only)
            if len(selection.candidates) >= min_products:
                return selection
        return self.selector.select(shopper, k, filters)

    def _copy_locale(self, shopper: Shopper, template: PromptTemplate) -> CopyLocale:
        """A locale variant is written in its own language, whatever the model's list says
        (a marketer wrote it for that); any other template in the shopper's language when
        the model writes it, else in English (``locale_fallback``)."""
        variant_locale = template.header.locale
        if variant_locale is None:
            return copy_locale(shopper.locale, self.settings.llm_languages)
        same = language_of(shopper.locale) == language_of(variant_locale)
        return CopyLocale(shopper.locale, shopper.locale if same else variant_locale, False)

    def render(
        self,
        shopper: Shopper,
        template: PromptTemplate,
        selection: Selection,
        placement: str,
        campaigns: Sequence[Campaign] = (),
        locale: CopyLocale | None = None,
    ) -> RenderedPrompt:
        # Each title once, newest first; never what is no longer sold.
        recent = list(dict.fromkeys(p.title for p in self.selector.recently_seen(shopper)))
        context = build_context(
            shopper=shopper,
            recent_titles=recent,
            candidates=selection.candidates,
            brand=self.templates.brand,
            placement=placement,
            spec=template.spec,
            anchor=selection.anchor,
            theme=selection.theme,
            campaigns=campaigns,
            locale=locale or self._copy_locale(shopper, template),
        )
        return template.render(context, with_examples=self.few_shot)

    # --- the whole flow ---------------------------------------------------------------------

    def prepare(
        self, request: BannerRequest, template: PromptTemplate | None = None
    ) -> PreparedRequest:
        """Retrieval and rendering: everything before the model, cheap and synchronous.

        ``template``: a version to use instead of the labelled one (previews of a draft).
        """
        started = time.perf_counter()
        if not 1 <= request.count <= self.settings.max_variants:
            raise ValueError(f"count must be between 1 and {self.settings.max_variants}")
        with tracer.start_as_current_span("retrieval") as span:
            shopper = self.shopper(request)
            template, label = (template, "preview") if template else self.template(request, shopper)
            selection = self.candidates(shopper, template, request.filters, request.avoid_themes)
            if span.is_recording():  # no attribute work at all while tracing is off
                span.set_attributes(
                    {
                        **_template_attributes(template, label),
                        "marquee.shopper.known": request.shopper is not None
                        or self.shoppers.known(request.shopper_id),
                        "marquee.shopper.cold_start": selection.trace.cold_start,
                        "marquee.candidates": len(selection.candidates),
                    }
                )
        retrieved = time.perf_counter()
        candidates = selection.candidates
        campaigns = self.campaigns.covering([c.product for c in candidates])
        campaigns = campaigns[:MAX_CAMPAIGNS_IN_PROMPT]
        locale = self._copy_locale(shopper, template)
        with tracer.start_as_current_span("render") as span:
            prompt = (
                self.render(shopper, template, selection, request.placement, campaigns, locale)
                if len(candidates) >= template.spec.min_products
                else None
            )
            span.set_attribute("marquee.rendered", prompt is not None)
        return PreparedRequest(
            request=request,
            shopper=shopper,
            template=template,
            label=label,
            selection=selection,
            campaigns=campaigns,
            locale=locale,
            prompt=prompt,
            started=started,
            retrieval_ms=(retrieved - started) * 1000,
            render_ms=(time.perf_counter() - retrieved) * 1000,
        )

    async def complete(self, prepared: PreparedRequest) -> list[Banner]:
        """Generation, guards, retries and fallback for a prepared request."""
        with tracer.start_as_current_span("pipeline.complete") as span:
            banners = await self._complete(prepared)
            if span.is_recording():
                span.set_attributes(
                    {
                        **_template_attributes(prepared.template, prepared.label),
                        "marquee.variants": len(banners),
                        "marquee.retries": sum(b.retries for b in banners),
                        "marquee.fallbacks": sum(b.fallback for b in banners),
                        "marquee.output_tokens": sum(b.output_tokens for b in banners),
                        "marquee.prompt_tokens": sum(b.prompt_tokens for b in banners),
                    }
                )
        return banners

    async def _complete(self, prepared: PreparedRequest) -> list[Banner]:
        candidates = prepared.selection.candidates
        variants = [_Variant(number) for number in range(prepared.request.count)]
        if prepared.prompt is None:
            for variant in variants:
                variant.flags.append(f"too_few_candidates: {len(candidates)}")
        else:
            await self._attempt_all(variants, prepared, prepared.prompt)
            for variant in variants:
                variant.settle()

        total_ms = (time.perf_counter() - prepared.started) * 1000
        return [
            self._banner(
                variant,
                prepared,
                StageTimings(
                    retrieval_ms=prepared.retrieval_ms,
                    render_ms=prepared.render_ms,
                    generation_ms=variant.generation_ms,
                    guards_ms=variant.guards_ms,
                    total_ms=total_ms,
                ),
            )
            for variant in variants
        ]

    def fallback(self, prepared: PreparedRequest, reason: str) -> list[Banner]:
        """Fallback copy from catalog facts for a prepared request, without the engine: for a
        caller that cannot wait for the model. Flagged ``fallback`` with ``reason``."""
        variants = [_Variant(number, flags=[reason]) for number in range(prepared.request.count)]
        total_ms = (time.perf_counter() - prepared.started) * 1000
        timings = StageTimings(
            retrieval_ms=prepared.retrieval_ms, render_ms=prepared.render_ms, total_ms=total_ms
        )
        return [self._banner(variant, prepared, timings) for variant in variants]

    async def generate(self, request: BannerRequest) -> list[Banner]:
        """``request.count`` banners. Raises only for caller errors (unknown template, a count
        out of range), never for what the model does."""
        return await self.complete(self.prepare(request))

    async def homepage(self, request: BannerRequest, sections: list[str]) -> Homepage:
        """An ordered homepage: one banner per section template, no product in two sections.

        Candidates are chosen section by section, each excluding what earlier sections were
        offered; the sections are then generated concurrently (the engine batches them).
        """
        if not 1 <= len(sections) <= MAX_SECTIONS:
            raise ValueError(f"a homepage has 1 to {MAX_SECTIONS} sections")
        with tracer.start_as_current_span("pipeline.homepage") as span:
            span.set_attribute("marquee.sections", len(sections))
            return await self._homepage(request, sections)

    async def _homepage(self, request: BannerRequest, sections: list[str]) -> Homepage:
        started = time.perf_counter()
        offered: list[str] = []
        themes: list[str] = []  # taken by earlier themed sections: variety across the page
        chosen: dict[int, PreparedRequest] = {}  # by position on the page
        skipped = []
        # Sections that may have nothing to show choose first (what is back in stock is the
        # few products it is; a hero can take anything else), then the rest, in page order.
        narrow = [self.templates.get(name).header.retrieval.may_be_empty for name in sections]
        order = sorted(range(len(sections)), key=lambda position: not narrow[position])
        for position in order:
            name = sections[position]
            filters = request.filters.model_copy(
                update={"exclude_products": (*request.filters.exclude_products, *offered)}
            )
            section = self.prepare(
                replace(
                    request, template=name, count=1, filters=filters, avoid_themes=tuple(themes)
                )
            )
            header = section.template.header
            if section.empty:
                found = len(section.selection.candidates)
                needed = section.template.spec.min_products
                reason = f"{header.retrieval.focus}: {found} product(s), {needed} needed"
                skipped.append(
                    SkippedSection(template=name, placement=header.placement, reason=reason)
                )
                continue
            offered += [c.product.id for c in section.selection.candidates]
            if section.selection.theme is not None:
                themes.append(section.selection.theme.name)
            chosen[position] = section
        prepared = [chosen[position] for position in sorted(chosen)]
        banners = await asyncio.gather(*(self.complete(p) for p in prepared))
        homepage_id = (
            "hp_" + hashlib.sha256(json.dumps([b[0].id for b in banners]).encode()).hexdigest()[:24]
        )
        return Homepage(
            id=homepage_id,
            shopper_id=self.shopper(request).id,
            sections=[
                HomepageSection(
                    position=i,
                    template=p.template.name,
                    placement=p.template.header.placement,
                    banner=b[0],
                )
                for i, (p, b) in enumerate(zip(prepared, banners, strict=True))
            ],
            total_ms=(time.perf_counter() - started) * 1000,
            skipped=skipped,
        )

    def best_of(self, template: PromptTemplate) -> int:
        """Samples per banner for ``template``: its own ``best_of``, else the service's."""
        configured = self.settings.best_of
        default = configured if configured != "auto" else auto_best_of(self.engine)
        return template.header.best_of or default

    def edited(self, banner: Banner, edit: dict[str, str]) -> tuple[Banner | None, list[str]]:
        """``banner`` with a marketer's ``edit`` (headline, subheadline, cta) applied, held to
        what the model's copy is held to: the template's schema and patterns, the guards (no
        number, offer or campaign the catalog does not state, no banned term) and the
        rubric's hard findings. The edited banner and no problems, or None and each problem
        as ``kind: field: why``. The products, layout and tone stay the model's."""
        template = self.templates.get(banner.template)
        products = [self.catalog.get(p.id) for p in banner.products]
        shown = [p for p in products if p is not None]
        if len(shown) < len(products):
            return None, ["withdrawn: products: a product it shows is no longer in the catalog"]
        candidates = [
            Candidate(number=n, product=p, scores=CandidateScores(), source="edited")
            for n, p in enumerate(shown, 1)
        ]
        header, spec = template.header, template.spec
        schema = output_model(
            header.schema_name,
            max(len(shown), spec.min_products),
            header.copy_digits,
            template.cta_verbs(banner.locale),
        )
        copy = banner.model_dump(include={"headline", "subheadline", "cta", "layout", "tone"})
        copy |= {"badge": banner.badge, "products": [c.number for c in candidates]} | edit
        theme = banner.theme.named if banner.theme is not None else None
        verdict = self.guards.check(
            json.dumps(copy),
            schema,
            spec,
            candidates,
            [],  # a marketer may write what the examples say
            None,
            self.campaigns,
            locale=banner.locale,
            rules=template.rubric(banner.locale, self.templates.brand),
            theme=theme,
        )
        if not verdict.ok:
            return None, verdict.problems
        findings = [n for n in verdict.notes if n.split(":", 1)[0] in FINDINGS]
        digest = hashlib.sha256(json.dumps([banner.id, edit], sort_keys=True).encode())
        return banner.model_copy(
            update=edit | {"id": "bnr_" + digest.hexdigest()[:24], "findings": findings}
        ), []

    async def _attempt_all(
        self,
        variants: list[_Variant],
        prepared: PreparedRequest,
        prompt: RenderedPrompt,
    ) -> None:
        shopper, template = prepared.shopper, prepared.template
        variation = prepared.request.variation
        schema = prepared.output_model
        samples = self.best_of(template)
        # Who the shopper is, for choosing among samples: once a request, not once a round.
        shopper_vector = self.selector.shopper_vector(shopper) if samples > 1 else None
        for attempt in range(self.settings.max_retries + 1):
            pending = [v for v in variants if v.accepted is None]
            if not pending:
                return
            requests = [
                GenerationRequest(
                    messages=prompt.messages,
                    schema=schema,
                    sampling=template.header.sampling,
                    n=samples,
                    seed=_seed(
                        self.settings.base_seed,
                        shopper.id,
                        template.name,
                        template.version,
                        v.number,
                        attempt,
                        # Absent when empty: the seeds of every other request stay as they were.
                        *([variation] if variation else []),
                    ),
                )
                for v in pending
            ]
            with tracer.start_as_current_span("generation") as span:
                span.set_attribute("marquee.attempt", attempt)  # a no-op call while off
                try:
                    if self.engine is None:
                        raise EngineError("no engine configured")
                    results = await asyncio.wait_for(
                        self.engine.generate_many(requests),
                        timeout=self.settings.generation_timeout_s or None,
                    )
                except (EngineError, TimeoutError) as error:
                    reason = "timed out" if isinstance(error, TimeoutError) else str(error)
                    span.set_status(StatusCode.ERROR, reason)
                    log.warning(
                        "engine_failed", shopper=shopper.id, template=template.name, reason=reason
                    )
                    for variant in pending:
                        variant.flags.append(f"{ENGINE_ERROR}: {reason}"[:200])
                    return  # an engine that is down will not be better on the next seed
                if span.is_recording():
                    span.set_attributes(
                        {
                            "marquee.template": template.name,
                            "marquee.requests": len(requests),
                            "marquee.output_tokens": sum(r.output_tokens for r in results),
                            "marquee.prompt_tokens": sum(r.prompt_tokens for r in results),
                        }
                    )
            with tracer.start_as_current_span("guards") as span:
                for variant, result in zip(pending, results, strict=True):
                    self._judge(variant, result, prepared, prompt, shopper_vector)
                if span.is_recording():
                    accepted = sum(v.accepted is not None for v in pending)
                    span.set_attributes(
                        {
                            "marquee.attempt": attempt,
                            "marquee.accepted": accepted,
                            "marquee.refused": len(pending) - accepted,
                        }
                    )

    def _judge(
        self,
        variant: _Variant,
        result: GenerationResult,
        prepared: PreparedRequest,
        prompt: RenderedPrompt,
        shopper_vector: np.ndarray | None,
    ) -> None:
        """The guards' verdict on each of the attempt's samples; of those that pass, the best
        (app/choosing.py) is accepted. ``shopper_vector``: the shopper's, for that choice."""
        template, candidates = prepared.template, prepared.selection.candidates
        variant.attempts += 1
        variant.samples += len(result.texts)
        variant.output_tokens += result.output_tokens
        variant.prompt_tokens += result.prompt_tokens
        variant.generation_ms += result.elapsed_ms
        t0 = time.perf_counter()
        passed: list[Sample] = []
        rules = template.rubric(prepared.locale.written, self.templates.brand)
        theme = prepared.selection.theme
        for number, text in enumerate(result.texts):
            verdict = self.guards.check(
                text,
                prepared.output_model,
                template.spec,
                candidates,
                template.example_outputs,
                prompt,
                self.campaigns,
                locale=prepared.locale.written,
                rules=rules,
                theme=theme.named if theme is not None else None,
            )
            if verdict.ok:
                rows = [self.catalog.row(c.product.id) for c in verdict.products]
                passed.append(Sample(number, verdict, rows))
            else:
                # "attempt 2: ..." with one sample a banner; "attempt 2.3: ..." with several.
                which = (
                    f"{variant.attempts}.{number + 1}"
                    if len(result.texts) > 1
                    else (f"{variant.attempts}")
                )
                variant.flags.extend(f"attempt {which}: {p}" for p in verdict.problems)
        if passed:
            choice = CopyChooser(self.embedder).rank(
                passed,
                spec=template.spec,
                item_vectors=self.index.vectors,
                catalog_vector=self.selector.catalog_vector,
                shopper_vector=shopper_vector,
                recent_copy=prepared.request.recent_copy,
                theme=prepared.selection.theme.name if prepared.selection.theme else None,
            )
            best = next(s.verdict for s in passed if s.number == choice[0].sample)
            # Off-topic copy (app/choosing.py) is a soft finding: it loses to any sample about
            # its products. A round with none about them is written again once (see
            # _Variant.stand_by; MARQUEE_OFF_TOPIC_RETRY). A lone sample is served with the
            # finding: at n = 1 a retry costs a whole generation for copy every guard passed.
            if (
                self.settings.off_topic_retry
                and len(result.texts) > 1
                and all(off_topic_in(score.soft) for score in choice)
            ):
                variant.stand_by(
                    best, choice, may_retry=variant.attempts <= self.settings.max_retries
                )
            else:
                variant.accepted, variant.choice = best, choice
        variant.guards_ms += (time.perf_counter() - t0) * 1000

    async def close(self) -> None:
        """Release the engine (a managed vLLM server stops with it)."""
        if self.engine is not None:
            await self.engine.close()

    @property
    def model_name(self) -> str:
        return self.engine.model if self.engine is not None else "none"

    @property
    def engine_name(self) -> str:
        return self.engine.name if self.engine is not None else "none"

    def _banner(
        self, variant: _Variant, prepared: PreparedRequest, timings: StageTimings
    ) -> Banner:
        shopper, template, selection = prepared.shopper, prepared.template, prepared.selection
        candidates = selection.candidates
        named: list[NamedCampaign] = []
        if variant.accepted is not None and variant.accepted.copy is not None:
            copy = variant.accepted.copy.model_dump()
            chosen = variant.accepted.products
            fallback = False
            named = [
                NamedCampaign(id=c.id, name=c.name, ends_at=c.ends_at)
                for c in variant.accepted.campaigns
            ]
        else:
            personal = not selection.trace.cold_start
            copy, chosen = (
                fallback_copy(
                    candidates,
                    template.spec,
                    personal,
                    template.header.copy_digits,
                    template.header.retrieval.focus,
                )
                if candidates
                else (self._empty_copy(template), [])
            )
            fallback = True
        banner_id = (
            "bnr_"
            + hashlib.sha256(
                json.dumps(
                    [
                        shopper.id,
                        template.name,
                        template.version,
                        prepared.label,
                        [c.product.id for c in candidates],
                        self.model_name,
                        variant.number,
                        # Made again by another job: another text, so another id (a review
                        # decision names the banner it was about).
                        *([prepared.request.variation] if prepared.request.variation else []),
                    ]
                ).encode()
            ).hexdigest()[:24]
        )
        theme = selection.theme
        findings = review(
            copy["headline"],
            copy["subheadline"],
            copy["cta"],
            [c.product for c in chosen],
            theme=theme.named if theme is not None else None,
            categories=[c.product.category for c in candidates],
            rules=template.rubric(prepared.locale.written, self.templates.brand),
        )
        return Banner(
            id=banner_id,
            shopper_id=shopper.id,
            template=template.name,
            template_version=template.version,
            template_label=prepared.label,
            brand_version=self.templates.brand_version,
            placement=template.header.placement,
            variant=variant.number,
            headline=copy["headline"],
            subheadline=copy["subheadline"],
            cta=copy["cta"],
            layout=copy["layout"],
            badge=copy.get("badge"),
            tone=copy.get("tone"),
            products=[ResolvedProduct.of(c.product) for c in chosen],
            anchor=ResolvedProduct.of(selection.anchor) if selection.anchor else None,
            theme=selection.theme,
            model=self.model_name,
            engine=self.engine_name,
            fallback=fallback,
            retries=max(0, variant.attempts - 1),
            samples=variant.samples,
            choice=variant.choice,
            campaigns=named,
            locale=prepared.locale.written,
            locale_fallback=prepared.locale.fallback,
            flags=variant.flags,
            findings=[str(f) for f in findings],
            output_tokens=variant.output_tokens,
            prompt_tokens=variant.prompt_tokens,
            timings=timings,
            created_at=datetime.now(UTC),
        )

    @staticmethod
    def _empty_copy(template: PromptTemplate) -> dict[str, object]:
        """Nothing passed the filters: a banner with no products that still renders."""
        return {
            "headline": "New arrivals",
            "subheadline": "Browse what just landed in store.",
            "cta": "Browse",
            "layout": template.spec.layouts[0],
            "tone": "practical",
            "badge": None,
        }
