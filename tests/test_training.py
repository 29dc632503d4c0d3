"""Learning is gated: a trained folder is served only with a passing verdict, and as it was
trained (without the templates' examples); the gate's arithmetic and its reading of answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.catalog.store import Catalog, ShopperStore
from app.config import PROJECT_ROOT, Settings
from app.models import GATE_FILE, ModelError, mark_trained, require_gate
from app.pipeline import BannerRequest
from app.training.gate import ModelScore, judge, run_gate, score, verdict, wilson
from app.training.house_style import load
from app.training.train import prompt_completion
from tests.fakes import ScriptedEngine, make_pipeline


def test_a_trained_folder_is_served_only_with_a_passing_verdict(tmp_path: Path) -> None:
    packaged = tmp_path / "packaged"
    packaged.mkdir()
    require_gate(packaged)  # no training.json: nothing to gate
    trained = tmp_path / "trained"
    trained.mkdir()
    mark_trained(trained, {"with_examples": False})
    with pytest.raises(ModelError, match="has not passed the gate"):
        require_gate(trained)
    (trained / GATE_FILE).write_text(json.dumps({"passed": False}))
    with pytest.raises(ModelError, match="marquee model gate --candidate"):
        require_gate(trained)
    (trained / GATE_FILE).write_text("{not json")
    with pytest.raises(ModelError):
        require_gate(trained)
    (trained / GATE_FILE).write_text(json.dumps({"passed": True}))
    require_gate(trained)


async def test_a_model_trained_without_examples_is_prompted_without_them(
    tmp_path: Path,
    tiny_catalog: Catalog,
    tiny_shoppers: ShopperStore,
    test_settings: Settings,
) -> None:
    async def turns(settings: Settings) -> int:
        engine = ScriptedEngine([])
        pipeline = make_pipeline(engine, tiny_catalog, tiny_shoppers, settings)
        await pipeline.generate(BannerRequest(shopper_id="s1", template="hero_banner"))
        return len(engine.requests[0].messages)

    served = await turns(test_settings)
    folder = tmp_path / "trained"
    folder.mkdir()
    mark_trained(folder, {"with_examples": False})
    trained = await turns(test_settings.model_copy(update={"llm_dir": folder}))
    # System and prompt only: the examples' (prompt, answer) turns are gone.
    assert trained == 2 and served > trained


def test_the_gate_prompts_the_current_model_as_it_is_served(
    tmp_path: Path, test_settings: Settings
) -> None:
    # The served model may itself be a trained one: then it too is judged without examples.
    current, candidate = tmp_path / "current", tmp_path / "candidate"
    for folder in (current, candidate):
        folder.mkdir()
    mark_trained(current, {"with_examples": False})
    engines: list[ScriptedEngine] = []

    def engine_on(folder: Path) -> ScriptedEngine:
        engines.append(ScriptedEngine([]))
        return engines[-1]

    settings = test_settings.model_copy(update={"llm_dir": current})
    report = run_gate(settings, candidate, engine_on, prompts=2, samples=1)
    served, trained = ([r.messages for r in e.requests] for e in engines)
    assert report.prompts == 2 and served == trained
    assert all(len(messages) == 2 for messages in served)  # system and prompt, no examples
    assert json.loads((candidate / GATE_FILE).read_text())["prompts"] == 2


def test_rows_become_prompt_completion_pairs_with_the_copy_alone_as_the_completion() -> None:
    row = {
        "id": "x",
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": '{"headline":"h"}'},
        ],
    }
    pair = prompt_completion(row)
    assert [m["role"] for m in pair["prompt"]] == ["system", "user"]
    assert pair["completion"] == [{"role": "assistant", "content": '{"headline":"h"}'}]
    with pytest.raises(ValueError, match="not the answer"):
        prompt_completion({"id": "y", "messages": row["messages"][:2]})


def test_the_gate_reads_answers_with_the_serving_rubric() -> None:
    found, _ = load(PROJECT_ROOT / "data" / "house_style")
    category = next(c for c in found.categories.values() if c.split == "held_out")
    example = category.examples[0]
    written = json.dumps(example.output())
    assert judge(written, example, category) == []  # the set's own copy is publishable
    restated = json.dumps(example.output() | {"subheadline": example.headline})
    assert [f.name for f in judge(restated, example, category) or []][:1] == ["restated"]
    assert judge('{"headline": "cut', example, category) is None
    # Serving's guards judge too: copy they would refuse is a hard finding, by their name.
    unfinished = json.dumps(example.output() | {"subheadline": "The feeders keep birds fed and a"})
    refused = [(f.name, f.field, f.hard) for f in judge(unfinished, example, category) or []]
    assert ("unfinished", "subheadline", True) in refused
    invented = json.dumps(example.output() | {"headline": "Clearance on every feeder"})
    assert "invented_offer" in [f.name for f in judge(invented, example, category) or []]
    scored = score([(written, restated), ('{"cut', '{"cut')], [(example, category)] * 2)
    assert (scored.banners, scored.publishable_banners, scored.answers) == (2, 1, 4)
    assert (scored.invalid, scored.hard_answers) == (2, 1)


def test_every_held_out_example_passes_what_the_gate_judges_by() -> None:
    """The set's own copy is what the gate holds a model to: none of it is refused."""
    found, _ = load(PROJECT_ROOT / "data" / "house_style")
    held = [c for c in found.categories.values() if c.split == "held_out"]
    judged = {
        (c.category, e.headline): judge(json.dumps(e.output()), e, c)
        for c in held
        for e in c.examples
    }
    assert len(judged) > 200
    assert {k: v for k, v in judged.items() if v} == {}


def test_the_candidate_passes_only_if_it_is_no_less_publishable_and_no_more_refused() -> None:
    current = ModelScore(answers=100, hard_answers=20, banners=25, publishable_banners=10)
    better = ModelScore(answers=100, hard_answers=10, banners=25, publishable_banners=15)
    riskier = ModelScore(answers=100, hard_answers=30, banners=25, publishable_banners=20)
    assert verdict(current, better)[0]
    assert not verdict(current, riskier)[0]
    assert not verdict(better, current)[0]
    low, high = wilson(10, 25)
    assert low < 0.4 < high and low >= 0 and high <= 1
