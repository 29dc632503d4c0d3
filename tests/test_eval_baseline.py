"""`marquee eval --baseline`: a run against an earlier one, and the history of runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import cli
from eval import baseline, metrics
from eval.runner import HIGHER_IS_BETTER


def summary(fallback: list[float], lift: list[float], subjects: list[str]) -> dict[str, object]:
    return {
        "suite": "smoke",
        "engine": "transformers",
        "copy": {
            "default": {
                "subjects": subjects,
                "values": {"fallback": fallback, "personalization_lift": lift},
                "fallback": {"mean": sum(fallback) / len(fallback)},
                "personalization_lift": {"mean": sum(lift) / len(lift)},
                "self_bleu": 30.0,
            }
        },
        "retrieval": {"demo": {"marquee": {"ndcg@10": 0.11}, "random": {"ndcg@10": 0.01}}},
    }


SHOPPERS = [f"hero:u{i}" for i in range(40)]


def test_the_same_shoppers_are_compared_pair_by_pair() -> None:
    before = summary([1.0] * 10 + [0.0] * 30, [0.1] * 40, SHOPPERS)
    after = summary([0.0] * 40, [0.1 + 0.01 * (i % 3) for i in range(40)], SHOPPERS)
    found = baseline.differences(after, before, HIGHER_IS_BETTER)
    block = found["copy"]["default"]
    assert block["paired"] is True and block["banners"] == 40
    fallback = block["metrics"]["fallback"]
    assert fallback["difference"] == pytest.approx(-0.25)
    assert fallback["ci"][1] < 0 and fallback["verdict"] == "better now"
    _, low, high = metrics.paired_difference([1.0] * 10 + [0.0] * 30, [0.0] * 40)
    assert fallback["ci"] == [low, high]
    assert block["metrics"]["personalization_lift"]["verdict"] == "better now"
    assert found["retrieval_ndcg@10"]["demo / marquee"]["difference"] == 0.0


def test_other_shoppers_are_compared_as_independent_samples() -> None:
    before = summary([1.0, 0.0] * 20, [0.1] * 40, SHOPPERS)
    after = summary([1.0, 0.0] * 20, [0.1] * 40, [s + "x" for s in SHOPPERS])
    block = baseline.differences(after, before, HIGHER_IS_BETTER)["copy"]["default"]
    assert block["paired"] is False
    fallback = block["metrics"]["fallback"]
    assert fallback["difference"] == 0.0 and fallback["ci"][0] < 0 < fallback["ci"][1]
    assert fallback["verdict"] == "no clear difference"


def test_each_run_adds_one_line_to_the_history(tmp_path: Path) -> None:
    run = summary([0.0, 1.0], [0.2, 0.1], SHOPPERS[:2])
    baseline.record(run, True, tmp_path)
    baseline.record(run, False, tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [line["passed"] for line in lines] == [True, False]
    assert lines[0]["copy"]["default"] == {
        "fallback": 0.5,
        "retries": None,
        "personalization_lift": pytest.approx(0.15),
        "self_bleu": 30.0,
    }
    assert lines[0]["ndcg@10"] == {"demo": 0.11}


def test_a_baseline_that_is_not_a_summary_is_refused_before_any_work(tmp_path: Path) -> None:
    bad = tmp_path / "notes.json"
    bad.write_text('{"hello": 1}')
    result = CliRunner().invoke(cli, ["eval", "--baseline", str(bad), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not a summary.json written by marquee eval" in result.output
    garbled = tmp_path / "garbled.json"
    garbled.write_bytes(b"\xff{")
    result = CliRunner().invoke(cli, ["eval", "--baseline", str(garbled)])
    assert result.exit_code == 2 and "cannot read the baseline" in result.output
    assert not (tmp_path / "history.jsonl").exists()
