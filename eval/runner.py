"""``marquee eval``: run a suite, compare two arms, check thresholds, write the report.

Everything goes through the one pipeline (retrieval: its ``CandidateSelector``; copy:
``Pipeline.prepare`` and ``Pipeline.complete``), built by ``app.runtime`` like the CLI and the
service build it.
"""

from __future__ import annotations

import asyncio
import copy as shallow
import json
import operator
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from app.config import PROJECT_ROOT, Settings
from app.domain import Shopper
from app.pipeline import Pipeline
from app.prompting.templates import PRODUCTION, PromptTemplate
from eval import baseline as baseline_runs
from eval import copy_quality, datasets, interests, metrics, retrieval
from eval import rubric as rubric_eval
from eval.judge import NOT_RUN, Judge

THRESHOLDS = PROJECT_ROOT / "eval" / "thresholds.yaml"
OPERATORS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
# For the A/B verdicts: which way is better, per metric.
HIGHER_IS_BETTER = {
    "schema_valid": True,
    "grounded": True,
    "invented_claims": False,
    "fallback": False,
    "retries": False,
    "length_ok": True,
    "degenerate": False,
    "banned_hits": False,
    "latency_ms": False,
    "personalization_lift": True,
}


@dataclass(frozen=True)
class Suite:
    datasets: tuple[str, ...]
    variants: tuple[str, ...]
    search: bool
    copy_shoppers: int
    templates: tuple[str, ...]
    max_users: int | None = None  # MovieLens users evaluated (None: all)


SUITES = {
    "smoke": Suite(("demo",), ("marquee",), False, 6, ("hero_banner",)),
    "full": Suite(
        ("demo", "movielens"),
        tuple(retrieval.VARIANTS),
        True,
        24,
        ("hero_banner", "grid_heading", "category_spotlight"),
    ),
}


@dataclass
class Arm:
    """One side of a comparison: a template version (or label), on an engine."""

    name: str
    template: str
    version: PromptTemplate | None = None  # None: what the pipeline serves
    engine: str | None = None


@dataclass
class Outcome:
    summary: dict[str, Any]
    checks: list[dict[str, Any]]
    worst: list[dict[str, Any]] = field(default_factory=list)
    # Every banner served, as a person reads it (banners.jsonl): read them, not only the numbers.
    banners: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check["passed"] for check in self.checks)


def copy_shoppers(pipeline: Pipeline, count: int) -> list[Shopper]:
    """Shoppers with a history first (sorted by id, so every run takes the same), plus one
    cold-start shopper: copy must also work for someone the store knows nothing about."""
    known = sorted((s for s in pipeline.shoppers.all() if s.history), key=lambda s: s.id)
    return [*known[: max(1, count - 1)], Shopper(id="eval-cold-start")]


def resolve_arm(spec: str, settings: Settings, default_template: str) -> Arm:
    """``hero_banner@3`` (a stored version), ``hero_banner:staging`` (a label),
    ``hero_banner`` (production), or ``engine:vllm`` (production on another engine)."""
    if spec.startswith("engine:"):
        return Arm(spec, default_template, None, spec.split(":", 1)[1])
    from app.runtime import read_templates
    from app.store.templates import StoredVersion, TemplateStore

    name, version, label = spec, None, PRODUCTION
    if "@" in spec:
        name, raw = spec.split("@", 1)
        version = int(raw)
    elif ":" in spec:
        name, label = spec.split(":", 1)

    async def find(store: TemplateStore) -> StoredVersion | None:
        if version is None:
            pointed = (await store.labels(name)).get(name, {}).get(label)
            return None if pointed is None else await store.get(name, pointed)
        return await store.get(name, version)

    stored = read_templates(settings, find)
    if stored is None:
        raise ValueError(f"no template version for '{spec}'")
    return Arm(spec, name, stored.parsed())


def run(
    settings: Settings,
    suite_name: str = "smoke",
    *,
    engine: str | None = None,
    compare: tuple[str, str] | None = None,
    out_dir: Path | None = None,
    baseline: Path | None = None,
) -> Outcome:
    """``baseline``: an earlier run's summary.json; the differences go into this summary (and
    are printed). Every run is also appended to ``<out>/history.jsonl``."""
    from app.runtime import build_pipeline, load_embedder, make_engine

    suite = SUITES[suite_name]
    earlier = None if baseline is None else baseline_runs.load(baseline)  # fail before the work
    started = time.perf_counter()
    out_dir = out_dir or settings.cache_dir / "eval" / suite_name
    embedder = load_embedder(settings)
    summary: dict[str, Any] = {
        "suite": suite_name,
        "engine": engine or settings.engine,
        "retrieval": {},
        "search": {},
        "copy": {},
        "datasets": {},
        "themes": {},
        # How far the publishability rubric can be trusted, on copy labelled by hand.
        "rubric": rubric_eval.scores(rubric_eval.load()),
    }

    for name in suite.datasets:
        dataset = (
            datasets.movielens(settings, suite.max_users)
            if name == "movielens"
            else datasets.demo(settings)
        )
        summary["datasets"][name] = dataset.description
        variants = {v: retrieval.VARIANTS[v] for v in suite.variants}
        rows = retrieval.evaluate(dataset, embedder, settings, variants)
        summary["retrieval"][name] = {row.recommender: row.as_dict() for row in rows}
        cold = retrieval.evaluate_cold_start(dataset, embedder, settings)
        if cold:
            summary["datasets"][cold[0].dataset] = (
                f"{cold[0].shoppers} held-out shoppers of {name} who stated interests, their "
                "history taken away: a first visit"
            )
            summary["retrieval"][cold[0].dataset] = {row.recommender: row.as_dict() for row in cold}
    clothing = None
    if suite.search:
        clothing = datasets.clothing(settings)
        summary["datasets"]["clothing"] = clothing.description
        rows = retrieval.evaluate_search(clothing, embedder, settings)
        summary["search"]["clothing"] = {row.recommender: row.as_dict() for row in rows}

    # Arms are read from the database first: every await of the copy phase then runs in one
    # event loop (an engine's HTTP client belongs to the loop that opened it).
    arms = [resolve_arm(spec, settings, suite.templates[0]) for spec in compare or ()]
    pipeline = build_pipeline(settings, engine=make_engine(settings, engine), with_changes=False)
    worst, banners = asyncio.run(_copy_phase(pipeline, settings, suite, summary, clothing, arms))

    summary["seconds"] = round(time.perf_counter() - started, 1)
    if earlier is not None:
        summary["baseline"] = baseline_runs.differences(summary, earlier, HIGHER_IS_BETTER)
        baseline_runs.print_differences(summary["baseline"])
    checks = check_thresholds(summary, suite_name)
    outcome = Outcome(summary, checks, worst, banners)
    write(outcome, out_dir)
    baseline_runs.record(summary, outcome.passed, out_dir)
    return outcome


async def _copy_phase(
    pipeline: Pipeline,
    settings: Settings,
    suite: Suite,
    summary: dict[str, Any],
    clothing: datasets.EvalDataset | None,
    arms: list[Arm],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Generate and measure every banner of the suite; fills ``summary``, returns the worst
    and every banner as a person reads it."""
    worst: list[dict[str, Any]] = []
    served: list[copy_quality.CopySample] = []
    try:
        summary["themes"]["demo"] = interests.theme_accuracy(pipeline, interests.load("demo"))
        shoppers = copy_shoppers(pipeline, suite.copy_shoppers)
        all_samples: list[copy_quality.CopySample] = []
        for template in suite.templates:
            all_samples += await copy_quality.generate(
                pipeline, shoppers, template, None, template, settings.banned_terms
            )
        lift = copy_quality.lift_of(all_samples, pipeline)
        summary["copy"]["default"] = copy_quality.summarise(all_samples, lift)
        summary["copy"]["default"]["judge"] = await _judge(pipeline, settings, all_samples)
        worst += copy_quality.worst(all_samples)
        served += all_samples
        if clothing is not None:
            samples = await _clothing_copy(
                pipeline, clothing, settings, suite.copy_shoppers // 2, summary
            )
            summary["copy"]["clothing"] = copy_quality.summarise(
                samples, copy_quality.lift_of(samples, pipeline)
            )
            worst += copy_quality.worst(samples)
            served += samples
        if arms:
            summary["compare"], arm_samples = await _compare(pipeline, settings, arms, shoppers)
            worst += copy_quality.worst(arm_samples)
            served += arm_samples
    finally:
        await pipeline.close()
    return worst, [copy_quality.readable(sample) for sample in served]


async def _judge(
    pipeline: Pipeline, settings: Settings, samples: list[copy_quality.CopySample]
) -> dict[str, Any]:
    """The rubric scores of a configured judge (eval/judge.py), or why there are none."""
    voice = str(pipeline.templates.brand.get("voice", ""))
    judge = Judge.from_settings(settings, voice)
    if judge is None:
        return dict(NOT_RUN)
    try:
        return await judge.score_all([copy_quality.judged(s) for s in samples])
    finally:
        await judge.close()


async def _clothing_copy(
    pipeline: Pipeline,
    clothing: datasets.EvalDataset,
    settings: Settings,
    count: int,
    summary: dict[str, Any],
) -> list[copy_quality.CopySample]:
    """Banners over real, messy product text (reviews full of sizes and heights): shoppers
    state what a held-out review asked for; the copy must stay grounded in that text. The
    clothing set's cold-start theme accuracy goes into ``summary`` too."""
    from app.catalog.store import ShopperStore

    shoppers = [
        Shopper(id=f"reviewer{i}", interests=(" ".join(text.split()[:12])[:80],))
        for i, text in enumerate(list(clothing.queries)[:count])
    ]
    on_clothing = Pipeline.assemble(
        settings,
        catalog=clothing.catalog,
        shoppers=ShopperStore(shoppers),
        embedder=pipeline.embedder,
        index=retrieval.dataset_index(clothing, pipeline.embedder, settings),
        engine=pipeline.engine,  # shared: closed with the main pipeline
        templates=pipeline.templates,
    )
    summary["themes"]["clothing"] = interests.theme_accuracy(
        on_clothing, interests.load("clothing")
    )
    template = "hero_banner"
    return await copy_quality.generate(
        on_clothing, shoppers, template, None, f"clothing {template}", settings.banned_terms
    )


async def _compare(
    pipeline: Pipeline, settings: Settings, arms: list[Arm], shoppers: list[Shopper]
) -> tuple[dict[str, Any], list[copy_quality.CopySample]]:
    from app.runtime import make_engine

    per_arm: list[dict[str, list[float]]] = []
    samples_all: list[copy_quality.CopySample] = []
    summaries = {}
    for arm in arms:
        runner = pipeline
        if arm.engine is not None:
            runner = shallow.copy(pipeline)
            runner.use_engine(make_engine(settings, arm.engine))
        try:
            samples = await copy_quality.generate(
                runner, shoppers, arm.template, arm.version, arm.name, settings.banned_terms
            )
        finally:
            if runner is not pipeline:
                await runner.close()
        lift = copy_quality.lift_of(samples, pipeline)
        per_arm.append(copy_quality.per_sample(samples, lift))
        summaries[arm.name] = copy_quality.summarise(samples, lift)
        samples_all += samples
    differences = {}
    for metric, higher in HIGHER_IS_BETTER.items():
        diff, low, high = metrics.paired_difference(per_arm[0][metric], per_arm[1][metric])
        differences[metric] = {
            "a": float(sum(per_arm[0][metric]) / max(1, len(per_arm[0][metric]))),
            "b": float(sum(per_arm[1][metric]) / max(1, len(per_arm[1][metric]))),
            "b_minus_a": diff,
            "ci": [low, high],
            "verdict": metrics.verdict(low, high, higher),
        }
    return {
        "a": arms[0].name,
        "b": arms[1].name,
        "shoppers": len(shoppers),
        "arms": summaries,
        "differences": differences,
    }, samples_all


def lookup(summary: dict[str, Any], path: str) -> Any:
    """``copy.default.grounded.mean`` -> the value; keys may contain spaces and '@'."""
    node: Any = summary
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def check_thresholds(
    summary: dict[str, Any], suite_name: str, path: Path = THRESHOLDS
) -> list[dict[str, Any]]:
    rules = yaml.safe_load(path.read_text()).get(suite_name, [])
    results = []
    for rule in rules:
        metric, op = rule["metric"], rule["op"]
        try:
            value = lookup(summary, metric)
            bound = lookup(summary, rule["than"]) if "than" in rule else rule["value"]
            passed = bool(OPERATORS[op](value, bound))
        except KeyError as missing:
            value, bound, passed = None, rule.get("value"), False
            rule = {**rule, "error": f"no metric {missing}"}
        results.append(
            {
                "metric": metric,
                "op": op,
                "value": value,
                "bound": bound,
                "against": rule.get("than"),
                "passed": passed,
                **({"error": rule["error"]} if "error" in rule else {}),
            }
        )
    return results


def write(outcome: Outcome, out_dir: Path) -> None:
    from eval.report import html_report

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(
        json.dumps(
            {"summary": outcome.summary, "checks": outcome.checks, "passed": outcome.passed},
            indent=2,
            default=float,
        )
    )
    (out_dir / "report.html").write_text(html_report(outcome))
    with (out_dir / "banners.jsonl").open("w", encoding="utf-8") as lines:
        for banner in outcome.banners:
            lines.write(json.dumps(banner, ensure_ascii=False) + "\n")
