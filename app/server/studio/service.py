"""The template studio: what marketers do with templates, over the one pipeline.

Lint before save, versioned saves, label moves (publish, rollback, experiment arms), previews
with the real retrieval and engine, diffs, experiment read-outs, the audit log. The API and the
studio's pages both call this service; it alone touches the template store, the feedback store
and the pipeline's templates. Refusals are problems of a known kind (app/server/errors.py):
the API returns them as they are, the pages show their detail.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from app.domain import LABEL_PATTERN, MAX_VERSION, NAME_PATTERN, Banner, Shopper
from app.events import Events, NoEvents
from app.logs import get_logger
from app.pipeline import BannerRequest, Pipeline
from app.prompting.lint import LintProblem, LintResult, lint
from app.prompting.sandbox import TemplateError
from app.prompting.templates import (
    BRAND,
    BRAND_FILE,
    MAX_TEMPLATE_BYTES,
    PRODUCTION,
    TEMPLATE_SUFFIX,
    PromptTemplate,
    RenderedPrompt,
    Split,
    line_of_field,
    parse_brand,
)
from app.server.errors import Problem, invalid
from app.server.limits import GenerationLimit
from app.server.studio.experiments import (
    Rate,
    always_valid_p_value,
    probability_better,
    thompson_share,
    verdict,
    wilson,
)
from app.store.feedback import ArmCounts, FeedbackStore
from app.store.templates import AuditEntry, Conflict, StoredVersion, TemplateStore, VersionInfo

log = get_logger(__name__)

# What the slice's controllers and pages use: they import from here, never the core or stores.
__all__ = [
    "PRODUCTION",
    "ArmReport",
    "AuditEntry",
    "Diff",
    "ExperimentReport",
    "LabelMoved",
    "LintFailed",
    "LintProblem",
    "Preview",
    "Split",
    "StudioService",
    "TemplateDetail",
    "TemplateSummary",
    "VersionView",
]

BRAND_DESCRIPTION = "The brand rules every template sees: name, voice, rules, banned terms"
SAMPLE_SHOPPERS = 3  # known shoppers with histories a saved template must render for
MAX_PREVIEW_BANNERS = 4


class LintFailed(Problem):
    """A template that does not pass lint: nothing was saved."""

    def __init__(self, problems: list[LintProblem]) -> None:
        super().__init__(
            "lint-failed",
            f"{len(problems)} problem(s); nothing was saved",
            errors=_field_errors(problems),
        )
        self.problems = problems


def _field_errors(problems: list[LintProblem]) -> list[dict[str, Any]]:
    return [{"field": "source", "line": p.line, "message": p.message} for p in problems]


def _checked_name(name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise invalid("name", "2-49 lowercase letters, digits or '_', from a letter")
    return name


def _checked_label(label: str) -> str:
    if not re.fullmatch(LABEL_PATTERN, label):
        raise invalid("label", "2-40 lowercase letters, digits, '_' or '-', from a letter")
    return label


def _checked_version(version: int | None, field: str) -> int | None:
    """Versions the store can hold (None: not given); the pages' forms arrive unchecked."""
    if version is not None and not 1 <= version <= MAX_VERSION:
        raise invalid(field, f"a version number, 1 to {MAX_VERSION}")
    return version


def _conflict(error: Conflict) -> Problem:
    return Problem("conflict", str(error), current_version=error.current)


def _not_found(error: LookupError) -> Problem:
    return Problem("not-found", str(error.args[0]) if error.args else "not found")


@dataclass(frozen=True)
class TemplateSummary:
    name: str
    latest: int
    labels: dict[str, int]
    placement: str | None  # None: only drafts so far, nothing serves it yet
    description: str | None


@dataclass(frozen=True)
class TemplateDetail:
    name: str
    labels: dict[str, int]
    versions: list[VersionInfo]  # newest first


@dataclass(frozen=True)
class VersionView(StoredVersion):
    """A version with its text, the labels on it, and its lint findings."""

    labels: list[str]
    problems: list[LintProblem]


@dataclass(frozen=True)
class LabelMoved:
    name: str
    label: str
    version: int
    previous: int | None


@dataclass(frozen=True)
class Diff:
    name: str
    from_version: int
    to_version: int
    diff: str


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
class ArmReport(ArmCounts):
    """One arm's counts with their rates."""

    ctr: Rate
    conversion_rate: Rate


@dataclass(frozen=True)
class ExperimentReport:
    placement: str
    split: Split | None
    arms: list[ArmReport]
    ctr_verdict: str | None  # control vs variant, when both arms have data
    conversion_verdict: str | None
    # Beside the verdict: its always-valid p-value, and the chance that the variant has the
    # better click rate (what a thompson split sets its share from).
    ctr_p_value: float | None = None
    variant_better: float | None = None


class StudioService:
    def __init__(
        self,
        store: TemplateStore,
        feedback: FeedbackStore,
        pipeline: Pipeline,
        limit: GenerationLimit,
        events: Events | None = None,
    ) -> None:
        self.store = store
        self.feedback = feedback
        self.pipeline = pipeline
        self.limit = limit
        self.events: Events = events or NoEvents()  # template.published
        self._revision = -1

    async def reload(self) -> None:
        """Serve what the store now says (labels, splits): one swap, no mixed state."""
        revision = await self.store.revision()
        self.pipeline.use_templates(await self.store.registry(self.pipeline.templates.brand))
        self._revision = revision

    async def reload_if_changed(self) -> bool:
        """Pick up label moves made through another replica (they share the database)."""
        if await self.store.revision() == self._revision:
            return False
        await self.reload()
        return True

    async def move_bandits(self, now: datetime | None = None) -> list[str]:
        """Set the weight of every thompson split whose period is over, from the clicks so far
        (each replica asks; the first one to write wins, the others read it). Returns the
        placements moved here."""
        now = now or datetime.now(UTC)
        moved = []
        for placement, split in self.pipeline.templates.splits.items():
            if not split.due(now):
                continue
            arms = await self.feedback.counts(placement)
            nothing = (wilson(0, 0), wilson(0, 0))
            control = _pooled(arms, split.template, split.control) or nothing
            variant = _pooled(arms, split.template, split.variant) or nothing
            weight = thompson_share(control[0], variant[0], split.min_share)
            if await self.store.move_bandit(placement, split, weight):
                log.info("bandit_moved", placement=placement, variant_weight=round(weight, 3))
                moved.append(placement)
        if moved:
            await self.reload()
        return moved

    # --- reading -------------------------------------------------------------------------------

    async def summaries(self) -> list[TemplateSummary]:
        """Every stored template, its newest version, labels, and what it serves."""
        labels = await self.store.labels()
        found = []
        for name, latest in (await self.store.latest_versions()).items():
            try:
                header = self.pipeline.templates.get(name).header
            except KeyError:
                header = None
            description = header.description if header else None
            if name == BRAND:
                description = BRAND_DESCRIPTION
            found.append(
                TemplateSummary(
                    name=name,
                    latest=latest,
                    labels=labels.get(name, {}),
                    placement=header.placement if header else None,
                    description=description,
                )
            )
        return found

    async def versions(self, name: str) -> list[StoredVersion]:
        """Newest first; not-found when there is no such template."""
        versions = await self.store.versions(name)
        if not versions:
            raise Problem("not-found", f"no template '{name}'")
        return versions

    async def labels(self, name: str) -> dict[str, int]:
        return (await self.store.labels(name)).get(name, {})

    async def detail(self, name: str) -> TemplateDetail:
        versions = await self.versions(name)
        return TemplateDetail(name, await self.labels(name), [v.info() for v in versions])

    async def version(self, name: str, version: int) -> VersionView:
        return await self._view(await self._stored(name, version), [])

    @staticmethod
    def file_name(name: str) -> str:
        """What a stored document is called as a file in the prompts folder."""
        return BRAND_FILE if name == BRAND else f"{name}{TEMPLATE_SUFFIX}"

    def placement(self, name: str) -> str | None:
        """The placement a template serves; None while it has only drafts."""
        try:
            return self.pipeline.templates.get(name).header.placement
        except KeyError:
            return None

    def shopper_ids(self, limit: int) -> list[str]:
        return [s.id for s in self.pipeline.shoppers.all()][:limit]

    async def audit(self, template: str | None, limit: int) -> list[AuditEntry]:
        return await self.store.audit(template, limit)

    async def diff(self, name: str, old: int, new: int) -> Diff:
        before, after = await self._stored(name, old), await self._stored(name, new)
        text = "".join(
            difflib.unified_diff(
                before.source.splitlines(keepends=True),
                after.source.splitlines(keepends=True),
                fromfile=f"{name} v{old}",
                tofile=f"{name} v{new}",
            )
        )
        return Diff(name, old, new, text)

    async def _stored(self, name: str, version: int) -> StoredVersion:
        _checked_version(version, "version")
        stored = await self.store.get(name, version)
        if stored is None:
            raise Problem("not-found", f"template '{name}' has no version {version}")
        return stored

    async def _view(self, stored: StoredVersion, problems: list[LintProblem]) -> VersionView:
        labels = await self.labels(stored.name)
        on_it = sorted(label for label, v in labels.items() if v == stored.version)
        return VersionView(**stored.__dict__, labels=on_it, problems=problems)

    # --- lint and save -------------------------------------------------------------------------

    def _samples(self) -> list[Shopper]:
        known = [s for s in self.pipeline.shoppers.all() if s.history][:SAMPLE_SHOPPERS]
        return [*known, Shopper(id="lint-cold-start")]

    def _try_render(self, template: PromptTemplate, pipeline: Pipeline | None = None) -> None:
        pipeline = pipeline or self.pipeline
        for shopper in self._samples():
            selection = pipeline.candidates(shopper, template)
            pipeline.render(shopper, template, selection, template.header.placement)

    def lint(self, name: str, source: str) -> LintResult:
        if name == BRAND:
            return self._lint_brand(source)
        result = lint(source, name, self._try_render)
        if result.template is None:
            return result
        variant = self._variant_problems(result.template, source)
        return replace(result, problems=result.problems + variant)

    def _variant_problems(self, template: PromptTemplate, source: str) -> list[LintProblem]:
        """A locale variant stands in for a template in production, in its place and with its
        schema (the CMS renders the placement's fields)."""
        header = template.header
        if header.variant_of is None:
            return []
        try:
            base = self.pipeline.templates.get(header.variant_of)
        except KeyError:
            return [
                LintProblem(
                    line_of_field(source, "variant_of"),
                    f"variant_of: no template '{header.variant_of}' in production",
                )
            ]
        problems = []
        if base.header.variant_of is not None:
            problems.append(
                LintProblem(
                    line_of_field(source, "variant_of"),
                    f"variant_of: '{base.name}' is itself a variant of '{base.header.variant_of}'",
                )
            )
        for field, mine, theirs in (
            ("placement", header.placement, base.header.placement),
            ("schema", header.schema_name, base.header.schema_name),
        ):
            if mine != theirs:
                problems.append(
                    LintProblem(
                        line_of_field(source, field),
                        f"{field}: '{mine}', but '{base.name}' has '{theirs}' (a variant takes "
                        "its place)",
                    )
                )
        return problems

    def _lint_brand(self, source: str) -> LintResult:
        """Brand rules must parse, and every template in production must still render with
        them; an example that uses a term they ban would teach the model to write it."""
        try:
            brand = parse_brand(source)
        except TemplateError as error:
            return LintResult(None, [LintProblem(error.line, error.message)])
        trial = self._with_brand(brand)
        problems = []
        for name in trial.templates.names:
            template = trial.templates.get(name)
            try:
                self._try_render(template, trial)
            except TemplateError as error:
                where = f" line {error.line}" if error.line else ""
                problems.append(
                    LintProblem(
                        None, f"template '{name}'{where} fails with these rules: {error.message}"
                    )
                )
            for number, output in enumerate(template.example_outputs, 1):
                for text in output.values():
                    term = trial.guards.banned_term(text) if isinstance(text, str) else None
                    if term is not None:
                        problems.append(
                            LintProblem(
                                _line_of_term(source, term),
                                f"'{term}' is banned, but template '{name}' example {number} "
                                "writes it: change the example first",
                            )
                        )
        return LintResult(None, problems, brand=brand)

    def _with_brand(self, brand: dict[str, Any]) -> Pipeline:
        return self.pipeline.trying(self.pipeline.templates.with_brand(brand))

    async def save(
        self,
        name: str,
        source: str,
        *,
        author: str,
        message: str,
        draft: bool = False,
        expected_latest: int | None,
    ) -> VersionView:
        """Lint, then store a new version. A failing lint stores nothing (LintFailed), unless
        ``draft`` (a draft keeps work in progress; it can never be labelled)."""
        result = self.lint(_checked_name(name), source)
        if not result.ok and not draft:
            raise LintFailed(result.problems)
        try:
            stored = await self.store.save(
                name,
                source,
                author=author,
                message=message,
                draft=draft,
                expected_latest=_checked_version(expected_latest, "base_version"),
            )
        except Conflict as error:
            raise _conflict(error) from None
        return await self._view(stored, result.problems)

    async def import_file(
        self, name: str, body: bytes, *, author: str, message: str
    ) -> VersionView:
        """A template file as a new version on top of the newest one: an import is a deliberate
        replacement (the version history and the audit log keep what was there)."""
        try:
            source = body.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid("body", "not UTF-8", "the file is not UTF-8 text") from None
        if not source.strip() or len(body) > MAX_TEMPLATE_BYTES:
            raise invalid(
                "body", "empty or too large", f"the file must be 1 to {MAX_TEMPLATE_BYTES} bytes"
            )
        latest = await self.store.latest(name)
        return await self.save(name, source, author=author, message=message, expected_latest=latest)

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
    ) -> LabelMoved:
        _checked_version(version, "version")
        try:
            previous = await self.store.move_label(
                name,
                _checked_label(label),
                version,
                actor=actor,
                expected_current=_checked_version(expected_current, "expected"),
                check_expected=check_expected,
            )
        except LookupError as error:
            raise _not_found(error) from None
        except Conflict as error:
            raise _conflict(error) from None
        except ValueError as error:  # a draft
            raise Problem(
                "draft-not-labelled",
                str(error),
                errors=[{"field": "version", "message": str(error)}],
            ) from None
        await self.reload()
        if label == PRODUCTION and previous != version:
            await self.events.emit(
                "template.published",
                {"template": name, "version": version, "label": label, "actor": actor},
            )
        return LabelMoved(name, label, version, previous)

    async def set_split(self, placement: str, split: Split | None, *, actor: str) -> None:
        """Start or change (``split``) or stop (None) a placement's experiment."""
        if split is not None:
            labels = await self.labels(split.template)
            missing = [label for label in (split.control, split.variant) if label not in labels]
            if missing:
                raise Problem(
                    "not-found",
                    f"template '{split.template}' has no label {', '.join(missing)} "
                    f"(labels: {', '.join(sorted(labels)) or 'none'})",
                )
            placement_of = self.placement(split.template)
            if placement_of != placement:
                detail = (
                    f"template '{split.template}' serves placement '{placement_of}', "
                    f"not '{placement}'"
                )
                raise Problem(
                    "invalid-experiment", detail, errors=[{"field": "template", "message": detail}]
                )
        await self.store.set_split(placement, split, actor=actor)
        await self.reload()

    async def experiment(self, placement: str) -> ExperimentReport:
        arms = [
            ArmReport(
                **counts.__dict__,
                ctr=wilson(counts.clicks, counts.impressions),
                conversion_rate=wilson(counts.conversions, counts.impressions),
            )
            for counts in await self.feedback.counts(placement)
        ]
        split = self.pipeline.templates.splits.get(placement)
        if split is None:
            return ExperimentReport(placement, split, arms, None, None)
        control = _pooled(arms, split.template, split.control)
        variant = _pooled(arms, split.template, split.variant)
        if not (control and variant):
            return ExperimentReport(placement, split, arms, None, None)
        return ExperimentReport(
            placement,
            split,
            arms,
            verdict(control[0], variant[0]),
            verdict(control[1], variant[1]),
            ctr_p_value=round(always_valid_p_value(control[0], variant[0]), 4),
            variant_better=round(probability_better(control[0], variant[0]), 4),
        )

    # --- previews ------------------------------------------------------------------------------

    async def preview(
        self,
        name: str,
        shopper_id: str,
        *,
        shopper: Shopper | None = None,
        version: int | None = None,
        label: str | None = None,
        source: str | None = None,
        generate: int = 0,
    ) -> Preview:
        """Render (and optionally generate, taking a generation slot) with a stored version, a
        label, or unsaved text, for a stored shopper or an inline one (``shopper`` wins)."""
        if not 0 <= generate <= MAX_PREVIEW_BANNERS:
            raise invalid(
                "generate",
                f"0 to {MAX_PREVIEW_BANNERS}",
                f"generate: 0 to {MAX_PREVIEW_BANNERS} banners",
            )
        request = BannerRequest(shopper_id=shopper_id, shopper=shopper, count=max(1, generate))
        if name == BRAND:
            return await self._preview_brand(request, version, label, source, generate)
        problems: list[LintProblem] = []
        template: PromptTemplate | None
        if source is not None:
            result = self.lint(name, source)
            template, problems = result.template, result.problems
        elif version is not None:
            template = (await self._stored(name, version)).parsed()
        else:
            try:
                template = self.pipeline.templates.get(name, label or PRODUCTION)
            except KeyError as error:
                raise _not_found(error) from None
        if template is None or problems:
            return Preview(name, None, label, _subject(request), None, problems, [])
        shown = template.version if source is None else None
        return await self._generate_preview(
            self.pipeline, name, template, request, shown, label, generate
        )

    async def _preview_brand(
        self,
        request: BannerRequest,
        version: int | None,
        label: str | None,
        source: str | None,
        generate: int,
    ) -> Preview:
        """Brand rules previewed through the placement's production template: its prompt
        under these rules, and banners judged by their banned terms."""
        if source is not None:
            result = self._lint_brand(source)
            if result.brand is None or result.problems:
                return Preview(BRAND, None, label, _subject(request), None, result.problems, [])
            brand = result.brand
        elif version is not None:
            brand = parse_brand((await self._stored(BRAND, version)).source)
        elif label is None or label == PRODUCTION:
            brand = self.pipeline.templates.brand
        else:
            labelled = (await self.labels(BRAND)).get(label)
            if labelled is None:
                raise Problem("not-found", f"the brand rules have no label '{label}'")
            brand = parse_brand((await self._stored(BRAND, labelled)).source)
        trial = self._with_brand(brand)
        try:
            template = trial.templates.default_for(request.placement)
        except KeyError as error:
            raise _not_found(error) from None
        shown = version if source is None else None
        # The preview names the template that rendered (the rules have no prompt of their own).
        return await self._generate_preview(
            trial, template.name, template, request, shown, label, generate
        )

    async def _generate_preview(
        self,
        pipeline: Pipeline,
        name: str,
        template: PromptTemplate,
        request: BannerRequest,
        version: int | None,
        label: str | None,
        generate: int,
    ) -> Preview:
        shopper_id = _subject(request)
        try:
            prepared = pipeline.prepare(request, template)
        except TemplateError as error:
            problem = LintProblem(error.line, error.message)
            return Preview(name, version, label, shopper_id, None, [problem], [])
        banners: list[Banner] = []
        if generate and prepared.prompt is not None:
            async with self.limit.slot():
                banners = await pipeline.complete(prepared)
        return Preview(name, version, label, shopper_id, prepared.prompt, [], banners)


def _subject(request: BannerRequest) -> str:
    """The id of the shopper a preview is for (an inline profile's, else the one asked)."""
    return request.shopper.id if request.shopper else request.shopper_id


def _line_of_term(source: str, term: str) -> int | None:
    """The line of the brand rules that lists ``term`` (where a marketer would fix it)."""
    wanted = term.casefold()
    for number, line in enumerate(source.splitlines(), 1):
        if wanted in line.casefold():
            return number
    return None


def _pooled(arms: Sequence[ArmCounts], template: str, label: str) -> tuple[Rate, Rate] | None:
    """One label's numbers over all the versions it pointed at during the experiment."""
    mine = [a for a in arms if a.template == template and a.label == label]
    if not mine:
        return None
    impressions = sum(a.impressions for a in mine)
    clicks = sum(a.clicks for a in mine)
    conversions = sum(a.conversions for a in mine)
    return wilson(clicks, impressions), wilson(conversions, impressions)
