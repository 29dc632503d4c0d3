"""``marquee model train``: a LoRA adapter on the served model, learnt from ``marquee model
data``'s rows by TRL's SFT trainer, then merged into a model folder both engines load.

The loss is on the copy only (prompt-completion rows: the prompt is what the template says,
the completion what the model should write). The trainer runs on accelerate: one process on
this machine by default; ``accelerate launch -m app model train ...`` with an accelerate
config spreads the same run over the GPUs or machines it names. A trained folder reaches
shoppers only by the gate (``marquee model gate``), never by being written here.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.models import mark_trained

# What a run needs beyond the copy: the adapter's size and the optimiser's pace. r 16 on every
# projection of SmolLM2-135M is 4.9 M parameters (3.6 % of the model); 2e-4 is LoRA's usual
# rate (the base rate of full fine-tuning, 2e-5, barely moves an adapter in two epochs).
DEFAULT_RANK = 16
DEFAULT_LEARNING_RATE = 2e-4
DEFAULT_EPOCHS = 2.0
DEFAULT_BATCH = 8
# The longest row the trainer keeps: prompts without the templates' examples are ~250 tokens
# and answers ~60 (``marquee model data``'s summary); with the examples, ~450.
MAX_LENGTH = 768


@dataclass(frozen=True)
class TrainConfig:
    data_dir: Path
    base_model: Path
    out_dir: Path
    epochs: float = DEFAULT_EPOCHS
    learning_rate: float = DEFAULT_LEARNING_RATE
    rank: int = DEFAULT_RANK
    batch_size: int = DEFAULT_BATCH
    max_steps: int = -1  # > 0: stop there (a smoke run)
    limit_rows: int = 0  # > 0: learn from the first rows only (a smoke run)
    seed: int = 7
    dtype: str = "float32"  # bfloat16 where the hardware computes it natively


@dataclass
class TrainReport:
    """What a run did, written beside the model it made (``training.json``)."""

    base_model: str
    data_sha256: str
    rows: int
    held_out_rows: int
    steps: int
    seconds: float
    train_loss: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    held_out_loss_before: float = math.nan
    held_out_loss_after: float = math.nan
    config: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
    """A ``marquee model data`` row as TRL's conversational prompt-completion pair: the loss
    falls on the completion alone."""
    *prompt, answer = row["messages"]
    if answer["role"] != "assistant":
        raise ValueError(f"row {row.get('id')}: the last message is not the answer")
    return {"prompt": prompt, "completion": [answer]}


def _read(path: Path, limit: int = 0) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return rows[:limit] if limit > 0 else rows


def _sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def train(config: TrainConfig) -> TrainReport:
    """Learn an adapter on ``config.base_model`` from ``config.data_dir``'s ``train.jsonl``,
    measure its loss on ``held_out.jsonl`` before and after, and write the merged model,
    the adapter and ``training.json`` to ``config.out_dir``."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    train_path, held_path = config.data_dir / "train.jsonl", config.data_dir / "held_out.jsonl"
    for path in (train_path, held_path):
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `marquee model data` first")
    train_rows = [prompt_completion(r) for r in _read(train_path, config.limit_rows)]
    held_rows = [prompt_completion(r) for r in _read(held_path, config.limit_rows)]
    if not train_rows or not held_rows:
        raise ValueError(f"{config.data_dir}: no rows to learn from or to measure on")
    dtype = getattr(torch, config.dtype)
    tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    model = AutoModelForCausalLM.from_pretrained(config.base_model, dtype=dtype)
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    arguments = SFTConfig(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,  # a share of the steps (transformers 5 reads a float < 1 so)
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        max_length=MAX_LENGTH,
        completion_only_loss=True,
        bf16=config.dtype == "bfloat16",
        use_cpu=not torch.cuda.is_available(),
        logging_steps=5,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=config.seed,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=arguments,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(held_rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=config.rank,
            lora_alpha=2 * config.rank,
            lora_dropout=0.05,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    before = float(trainer.evaluate()["eval_loss"])
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    after = float(trainer.evaluate()["eval_loss"])
    adapted: Any = trainer.model  # a peft model: the adapter over the base
    adapted.save_pretrained(str(out / "adapter"))
    merged = adapted.merge_and_unload()
    merged.save_pretrained(str(out / "model"))
    tokenizer.save_pretrained(str(out / "model"))
    report = TrainReport(
        base_model=str(config.base_model),
        data_sha256=_sha256(train_path, held_path),
        rows=len(train_rows),
        held_out_rows=len(held_rows),
        steps=int(result.global_step),
        seconds=round(seconds, 1),
        train_loss=[
            (int(entry["step"]), float(entry["loss"]))
            for entry in trainer.state.log_history
            if "loss" in entry and "step" in entry
        ],
        held_out_loss_before=before,
        held_out_loss_after=after,
        config={k: str(v) for k, v in asdict(config).items()},
    )
    (out / "training.json").write_text(json.dumps(report.as_json(), indent=2) + "\n")
    # The model folder says how it was made, and what prompts it learnt (served alike).
    summary = json.loads((config.data_dir / "summary.json").read_text())
    mark_trained(
        out / "model", report.as_json() | {"with_examples": bool(summary["with_examples"])}
    )
    return report
