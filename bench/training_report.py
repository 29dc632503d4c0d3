"""The shipped adapter's run, as a report: training, gate and the gate's answers to read, with
the loss curve as a plot. Everything comes from the adapter's manifest (what `marquee model
promote` wrote), so the report always describes the adapter the repository serves.

    python -m bench.training_report [--adapter models/house-style]

Writes ``bench/results/training-house-style.md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from app.config import HOUSE_STYLE_ADAPTER
from app.models import ADAPTER_MANIFEST
from bench.common import RESULTS_DIR, write_results

NAME = "training-house-style"
HEADER = [
    "model",
    "publishable banners (95 %)",
    "publishable answers",
    "hard findings",
    "not the schema",
    "findings",
]


def plot(manifest: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    training = manifest["training"]
    steps, losses = zip(*training["train_loss"], strict=True)
    fig, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps, losses, marker="o", markersize=3, label="training loss (copy tokens)")
    last = steps[-1]
    held = [training["held_out_loss_before"], training["held_out_loss_after"]]
    label = "held-out loss (6 categories never trained on)"
    axis.scatter([0, last], held, color="red", zorder=3, label=label)
    axis.set_xlabel("step (batch 8)")
    axis.set_ylabel("loss")
    axis.set_title(f"{manifest['name']}: LoRA on {manifest['base']['name']}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def answers(gate: dict[str, Any]) -> list[str]:
    """The gate's kept answers (the first sample of each model to the first prompts)."""
    lines = []
    for example in gate.get("examples", []):
        for who in ("candidate", "current"):
            try:
                copy = json.loads(example[who])
                said = f"{copy['headline']} / {copy['subheadline']} / {copy['cta']}"
            except (ValueError, KeyError, TypeError):
                said = f"(not the schema) {str(example[who])[:120]}"
            lines.append(f"{example['category']}, {example['template']}, {who}: {said}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, default=HOUSE_STYLE_ADAPTER)
    args = parser.parse_args(argv)
    manifest = json.loads((args.adapter / ADAPTER_MANIFEST).read_text())
    training, gate = manifest["training"], manifest["gate"]
    config = training["config"]
    rows: list[list[object]] = []
    for who in ("current", "candidate"):
        scored = gate["scores"][who]
        low, high = scored["publishable_banner_interval"]
        rows.append(
            [
                f"{who} ({gate[who]})",
                f"{scored['publishable_banner_share']:.1%} [{low:.1%}, {high:.1%}]",
                f"{scored['publishable_answer_share']:.1%}",
                f"{scored['hard_share']:.1%}",
                scored["invalid"],
                ", ".join(f"{k} {v}" for k, v in scored["findings"].items()),
            ]
        )
    curve = " · ".join(f"{step}: {loss:.2f}" for step, loss in training["train_loss"])
    notes = [
        f"Training: {training['rows']} rows, {training['steps']} steps in "
        f"{training['seconds']:.0f} s ({training['seconds'] / training['steps']:.1f} s a step), "
        f"LoRA r {config.get('rank')}, {config.get('dtype')}, batch {config.get('batch_size')}, "
        f"{config.get('epochs')} epoch at learning rate {config.get('learning_rate')}; "
        f"prompts {'with' if manifest['with_examples'] else 'without'} the templates' examples.",
        f"Held-out loss: {training['held_out_loss_before']:.3f} -> "
        f"{training['held_out_loss_after']:.3f} ({training['held_out_rows']} rows).",
        f"Training loss by step: {curve}. Plot: {NAME}.png.",
        f"Gate: {gate['prompts']} held-out prompts x {gate['samples']} samples under the serving "
        f"grammar, each answer read as serving reads it (guards, then the rubric); a banner is "
        f"publishable when one of its samples is. Verdict: "
        f"{'passed' if gate['passed'] else 'refused'} ({gate['why']}).",
        f"Adapter {manifest['adapter_sha256'][:12]}, data {training['data_sha256'][:12]}, "
        f"promoted {manifest['promoted_at']}.",
        "Reproduce: " + "; ".join(f"`{step}`" for step in manifest["reproduce"]),
        "The gate's kept answers (first sample, first prompts), to read:",
        *(f"  {line}" for line in answers(gate)),
    ]
    write_results(
        NAME,
        f"House-style adapter '{manifest['name']}': its training and its gate",
        HEADER,
        rows,
        notes,
    )
    plot(manifest, RESULTS_DIR / f"{NAME}.png")


if __name__ == "__main__":
    main()
