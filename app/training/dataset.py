"""``marquee model data``: the training set written out, one JSON chat a line, split as the
set says (``train.jsonl`` is learnt from; ``held_out.jsonl``, categories never trained on, is
the gate's), with a summary of what it holds and what its prompts cost."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.config import PROJECT_ROOT, Settings
from app.prompting.templates import TemplateRegistry, load_brand
from app.training.house_style import Forbidden, Problem, check, load
from app.training.prompts import TrainingRow, rows

# The project's own set, and the demo catalog it must never name (the eval's data).
HOUSE_STYLE = PROJECT_ROOT / "data" / "house_style"
DEMO_PRODUCTS = PROJECT_ROOT / "data" / "products.jsonl"


class Tokenizer(Protocol):
    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


class InvalidSetError(ValueError):
    """The set breaks a promise (``check``): nothing is written."""

    def __init__(self, problems: list[Problem]) -> None:
        shown = "; ".join(str(p) for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"the house-style set has {len(problems)} problems: {shown}{more}")
        self.problems = problems


@dataclass
class DataSummary:
    rows: dict[str, int] = field(default_factory=dict)  # per split
    templates: dict[str, int] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)  # per split
    # Mean prompt tokens with the templates' few-shot examples and without (what a model
    # trained on the job is served), and the answer's.
    prompt_tokens_with_examples: float = 0.0
    prompt_tokens_without_examples: float = 0.0
    answer_tokens: float = 0.0
    with_examples: bool = False

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _tokens(tokenizer: Tokenizer, row: TrainingRow, answer: bool = False) -> int:
    chat = [{"role": r, "content": c} for r, c in row.messages]
    prompt = tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
    if not answer:
        return len(_ids(prompt))
    whole = tokenizer.apply_chat_template(
        [*chat, {"role": "assistant", "content": row.answer}], tokenize=True
    )
    return len(_ids(whole)) - len(_ids(prompt))


def _ids(encoded: Any) -> list[int]:
    """Token ids from what ``apply_chat_template`` returns (a list, or a mapping holding one)."""
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


def build(
    settings: Settings,
    out: Path,
    *,
    with_examples: bool = False,
    tokenizer: Tokenizer | None = None,
) -> DataSummary:
    """Check the house-style set, then write it to ``out`` as ``train.jsonl`` and
    ``held_out.jsonl`` and a ``summary.json``, its prompts rendered by the templates of
    ``settings.prompts_dir``. ``tokenizer``: the served model's, to count what the prompts
    cost (None: not counted)."""
    found, problems = load(HOUSE_STYLE)
    problems += check(found, Forbidden.from_catalog(DEMO_PRODUCTS))
    if problems:
        raise InvalidSetError(problems)
    registry = TemplateRegistry.from_folder(settings.prompts_dir)
    brand = load_brand(settings.prompts_dir)
    written = list(rows(found, registry, brand, with_examples=with_examples))
    out.mkdir(parents=True, exist_ok=True)
    summary = DataSummary(with_examples=with_examples)
    for split in ("train", "held_out"):
        chosen = [r for r in written if r.split == split]
        with (out / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for row in chosen:
                handle.write(json.dumps(row.as_json(), ensure_ascii=False) + "\n")
        summary.rows[split] = len(chosen)
        summary.categories[split] = len({r.category for r in chosen})
    summary.templates = dict(sorted(Counter(r.template for r in written).items()))
    if tokenizer is not None:
        # Every tenth row: the means settle well before the whole set is tokenised twice.
        sample = written[::10]
        other = {r.id: r for r in rows(found, registry, brand, with_examples=not with_examples)}
        mine = statistics.fmean(_tokens(tokenizer, r) for r in sample)
        theirs = statistics.fmean(_tokens(tokenizer, other[r.id]) for r in sample)
        summary.prompt_tokens_with_examples = round(theirs if not with_examples else mine, 1)
        summary.prompt_tokens_without_examples = round(mine if not with_examples else theirs, 1)
        summary.answer_tokens = round(
            statistics.fmean(_tokens(tokenizer, r, answer=True) for r in sample), 1
        )
    (out / "summary.json").write_text(json.dumps(summary.as_json(), indent=2) + "\n")
    return summary
