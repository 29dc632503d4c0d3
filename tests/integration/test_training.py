"""Teaching the model the job, as a user runs it: `marquee model data` writes the house-style
set as chat rows rendered by the real templates, `marquee model train` learns an adapter on the
real model and merges it into a folder the in-process engine loads and writes copy with."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from app.config import Settings
from app.generation.engine import GenerationRequest, SamplingParams
from app.generation.schemas import output_model
from app.generation.transformers_engine import TransformersEngine
from app.rubric import GRAMMAR_CTA_VERBS
from tests.integration.test_cli import marquee

pytestmark = pytest.mark.integration


def test_model_data_then_train_makes_a_model_that_writes_copy(
    tmp_path: Path, settings: Settings
) -> None:
    data, out = tmp_path / "data", tmp_path / "trained"
    made = marquee("model", "data", "--out", str(data))
    assert made.returncode == 0, made.stderr
    assert "train: " in made.stdout and "held_out: " in made.stdout
    summary = json.loads((data / "summary.json").read_text())
    assert summary["rows"]["train"] >= 1800 and summary["categories"]["train"] >= 40
    # Without the templates' examples a prompt is shorter: what a trained model saves.
    assert 0 < summary["prompt_tokens_without_examples"] < summary["prompt_tokens_with_examples"]
    row = json.loads((data / "train.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert "<products>" in row["messages"][1]["content"]
    answer = json.loads(row["messages"][-1]["content"])
    assert set(answer) == {"headline", "subheadline", "cta", "layout", "tone", "products"}

    # One step on two rows: the whole path, not a model worth serving.
    trained = marquee(
        "model", "train", "--data", str(data), "--out", str(out),
        "--max-steps", "1", "--limit-rows", "2", "--batch-size", "2",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    report = json.loads((out / "training.json").read_text())
    assert report["steps"] == 1 and report["rows"] == 2
    assert report["held_out_loss_before"] > 0 and report["held_out_loss_after"] > 0
    assert (out / "adapter" / "adapter_config.json").exists()

    engine = TransformersEngine(out / "model", "trained")
    schema = output_model("banner", len(answer_shown(row)), False, GRAMMAR_CTA_VERBS)
    prompt = tuple((m["role"], m["content"]) for m in row["messages"][:-1])
    request = GenerationRequest(messages=prompt, schema=schema, sampling=SamplingParams(), seed=1)
    result = asyncio.run(engine.generate(request))
    schema.model_validate_json(result.texts[0])  # the grammar holds on the trained model too

    # Learning is gated: unjudged, the folder serves nobody; judged, the verdict is kept.
    model = str(out / "model")
    refused = marquee("generate", "--user", "u004", MARQUEE_LLM_DIR=model)
    assert refused.returncode != 0 and "has not passed the gate" in refused.stderr
    assert "Traceback" not in refused.stderr
    gated = marquee("model", "gate", "--candidate", model, "--prompts", "2", "--samples", "1")
    assert gated.returncode in (0, 1), gated.stderr[-2000:]  # passed or refused, said so
    verdict = json.loads((out / "model" / "gate.json").read_text())
    assert verdict["prompts"] == 2 and set(verdict["scores"]) == {"current", "candidate"}
    assert ("passed" if verdict["passed"] else "refused") in gated.stdout

    # Promotion: only a passing verdict against the model served now makes a shipped adapter.
    trial = tmp_path / "trial"
    promoted = marquee("model", "promote", "--candidate", model, "--to", str(trial))
    if not verdict["passed"]:
        assert promoted.returncode == 1 and "has not passed the gate" in promoted.stderr
        # As if the gate had passed it: the rest of the path, promote then prepare.
        (out / "model" / "gate.json").write_text(json.dumps(verdict | {"passed": True}))
        promoted = marquee("model", "promote", "--candidate", model, "--to", str(trial))
    assert promoted.returncode == 0, promoted.stderr[-2000:]
    manifest = json.loads((trial / "manifest.json").read_text())
    assert manifest["gate"]["passed"] and manifest["training"]["steps"] == 1
    merged = settings.model_copy(update={"llm_adapter": trial}).llm_folder
    try:
        prepared = marquee("model", "prepare", MARQUEE_LLM_ADAPTER=str(trial))
        assert prepared.returncode == 0, prepared.stderr[-2000:]
        assert f"+ trial -> {merged}" in prepared.stdout
        doctor = marquee("doctor", "--no-probe", "--json", MARQUEE_LLM_ADAPTER=str(trial))
        assert "a trained model (gate passed" in json.loads(doctor.stdout)["model"]
    finally:
        shutil.rmtree(merged, ignore_errors=True)


def answer_shown(row: dict[str, object]) -> list[str]:
    """The numbered product lines of a row's prompt."""
    prompt = str(row["messages"][1]["content"])  # type: ignore[index]
    block = prompt.split("<products>")[1].split("</products>")[0]
    return [line for line in block.splitlines() if line.strip()]


def test_a_set_that_breaks_a_promise_writes_nothing(tmp_path: Path) -> None:
    bad = marquee("model", "train", "--data", str(tmp_path), "--out", str(tmp_path / "o"))
    assert bad.returncode != 0 and "marquee model data" in bad.stderr
    assert "Traceback" not in bad.stderr
