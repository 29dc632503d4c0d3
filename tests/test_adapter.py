"""The shipped adapter: `marquee model promote` keeps a gated adapter with its manifest, and
`marquee model prepare` merges it into the packaged model only when the manifest holds (its
weights, its base, its gate). A tiny real Llama and a real peft adapter: the merge is peft's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from app.config import HOUSE_STYLE_ADAPTER, Settings
from app.models import (
    ADAPTER_MANIFEST,
    ADAPTER_WEIGHTS,
    GATE_FILE,
    TRAINING_FILE,
    ModelError,
    mark_trained,
    merge_adapter,
    model_label,
    require_gate,
    trained_without_examples,
)
from app.training.promote import promote


def tiny_base(folder: Path) -> Path:
    """A prepared base folder: a two-layer Llama with a word-level tokenizer."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    model: Any = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model.to(torch.bfloat16).save_pretrained(folder)
    words = {f"w{i}": i for i in range(31)} | {"<unk>": 31}
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=Tokenizer(WordLevel(words, "<unk>"))
    )
    tokenizer.save_pretrained(folder)
    (folder / "marquee-prepared.json").write_text(json.dumps({"source": "abc"}))
    return folder


def trained_candidate(out: Path, base: Path, served: Path) -> Path:
    """What `marquee model train` and a passing `marquee model gate` leave: OUT/adapter and
    OUT/model with its training record and verdict."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # B starts at zero: a learnt adapter moves the weights
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    peft_model.save_pretrained(str(out / "adapter"))
    model_dir = out / "model"
    model_dir.mkdir(parents=True)
    mark_trained(
        model_dir,
        {
            "base_model": str(base),
            "steps": 3,
            "with_examples": False,
            "config": {"data_dir": "/x", "epochs": "0.4", "learning_rate": "0.0003",
                       "rank": "2", "batch_size": "8"},
        },
    )  # fmt: skip
    gate = {"passed": True, "current": str(served), "prompts": 30, "samples": 4, "why": "w"}
    (model_dir / GATE_FILE).write_text(json.dumps(gate))
    return model_dir


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Path, Path, Path]:
    base = tiny_base(tmp_path / "base")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"g" * 100)
    return base, gguf, trained_candidate(tmp_path / "out", base, served=base)


def test_promote_keeps_a_gated_adapter_and_prepare_merges_it(
    tmp_path: Path, parts: tuple[Path, Path, Path]
) -> None:
    base, gguf, candidate = parts
    shipped = promote(candidate, base, str(gguf), "Tiny", tmp_path / "house-style")
    manifest = json.loads((shipped / ADAPTER_MANIFEST).read_text())
    assert manifest["base"] == {"name": "Tiny", "gguf": "m.gguf", "gguf_bytes": 100}
    assert manifest["gate"]["passed"] and manifest["gate"]["current"] == "base"
    assert manifest["with_examples"] is False and "data_dir" not in manifest["training"]["config"]
    assert "--epochs 0.4" in manifest["reproduce"][1]
    assert str(tmp_path) not in (shipped / ADAPTER_MANIFEST).read_text()  # no machine paths

    from safetensors.torch import load_file

    weights = load_file(shipped / ADAPTER_WEIGHTS)
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}

    merged = merge_adapter(shipped, base, gguf, tmp_path / "merged", force=False)
    require_gate(merged)  # the verdict came with it
    assert trained_without_examples(merged)  # served as it was trained
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(base).state_dict()
    after = AutoModelForCausalLM.from_pretrained(merged).state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all("q_proj" in k or "v_proj" in k for k in moved)
    assert not any("lora" in k for k in after)  # merged, not wrapped

    # Banners name the weights that wrote them: a new adapter makes stored ones stale.
    assert model_label(merged, "Tiny") == f"Tiny+house-style@{manifest['adapter_sha256'][:8]}"
    assert model_label(base, "Tiny") == "Tiny"

    stamp = (merged / "model.safetensors").stat().st_mtime_ns
    merge_adapter(shipped, base, gguf, merged, force=False)  # the same adapter: reused
    assert (merged / "model.safetensors").stat().st_mtime_ns == stamp
    # The same weights promoted with a new verdict: merged again, with that verdict.
    gate = json.loads((candidate / GATE_FILE).read_text()) | {"why": "judged again"}
    (candidate / GATE_FILE).write_text(json.dumps(gate))
    promote(candidate, base, str(gguf), "Tiny", shipped)
    merge_adapter(shipped, base, gguf, merged, force=False)
    assert json.loads((merged / GATE_FILE).read_text())["why"] == "judged again"


def test_prepare_refuses_an_adapter_its_manifest_does_not_vouch_for(
    tmp_path: Path, parts: tuple[Path, Path, Path]
) -> None:
    base, gguf, candidate = parts
    shipped = promote(candidate, base, str(gguf), "Tiny", tmp_path / "house-style")
    other = tmp_path / "other.gguf"
    other.write_bytes(b"g" * 101)
    with pytest.raises(ModelError, match=r"was trained on m\.gguf"):
        merge_adapter(shipped, base, other, tmp_path / "merged", force=False)
    manifest = json.loads((shipped / ADAPTER_MANIFEST).read_text())
    (shipped / ADAPTER_MANIFEST).write_text(json.dumps(manifest | {"gate": {"passed": False}}))
    with pytest.raises(ModelError, match="no passing gate"):
        merge_adapter(shipped, base, gguf, tmp_path / "merged", force=False)
    (shipped / ADAPTER_MANIFEST).write_text(json.dumps(manifest))
    (shipped / ADAPTER_WEIGHTS).write_bytes((shipped / ADAPTER_WEIGHTS).read_bytes()[:-1] + b"x")
    with pytest.raises(ModelError, match="not the file its manifest names"):
        merge_adapter(shipped, base, gguf, tmp_path / "merged", force=False)
    (shipped / ADAPTER_MANIFEST).unlink()
    with pytest.raises(ModelError, match="MARQUEE_LLM_ADAPTER=none"):
        merge_adapter(shipped, base, gguf, tmp_path / "merged", force=False)
    assert not (tmp_path / "merged").exists()  # nothing half made is left to serve


def test_promote_refuses_an_ungated_candidate_or_one_gated_against_another_model(
    tmp_path: Path, parts: tuple[Path, Path, Path]
) -> None:
    base, gguf, candidate = parts
    target = tmp_path / "house-style"
    with pytest.raises(ModelError, match="gated against"):
        promote(candidate, tmp_path / "served-now", str(gguf), "Tiny", target)
    (candidate / GATE_FILE).write_text(json.dumps({"passed": False, "current": str(base)}))
    with pytest.raises(ModelError, match="has not passed the gate"):
        promote(candidate, base, str(gguf), "Tiny", target)
    (candidate / GATE_FILE).unlink()
    with pytest.raises(ModelError, match="has not passed the gate"):
        promote(candidate, base, str(gguf), "Tiny", target)
    assert not target.exists()


def test_the_served_folder_is_the_merged_one_unless_a_folder_or_no_adapter_is_named(
    tmp_path: Path,
) -> None:
    shipped = Settings(cache_dir=tmp_path)
    assert shipped.llm_adapter == HOUSE_STYLE_ADAPTER
    assert shipped.llm_folder == tmp_path / "models" / "SmolLM2-135M-Instruct-house-style"
    assert shipped.llm_base_folder == tmp_path / "models" / "SmolLM2-135M-Instruct"
    for none in ("", "none", "None"):
        plain = Settings(cache_dir=tmp_path, llm_adapter=none)
        assert plain.llm_adapter is None and plain.llm_folder == plain.llm_base_folder
    named = Settings(cache_dir=tmp_path, llm_dir=tmp_path / "mine")
    assert named.llm_folder == tmp_path / "mine"


def test_the_shipped_adapter_is_one_its_own_manifest_vouches_for() -> None:
    """The adapter in the repository: promoted (bf16, a passing gate recorded, trained on
    the packaged GGUF without the templates' examples) and the file its manifest names."""
    from app.models import file_sha256

    manifest = json.loads((HOUSE_STYLE_ADAPTER / ADAPTER_MANIFEST).read_text())
    assert file_sha256(HOUSE_STYLE_ADAPTER / ADAPTER_WEIGHTS) == manifest["adapter_sha256"]
    assert manifest["gate"]["passed"] is True and manifest["with_examples"] is False
    assert manifest["base"]["name"] == Settings().llm_name
    gate = manifest["gate"]["scores"]
    assert (
        gate["candidate"]["publishable_banner_share"] >= gate["current"]["publishable_banner_share"]
    )
    assert TRAINING_FILE not in {p.name for p in HOUSE_STYLE_ADAPTER.iterdir()}


def test_the_training_report_describes_the_shipped_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench.common
    import bench.training_report as report

    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    report.main(["--adapter", str(HOUSE_STYLE_ADAPTER)])
    written = (tmp_path / f"{report.NAME}.md").read_text()
    manifest = json.loads((HOUSE_STYLE_ADAPTER / ADAPTER_MANIFEST).read_text())
    assert f"{manifest['training']['steps']} steps" in written and "Verdict: passed" in written
    assert manifest["reproduce"][1] in written
    assert (tmp_path / f"{report.NAME}.png").stat().st_size > 10_000
