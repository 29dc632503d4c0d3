"""``marquee model gate``: a trained model against the model it would replace, on categories
it never saw (the house-style set's held-out part), judged by the rubric serving uses.

Each model writes ``samples`` answers to every held-out prompt under the serving grammar: the
current model with the prompts it is served today (the templates' examples in them unless it
was trained without), the candidate with the prompts it was trained on. An answer is
publishable when the rubric finds nothing in it; a banner is publishable when one of its
samples is (what best-of-n could serve). An answer serving's guards would refuse (text cut at
its cap or on a dangling word, a number or offer no product states, a leak of the prompt)
counts as a hard finding too, under the guard's name: the gate judges an answer as serving
does, not by the rubric alone. The candidate passes when its banners are
publishable at least as often as the current model's and its answers carry a hard finding
(refused: a retry or fallback) no more often. The verdict is written into the candidate's
folder (``gate.json``), and a trained folder is served only with a passing one
(``app.models.require_gate``).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app import rubric
from app.config import Settings
from app.domain import Candidate, CandidateScores
from app.generation.engine import Engine, GenerationRequest, SamplingParams
from app.generation.schemas import SCHEMAS
from app.guards import Guards, problem_parts
from app.models import GATE_FILE, trained_without_examples
from app.prompting.templates import TemplateRegistry, load_brand
from app.training.dataset import HOUSE_STYLE
from app.training.house_style import (
    TEMPLATE_SCHEMAS,
    AsShown,
    CategoryFile,
    Example,
    HouseStyleSet,
    load,
    review,
    schema_for,
)
from app.training.prompts import catalog_product, rows

# Serving's guards (no brand's banned terms: the held-out prompts carry no brand rules).
_GUARDS = Guards(banned_terms=())

# Sampling as the templates serve copy (prompts/*.j2).
SAMPLING = SamplingParams(temperature=0.6, top_p=0.9, max_tokens=160)


@dataclass
class ModelScore:
    """How one model's answers to the held-out prompts read."""

    answers: int = 0
    invalid: int = 0  # not the schema (cut at the token budget)
    publishable_answers: int = 0
    hard_answers: int = 0
    banners: int = 0
    publishable_banners: int = 0
    findings: dict[str, int] = field(default_factory=dict)

    @property
    def publishable_banner_share(self) -> float:
        return self.publishable_banners / self.banners if self.banners else 0.0

    @property
    def hard_share(self) -> float:
        return self.hard_answers / self.answers if self.answers else 1.0

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "publishable_banner_share": round(self.publishable_banner_share, 4),
            "publishable_banner_interval": wilson(self.publishable_banners, self.banners),
            "hard_share": round(self.hard_share, 4),
            "publishable_answer_share": round(
                self.publishable_answers / self.answers if self.answers else 0.0, 4
            ),
        }


@dataclass
class GateReport:
    current: str
    candidate: str
    prompts: int
    samples: int
    scores: dict[str, ModelScore]
    passed: bool
    why: str
    examples: list[dict[str, Any]] = field(default_factory=list)  # some answers, to read

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"scores": {k: v.as_json() for k, v in self.scores.items()}}


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson interval of a share."""
    if total == 0:
        return (0.0, 1.0)
    share = successes / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    spread = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total))
    spread /= 1 + z * z / total
    return (round(max(0.0, centre - spread), 4), round(min(1.0, centre + spread), 4))


@dataclass(frozen=True)
class Refusal:
    """A guard's refusal of an answer (serving would write it again): a hard finding."""

    name: str  # the guard's: cut_at_limit, unfinished, invented_number, ...
    field: str
    detail: str

    @property
    def hard(self) -> bool:
        return True


def judge(
    text: str, example: Example, category: CategoryFile
) -> list[rubric.Finding | Refusal] | None:
    """What serving finds in one answer to ``example``'s prompt: the rubric's findings, then
    the guards' refusals that are not the rubric's; None when it is not the schema at all."""
    schema = schema_for(example)
    try:
        copy = schema.model_validate_json(text)
    except ValidationError:
        return None
    products = {p.id: p for p in category.products}
    shown = [AsShown(products[example.shown[n - 1]], category.category) for n in copy.products]
    found: list[rubric.Finding | Refusal] = list(
        review(copy.headline, copy.subheadline, copy.cta, shown, category)
    )
    offered = [
        Candidate(
            number=number,
            product=catalog_product(products[pid], category.category),
            scores=CandidateScores(),
            source="semantic",
        )
        for number, pid in enumerate(example.shown, 1)
    ]
    spec = SCHEMAS[TEMPLATE_SCHEMAS[example.template]]
    verdict = _GUARDS.check(text, schema, spec, offered, [], theme=category.category)
    for problem in verdict.problems:
        kind, field_name, detail = problem_parts(problem)
        if kind not in rubric.FINDINGS:  # the rubric's own are counted above
            found.append(Refusal(kind, field_name, detail))
    return found


async def _answers(
    engine: Engine,
    prompts: Sequence[tuple[tuple[str, str], ...]],
    examples: Sequence[Example],
    samples: int,
    seed: int,
) -> list[tuple[str, ...]]:
    requests = [
        GenerationRequest(
            messages=prompt,
            schema=schema_for(e),
            sampling=SAMPLING,
            seed=seed + number,
            n=samples,
        )
        for number, (prompt, e) in enumerate(zip(prompts, examples, strict=True))
    ]
    answered: list[tuple[str, ...]] = []
    for start in range(0, len(requests), 8):  # eight prompts a batch, with progress
        results = await engine.generate_many(requests[start : start + 8])
        answered.extend(r.texts for r in results)
        print(f"  {len(answered)}/{len(requests)} prompts", flush=True)
    return answered


def score(
    answers: Sequence[tuple[str, ...]], held: Sequence[tuple[Example, CategoryFile]]
) -> ModelScore:
    result = ModelScore()
    findings: Counter[str] = Counter()
    for texts, (example, category) in zip(answers, held, strict=True):
        result.banners += 1
        any_publishable = False
        for text in texts:
            result.answers += 1
            found = judge(text, example, category)
            if found is None:
                result.invalid += 1
                continue
            findings.update(f.name for f in found)
            if not found:
                result.publishable_answers += 1
                any_publishable = True
            if any(f.hard for f in found):
                result.hard_answers += 1
        result.publishable_banners += any_publishable
    result.findings = dict(sorted(findings.items()))
    return result


def verdict(current: ModelScore, candidate: ModelScore) -> tuple[bool, str]:
    better = candidate.publishable_banner_share >= current.publishable_banner_share
    safer = candidate.hard_share <= current.hard_share
    why = (
        f"publishable banners {candidate.publishable_banner_share:.1%} vs "
        f"{current.publishable_banner_share:.1%}; hard findings {candidate.hard_share:.1%} "
        f"vs {current.hard_share:.1%} of answers"
    )
    return better and safer, why


def run_gate(
    settings: Settings,
    candidate_dir: Path,
    make_engine: Any,
    *,
    prompts: int = 60,
    samples: int = 4,
) -> GateReport:
    """Gate ``candidate_dir`` (a trained model folder) against ``settings.llm_folder`` on
    the first ``prompts`` held-out prompts, spread over the held-out categories.
    ``make_engine(folder)``: an engine on a model folder."""
    found, problems = load(HOUSE_STYLE)
    if problems:
        raise ValueError(f"the house-style set does not load: {problems[0]}")
    registry = TemplateRegistry.from_folder(settings.prompts_dir)
    brand = load_brand(settings.prompts_dir)
    held_files = {p: c for p, c in found.categories.items() if c.split == "held_out"}
    held_set = HouseStyleSet(found.folder, found.voices, held_files)
    # Round-robin over the categories: each is in the sample, whatever ``prompts`` is.
    pairs = [(e, c) for c in held_files.values() for e in c.examples]
    by_category: dict[str, list[int]] = {}
    for index, (_, c) in enumerate(pairs):
        by_category.setdefault(c.category, []).append(index)
    order = [i for group in zip(*by_category.values(), strict=False) for i in group]
    chosen = sorted(order[:prompts])
    # Each model is prompted as it is served: the templates' examples only for a model that
    # was not trained without them (the packaged one).
    trained_rows = list(rows(held_set, registry, brand, with_examples=False))
    served = (
        trained_rows
        if trained_without_examples(settings.llm_folder)
        else list(rows(held_set, registry, brand, with_examples=True))
    )
    held = [pairs[i] for i in chosen]
    scores: dict[str, ModelScore] = {}
    texts: dict[str, list[tuple[str, ...]]] = {}
    for name, folder, table in (
        ("current", settings.llm_folder, served),
        ("candidate", candidate_dir, trained_rows),
    ):
        print(f"{name}: {folder}", flush=True)
        engine = make_engine(folder)
        try:
            prompts_of = [table[i].messages for i in chosen]
            examples = [e for e, _ in held]
            texts[name] = asyncio.run(
                _answers(engine, prompts_of, examples, samples, settings.base_seed)
            )
        finally:
            asyncio.run(engine.close())
        scores[name] = score(texts[name], held)
    passed, why = verdict(scores["current"], scores["candidate"])
    report = GateReport(
        current=str(settings.llm_folder),
        candidate=str(candidate_dir),
        prompts=len(chosen),
        samples=samples,
        scores=scores,
        passed=passed,
        why=why,
        examples=[
            {
                "category": c.category,
                "template": e.template,
                "written": e.output(),
                "current": texts["current"][i][0],
                "candidate": texts["candidate"][i][0],
            }
            for i, (e, c) in enumerate(held[:12])
        ],
    )
    (candidate_dir / GATE_FILE).write_text(json.dumps(report.as_json(), indent=2) + "\n")
    return report
