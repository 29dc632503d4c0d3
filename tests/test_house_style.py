"""The house-style training set: every example is copy serving would publish, and nothing of
the demo catalog or the eval datasets is in it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from app.config import PROJECT_ROOT
from app.prompting.templates import TemplateRegistry
from app.training import house_style
from app.training.house_style import Forbidden, check, load

FOLDER = PROJECT_ROOT / "data" / "house_style"
FORBIDDEN = Forbidden.from_catalog(PROJECT_ROOT / "data" / "products.jsonl")


def test_the_templates_the_set_answers_are_the_projects_own() -> None:
    registry = TemplateRegistry.from_folder(PROJECT_ROOT / "prompts")
    for name, schema in house_style.TEMPLATE_SCHEMAS.items():
        template = registry.get(name)
        assert template.header.schema_name == schema, name
        assert template.header.k == house_style.TEMPLATE_K[name], name


def test_the_committed_set_keeps_every_promise() -> None:
    found, problems = load(FOLDER)
    problems += check(found, FORBIDDEN)
    assert not problems, "\n".join(str(p) for p in problems[:20])
    train, held_out = found.split("train"), found.split("held_out")
    assert len(train) >= house_style.MIN_TRAIN_CATEGORIES and held_out
    assert found.examples >= house_style.MIN_EXAMPLES
    # Every template and every voice is taught.
    examples = [e for c in found.categories.values() for e in c.examples]
    assert {e.template for e in examples} == set(house_style.TEMPLATE_SCHEMAS)
    assert {e.voice for e in examples} == set(found.voices)


GOOD: dict[str, object] = {
    "template": "hero_banner",
    "voice": "plain",
    "interests": ["vegetable gardening"],
    "shown": ["gdn-01", "gdn-02", "gdn-03"],
    "headline": "Ready for planting season",
    "subheadline": "A carbon steel trowel gets seedlings into the ground and off to a good start.",
    "cta": "Shop planting tools",
    "layout": "hero",
    "tone": "warm",
    "products": [1],
}


def _one_file(tmp_path: Path, example: Mapping[str, object], **changes: object) -> list[str]:
    """The problems of a one-category set holding ``example`` (its file changed by
    ``changes``)."""
    source = yaml.safe_load((FOLDER / "categories" / "garden-tools.yaml").read_text())
    source |= {"examples": [example], **changes}
    (tmp_path / "categories").mkdir(exist_ok=True)
    (tmp_path / "voices.yaml").write_text((FOLDER / "voices.yaml").read_text())
    path = tmp_path / "categories" / "garden-tools.yaml"
    path.write_text(yaml.safe_dump(source))
    found, problems = load(tmp_path)
    return [str(p) for p in problems + check(found, FORBIDDEN, whole=False)]


def test_a_good_example_has_no_problem(tmp_path: Path) -> None:
    assert _one_file(tmp_path, GOOD) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"subheadline": "Ready for the planting season."}, "rubric: restated"),
        ({"cta": "Garden Tools"}, "does not fit the schema"),  # not a verb: the grammar's
        ({"headline": "Plant 12 bulbs today"}, "does not fit the schema"),  # a digit
        ({"headline": "Garden Tools"}, "rubric: bare_heading"),
        ({"shown": ["gdn-01", "gdn-99"]}, "products not in this file: gdn-99"),
        ({"products": [4]}, "does not fit the schema"),  # a number that was not shown
        ({"template": "footer"}, "unknown template"),
        ({"voice": "shouty"}, "unknown voice"),
        ({"subheadline": "Pawtrail trowels get seedlings into the ground."}, "demo brand"),
        ({"subheadline": "A Mossgate trowel gets seedlings into the ground."}, "does not show"),
    ],
)
def test_a_bad_example_is_refused_with_what_is_wrong(
    tmp_path: Path, change: Mapping[str, object], expected: str
) -> None:
    problems = _one_file(tmp_path, {**GOOD, **change})
    assert any(expected in p for p in problems), problems


def test_an_eval_category_or_a_demo_product_never_enters_the_set(tmp_path: Path) -> None:
    assert any("is an eval category" in p for p in _one_file(tmp_path, GOOD, category="Swim"))
    assert any(
        "is an eval category" in p for p in _one_file(tmp_path, GOOD, category="Pet supplies")
    )
    source = yaml.safe_load((FOLDER / "categories" / "garden-tools.yaml").read_text())
    products = source["products"]
    products[0] = products[0] | {"title": "Pawtrail Orthopaedic Treat Pouch, Navy"}
    problems = _one_file(tmp_path, GOOD, products=products)
    assert any("a demo catalog product" in p for p in problems), problems


def test_the_same_copy_twice_is_one_example_too_many(tmp_path: Path) -> None:
    source = yaml.safe_load((FOLDER / "categories" / "garden-tools.yaml").read_text())
    source["examples"] = [GOOD, GOOD | {"voice": "warm"}]
    (tmp_path / "categories").mkdir()
    (tmp_path / "voices.yaml").write_text((FOLDER / "voices.yaml").read_text())
    (tmp_path / "categories" / "g.yaml").write_text(yaml.safe_dump(source))
    found, _ = load(tmp_path)
    assert any("the same copy as" in str(p) for p in check(found, FORBIDDEN, whole=False))


def test_the_checker_runs_as_a_command_and_fails_on_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("category: Garden Tools\nproducts: []\n")
    result = subprocess.run(
        [sys.executable, "-m", "app.training.house_style", str(bad)],
        capture_output=True,
        text=True,
        check=False,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 1 and "products" in result.stdout, result
