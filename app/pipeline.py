"""The banner pipeline: shopper -> candidates -> prompt -> constrained copy -> guards -> Banner.

This is the one entry point the CLI, the HTTP API and the eval suite call. It never raises to
its caller for model misbehaviour: a refused or failed generation is retried with another seed,
then replaced by a fallback banner built from catalog facts and flagged ``fallback: true``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.domain import Banner, Candidate, ResolvedProduct, Shopper, StageTimings
from app.generation.engine import Engine, EngineError, GenerationRequest, GenerationResult
from app.guards import GuardResult, Guards, fallback_copy
from app.prompting.context import build_context
from app.prompting.templates import PromptTemplate, RenderedPrompt, TemplateRegistry
from app.retrieval.embedder import Embedder
from app.retrieval.index import VectorIndex
from app.retrieval.selector import CandidateFilters, CandidateSelector, Selection
from app.retrieval.signals import InteractionSignals

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BannerRequest:
    """What a caller asks for. ``shopper`` (an inline profile) wins over ``shopper_id``."""

    shopper_id: str = "anonymous"
    shopper: Shopper | None = None
    template: str | None = None
    placement: str = "home_hero"
    count: int = 1
    filters: CandidateFilters = field(default_factory=CandidateFilters)


@dataclass
class _Variant:
    """One banner being made: its attempts so far."""

    number: int
    attempts: int = 0
    output_tokens: int = 0
    generation_ms: float = 0.0
    guards_ms: float = 0.0
    flags: list[str] = field(default_factory=list)
    accepted: GuardResult | None = None


def _seed(*parts: object) -> int:
    digest = hashlib.sha256(json.dumps(parts, default=str).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class Pipeline:
    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        shoppers: ShopperStore,
        selector: CandidateSelector,
        templates: TemplateRegistry,
        engine: Engine | None,
        guards: Guards,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.shoppers = shoppers
        self.selector = selector
        self.templates = templates
        self.engine = engine
        self.guards = guards

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
    ) -> Pipeline:
        signals = InteractionSignals(catalog, shoppers)
        selector = CandidateSelector(catalog, index, embedder, signals, settings)
        return cls(
            settings=settings,
            catalog=catalog,
            shoppers=shoppers,
            selector=selector,
            templates=templates or TemplateRegistry.from_folder(settings.prompts_dir),
            engine=engine,
            guards=Guards(settings.banned_terms),
        )

    # --- the stages, each callable alone ---------------------------------------------------

    def shopper(self, request: BannerRequest) -> Shopper:
        return request.shopper or self.shoppers.get(request.shopper_id)

    def template(self, request: BannerRequest) -> PromptTemplate:
        if request.template:
            return self.templates.get(request.template)
        return self.templates.default_for(request.placement)

    def candidates(
        self, shopper: Shopper, template: PromptTemplate, filters: CandidateFilters | None = None
    ) -> Selection:
        filters = filters or CandidateFilters()
        k = template.header.k
        if template.header.retrieval.focus == "top_category" and not filters.include_categories:
            # Spotlight: the category of the shopper's most relevant product, then only it.
            best = self.selector.select(shopper, 1, filters)
            if best.candidates:
                focus = (best.candidates[0].product.category,)
                filters = filters.model_copy(update={"include_categories": focus})
        return self.selector.select(shopper, k, filters)

    def render(
        self,
        shopper: Shopper,
        template: PromptTemplate,
        candidates: list[Candidate],
        placement: str,
    ) -> RenderedPrompt:
        recent: list[str] = []
        for event in sorted(shopper.history, key=lambda e: e.ts, reverse=True):
            product = self.catalog.get(event.product_id)
            if product is not None and product.title not in recent:
                recent.append(product.title)
        context = build_context(
            shopper=shopper,
            recent_titles=recent,
            candidates=candidates,
            brand=self.templates.brand,
            placement=placement,
            spec=template.spec,
        )
        return template.render(context)

    # --- the whole flow ---------------------------------------------------------------------

    async def generate(self, request: BannerRequest) -> list[Banner]:
        """``request.count`` banners. Raises only for caller errors (unknown template, a count
        out of range), never for what the model does."""
        started = time.perf_counter()
        count = request.count
        if not 1 <= count <= self.settings.max_variants:
            raise ValueError(f"count must be between 1 and {self.settings.max_variants}")
        shopper = self.shopper(request)
        template = self.template(request)

        t0 = time.perf_counter()
        selection = self.candidates(shopper, template, request.filters)
        retrieval_ms = (time.perf_counter() - t0) * 1000
        candidates = selection.candidates

        t0 = time.perf_counter()
        prompt = (
            self.render(shopper, template, candidates, request.placement)
            if len(candidates) >= template.spec.min_products
            else None
        )
        render_ms = (time.perf_counter() - t0) * 1000

        variants = [_Variant(number) for number in range(count)]
        if prompt is None:
            for variant in variants:
                variant.flags.append(f"too_few_candidates: {len(candidates)}")
        else:
            await self._attempt_all(variants, shopper, template, prompt, candidates)

        total_ms = (time.perf_counter() - started) * 1000
        return [
            self._banner(
                variant,
                shopper,
                template,
                candidates,
                selection,
                StageTimings(
                    retrieval_ms=retrieval_ms,
                    render_ms=render_ms,
                    generation_ms=variant.generation_ms,
                    guards_ms=variant.guards_ms,
                    total_ms=total_ms,
                ),
            )
            for variant in variants
        ]

    async def _attempt_all(
        self,
        variants: list[_Variant],
        shopper: Shopper,
        template: PromptTemplate,
        prompt: RenderedPrompt,
        candidates: list[Candidate],
    ) -> None:
        schema = template.output_model
        for attempt in range(self.settings.max_retries + 1):
            pending = [v for v in variants if v.accepted is None]
            if not pending:
                return
            requests = [
                GenerationRequest(
                    messages=prompt.messages,
                    schema=schema,
                    sampling=template.header.sampling,
                    seed=_seed(
                        self.settings.base_seed,
                        shopper.id,
                        template.name,
                        template.version,
                        v.number,
                        attempt,
                    ),
                )
                for v in pending
            ]
            try:
                if self.engine is None:
                    raise EngineError("no engine configured")
                results = await asyncio.wait_for(
                    self.engine.generate_many(requests), timeout=self.settings.generation_timeout_s
                )
            except (EngineError, TimeoutError) as error:
                reason = "timed out" if isinstance(error, TimeoutError) else str(error)
                log.warning("engine failed for %s/%s: %s", shopper.id, template.name, reason)
                for variant in pending:
                    variant.flags.append(f"engine_error: {reason}"[:200])
                return  # an engine that is down will not be better on the next seed
            for variant, result in zip(pending, results, strict=True):
                self._judge(variant, result, template, candidates, prompt)

    def _judge(
        self,
        variant: _Variant,
        result: GenerationResult,
        template: PromptTemplate,
        candidates: list[Candidate],
        prompt: RenderedPrompt,
    ) -> None:
        variant.attempts += 1
        variant.output_tokens += result.output_tokens
        variant.generation_ms += result.elapsed_ms
        t0 = time.perf_counter()
        verdict = self.guards.check(
            result.text,
            template.output_model,
            template.spec,
            candidates,
            template.example_outputs,
            prompt,
        )
        variant.guards_ms += (time.perf_counter() - t0) * 1000
        if verdict.ok:
            variant.accepted = verdict
        else:
            variant.flags.extend(f"attempt {variant.attempts}: {p}" for p in verdict.problems)

    @property
    def model_name(self) -> str:
        return self.engine.model if self.engine is not None else "none"

    @property
    def engine_name(self) -> str:
        return self.engine.name if self.engine is not None else "none"

    def _banner(
        self,
        variant: _Variant,
        shopper: Shopper,
        template: PromptTemplate,
        candidates: list[Candidate],
        selection: Selection,
        timings: StageTimings,
    ) -> Banner:
        if variant.accepted is not None and variant.accepted.copy is not None:
            copy = variant.accepted.copy.model_dump()
            chosen = variant.accepted.products
            fallback = False
        else:
            personal = not selection.trace.cold_start
            copy, chosen = (
                fallback_copy(candidates, template.spec, personal)
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
                        [c.product.id for c in candidates],
                        self.model_name,
                        variant.number,
                    ]
                ).encode()
            ).hexdigest()[:24]
        )
        return Banner(
            id=banner_id,
            shopper_id=shopper.id,
            template=template.name,
            template_version=template.version,
            variant=variant.number,
            headline=copy["headline"],
            subheadline=copy["subheadline"],
            cta=copy["cta"],
            layout=copy["layout"],
            badge=copy.get("badge"),
            tone=copy.get("tone"),
            products=[
                ResolvedProduct(
                    id=c.product.id,
                    title=c.product.title,
                    price=c.product.price,
                    currency=c.product.currency,
                    url=str(c.product.url),
                    image_url=str(c.product.image_url) if c.product.image_url else None,
                )
                for c in chosen
            ],
            model=self.model_name,
            engine=self.engine_name,
            fallback=fallback,
            retries=max(0, variant.attempts - 1),
            flags=variant.flags,
            output_tokens=variant.output_tokens,
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
