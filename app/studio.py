"""The template studio: what marketers do with templates, over the one pipeline.

Lint before save, versioned saves, label moves (publish, rollback, experiment arms), previews
with the real retrieval and engine, diffs, experiment read-outs. The HTTP API and the studio
web page both call this; neither touches the store or the pipeline's templates directly.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from app.domain import Banner, Shopper
from app.experiments import Rate, verdict, wilson
from app.pipeline import BannerRequest, Pipeline
from app.prompting.lint import LintProblem, LintResult, lint
from app.prompting.sandbox import TemplateError
from app.prompting.templates import PRODUCTION, PromptTemplate, RenderedPrompt, Split
from app.store.feedback import FeedbackStore
from app.store.templates import StoredVersion, TemplateStore

SAMPLE_SHOPPERS = 3  # known shoppers with histories a saved template must render for


class LintFailed(Exception):
    def __init__(self, problems: list[LintProblem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


@dataclass(frozen=True)
class Preview:
    template: str
    version: int | None  # None: unsaved text
    label: str | None
    shopper_id: str
    prompt: RenderedPrompt | None
    problems: list[LintProblem]
    banners: list[Banner]


@dataclass(frozen=True)
class TemplateSummary:
    name: str
    latest: int
    labels: dict[str, int]
    placement: str | None  # None: only drafts so far, nothing serves it yet
    description: str | None


@dataclass(frozen=True)
class ArmReport:
    template: str
    version: int
    label: str
    impressions: int
    ctr: Rate
    conversion: Rate


@dataclass(frozen=True)
class ExperimentReport:
    placement: str
    split: Split | None
    arms: list[ArmReport]
    ctr_verdict: str | None  # control vs variant, when both arms have data
    conversion_verdict: str | None


class Studio:
    def __init__(self, store: TemplateStore, feedback: FeedbackStore, pipeline: Pipeline) -> None:
        self.store = store
        self.feedback = feedback
        self.pipeline = pipeline
        self._revision = -1

    async def reload(self) -> None:
        """Serve what the store now says (labels, splits): one assignment, no mixed state."""
        revision = await self.store.revision()
        self.pipeline.templates = await self.store.registry(self.pipeline.templates.brand)
        self._revision = revision

    async def reload_if_changed(self) -> bool:
        """Pick up label moves made through another replica (they share the database)."""
        if await self.store.revision() == self._revision:
            return False
        await self.reload()
        return True

    async def summaries(self) -> list[TemplateSummary]:
        """Every stored template, its newest version, labels, and what it serves."""
        labels = await self.store.labels()
        found = []
        for name, latest in (await self.store.latest_versions()).items():
            try:
                header = self.pipeline.templates.get(name).header
            except KeyError:
                header = None
            found.append(
                TemplateSummary(
                    name=name,
                    latest=latest,
                    labels=labels.get(name, {}),
                    placement=header.placement if header else None,
                    description=header.description if header else None,
                )
            )
        return found

    # --- lint and save -------------------------------------------------------------------------

    def _samples(self) -> list[Shopper]:
        known = [s for s in self.pipeline.shoppers.all() if s.history][:SAMPLE_SHOPPERS]
        return [*known, Shopper(id="lint-cold-start")]

    def _try_render(self, template: PromptTemplate) -> None:
        for shopper in self._samples():
            selection = self.pipeline.candidates(shopper, template)
            self.pipeline.render(shopper, template, selection.candidates, template.header.placement)

    def lint(self, name: str, source: str) -> LintResult:
        return lint(source, name, self._try_render)

    async def save(
        self,
        name: str,
        source: str,
        *,
        author: str,
        message: str,
        draft: bool = False,
        expected_latest: int | None,
    ) -> tuple[StoredVersion, list[LintProblem]]:
        """Lint, then store a new version. A failing lint stores nothing, unless ``draft``
        (a draft keeps work in progress; it can never be labelled)."""
        result = self.lint(name, source)
        if not result.ok and not draft:
            raise LintFailed(result.problems)
        stored = await self.store.save(
            name,
            source,
            author=author,
            message=message,
            draft=draft,
            expected_latest=expected_latest,
        )
        return stored, result.problems

    # --- labels and experiments ----------------------------------------------------------------

    async def move_label(
        self,
        name: str,
        label: str,
        version: int,
        *,
        actor: str,
        expected_current: int | None = None,
        check_expected: bool = False,
    ) -> int | None:
        previous = await self.store.move_label(
            name,
            label,
            version,
            actor=actor,
            expected_current=expected_current,
            check_expected=check_expected,
        )
        await self.reload()
        return previous

    async def set_split(self, placement: str, split: Split | None, *, actor: str) -> None:
        if split is not None:
            labels = (await self.store.labels(split.template)).get(split.template, {})
            missing = [label for label in (split.control, split.variant) if label not in labels]
            if missing:
                raise LookupError(
                    f"template '{split.template}' has no label {', '.join(missing)} "
                    f"(labels: {', '.join(sorted(labels)) or 'none'})"
                )
            placement_of = self.pipeline.templates.get(split.template).header.placement
            if placement_of != placement:
                raise ValueError(
                    f"template '{split.template}' serves placement '{placement_of}', "
                    f"not '{placement}'"
                )
        await self.store.set_split(placement, split, actor=actor)
        await self.reload()

    async def experiment(self, placement: str) -> ExperimentReport:
        arms = [
            ArmReport(
                template=c.template,
                version=c.version,
                label=c.label,
                impressions=c.impressions,
                ctr=wilson(c.clicks, c.impressions),
                conversion=wilson(c.conversions, c.impressions),
            )
            for c in await self.feedback.counts(placement)
        ]
        split = self.pipeline.templates.splits.get(placement)
        ctr_verdict = conversion_verdict = None
        if split is not None:
            control = _pooled(arms, split.template, split.control)
            variant = _pooled(arms, split.template, split.variant)
            if control and variant:
                ctr_verdict = verdict(control[0], variant[0])
                conversion_verdict = verdict(control[1], variant[1])
        return ExperimentReport(placement, split, arms, ctr_verdict, conversion_verdict)

    # --- looking at templates ------------------------------------------------------------------

    async def diff(self, name: str, old: int, new: int) -> str:
        before, after = await self.store.get(name, old), await self.store.get(name, new)
        if before is None or after is None:
            missing = old if before is None else new
            raise LookupError(f"template '{name}' has no version {missing}")
        return "".join(
            difflib.unified_diff(
                before.source.splitlines(keepends=True),
                after.source.splitlines(keepends=True),
                fromfile=f"{name} v{old}",
                tofile=f"{name} v{new}",
            )
        )

    async def preview(
        self,
        name: str,
        request: BannerRequest,
        *,
        version: int | None = None,
        label: str | None = None,
        source: str | None = None,
        generate: int = 0,
    ) -> Preview:
        """Render (and optionally generate) with a stored version, a label, or unsaved text."""
        problems: list[LintProblem] = []
        template: PromptTemplate | None
        if source is not None:
            result = self.lint(name, source)
            template, problems = result.template, result.problems
        elif version is not None:
            stored = await self.store.get(name, version)
            if stored is None:
                raise LookupError(f"template '{name}' has no version {version}")
            template = stored.parsed()
        else:
            template = self.pipeline.templates.get(name, label or PRODUCTION)
        shopper_id = request.shopper.id if request.shopper else request.shopper_id
        if template is None or problems:
            return Preview(name, None, label, shopper_id, None, problems, [])
        try:
            prepared = self.pipeline.prepare(replace(request, count=max(1, generate)), template)
        except TemplateError as error:
            problem = LintProblem(error.line, error.message)
            return Preview(name, version, label, shopper_id, None, [problem], [])
        banners: list[Banner] = []
        if generate and prepared.prompt is not None:
            banners = await self.pipeline.complete(prepared)
        return Preview(
            name,
            template.version if source is None else None,
            label,
            shopper_id,
            prepared.prompt,
            [],
            banners,
        )


def _pooled(arms: list[ArmReport], template: str, label: str) -> tuple[Rate, Rate] | None:
    """One label's numbers over all the versions it pointed at during the experiment."""
    mine = [a for a in arms if a.template == template and a.label == label]
    if not mine:
        return None
    impressions = sum(a.impressions for a in mine)
    clicks = sum(a.ctr.successes for a in mine)
    conversions = sum(a.conversion.successes for a in mine)
    return wilson(clicks, impressions), wilson(conversions, impressions)
