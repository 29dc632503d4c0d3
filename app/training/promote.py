"""``marquee model promote``: a gated trained model becomes the adapter the project serves.

What is kept is the adapter, not the merged model: peft's config and its weights in bf16
(about 10 MB for r 16 on SmolLM2-135M, against 270 MB merged), and a manifest saying what it
was trained on, how, and the gate it passed. ``marquee model prepare`` checks the manifest and
merges the adapter into the packaged model on each machine (``app/models.py``).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.models import (
    ADAPTER_CONFIG,
    ADAPTER_MANIFEST,
    ADAPTER_WEIGHTS,
    GATE_FILE,
    MANIFEST_FORMAT,
    TRAINING_FILE,
    ModelError,
    file_sha256,
    resolve_gguf,
)

# How the adapter was made, as commands (the manifest's "reproduce").
REPRODUCE = (
    "marquee model data --out DATA",
    "marquee model train --data DATA --out OUT --epochs {epochs} --learning-rate "
    "{learning_rate} --rank {rank} --batch-size {batch_size}",
    "MARQUEE_LLM_ADAPTER=none marquee model gate --candidate OUT/model --prompts {prompts} "
    "--samples {samples}",
    "MARQUEE_LLM_ADAPTER=none marquee model promote --candidate OUT/model",
)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        found: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: not readable ({error})") from error
    return found


def promote(candidate: Path, served: Path, llm_source: str, llm_name: str, target: Path) -> Path:
    """Write ``candidate``'s adapter (``candidate/../adapter``) to ``target`` with its
    manifest, refusing a candidate whose gate did not pass or was run against another model
    than ``served`` (the one it would replace). ``target`` is replaced whole or not at all."""
    gate = _read_json(candidate / GATE_FILE) if (candidate / GATE_FILE).exists() else {}
    if gate.get("passed") is not True:
        raise ModelError(
            f"{candidate} has not passed the gate: run `marquee model gate --candidate "
            f"{candidate}` first"
        )
    if Path(str(gate.get("current"))).resolve() != served.resolve():
        raise ModelError(
            f"{candidate} was gated against {gate.get('current')}, not against the model "
            f"served now ({served}): gate it again"
        )
    adapter = candidate.parent / "adapter"
    if not (adapter / ADAPTER_WEIGHTS).is_file() or not (adapter / ADAPTER_CONFIG).is_file():
        raise ModelError(f"{adapter}: no adapter (what `marquee model train` writes beside model/)")
    training = _read_json(candidate / TRAINING_FILE)
    config = training.get("config", {})
    gguf = resolve_gguf(llm_source)

    import torch
    from safetensors.torch import load_file, save_file

    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # bf16 halves the file; the merge widens it back to float32 exactly.
    weights = {k: v.to(torch.bfloat16) for k, v in load_file(adapter / ADAPTER_WEIGHTS).items()}
    save_file(weights, staging / ADAPTER_WEIGHTS)
    peft_config = _read_json(adapter / ADAPTER_CONFIG)
    peft_config["base_model_name_or_path"] = llm_name  # not this machine's path
    (staging / ADAPTER_CONFIG).write_text(json.dumps(peft_config, indent=2) + "\n")
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": target.name,
        "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "base": {"name": llm_name, "gguf": gguf.name, "gguf_bytes": gguf.stat().st_size},
        "adapter_sha256": file_sha256(staging / ADAPTER_WEIGHTS),
        "with_examples": bool(training.get("with_examples", True)),
        "training": {k: v for k, v in training.items() if k not in ("base_model", "with_examples")}
        | {"config": {k: v for k, v in config.items() if not k.endswith(("_dir", "_model"))}},
        # The verdict with the folders named, not located (they were on the machine it ran on).
        "gate": gate | {"current": Path(gate["current"]).name, "candidate": target.name},
        "reproduce": [
            step.format(**config, prompts=gate.get("prompts"), samples=gate.get("samples"))
            for step in REPRODUCE
        ],
    }
    (staging / ADAPTER_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
