"""The smoke eval suite as the README runs it: real models, thresholds in eval/thresholds.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import PROJECT_ROOT

pytestmark = pytest.mark.integration


def marquee(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, **env},
    )


def test_smoke_suite_meets_its_thresholds_and_writes_a_report(tmp_path: Path) -> None:
    # An earlier run to compare with, as `--baseline` reads it: every banner a fallback.
    earlier = {
        "summary": {
            "copy": {
                "default": {
                    "subjects": [f"earlier:{i}" for i in range(6)],
                    "values": {"fallback": [1.0] * 6, "grounded": [1.0] * 6},
                }
            },
            "retrieval": {},
        }
    }
    baseline = tmp_path / "earlier.json"
    baseline.write_text(json.dumps(earlier))
    out = tmp_path / "run"
    result = marquee("eval", "--suite", "smoke", "--out", str(out), "--baseline", str(baseline))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    written = json.loads((out / "summary.json").read_text())
    assert written["passed"] is True
    summary = written["summary"]
    # Other shoppers than the baseline's: compared as independent samples, with intervals.
    assert "copy default against the baseline (6 banners, unpaired)" in result.stdout
    against = summary["baseline"]["copy"]["default"]["metrics"]
    assert set(against) == {"fallback", "grounded"}
    assert against["fallback"]["verdict"] == "better now", against["fallback"]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["suite"] == "smoke" and history[0]["passed"]
    assert history[0]["copy"]["default"]["fallback"] == against["fallback"]["now"]
    assert summary["copy"]["default"]["banners"] == 6
    # One story per banner: the measures of each template, and the banners to read first.
    stories = summary["copy"]["default"]["per_template"]
    assert sum(t["banners"] for t in stories.values()) == 6
    for story in stories.values():
        assert story["borrowed_phrase"]["mean"] == 0.0  # the guard refuses borrowed copy
        assert 1 <= story["categories_per_banner"]["mean"] <= 4
        assert -1 <= story["relevance_random"]["mean"] <= story["relevance"]["mean"] <= 1
    least = summary["copy"]["default"]["least_relevant"]
    assert 1 <= len(least) <= 6 and all(w["products"] for w in least)
    assert set(summary["retrieval"]["demo"]) >= {"marquee", "random", "popularity"}
    # The cold-start slice: shoppers with only stated interests, against segment popularity.
    cold = summary["retrieval"]["demo cold start"]
    assert set(cold) == {"marquee", "segment popularity", "popularity", "random"}
    assert cold["marquee"]["shoppers"] > 0
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 3  # two retrieval curves, copy bars
    assert "Retrieval: demo cold start" in report
    assert "One story per banner, by template" in report and "least relevant banners" in report
    assert "all checks passed" in report
    # Would a marketer publish it: shares per template, never a restated subheadline or a weak
    # call to action served, the banners to read, the rubric's own precision and recall.
    copy_ = summary["copy"]["default"]
    assert 0.0 <= copy_["publishable"]["mean"] <= 1.0
    assert copy_["restated"]["mean"] == 0.0 and copy_["weak_cta"]["mean"] == 0.0
    read = [json.loads(line) for line in (out / "banners.jsonl").read_text().splitlines()]
    assert len(read) == 6 and all(b["headline"] and b["products"] for b in read)
    assert sum(not b["findings"] for b in read) / 6 == copy_["publishable"]["mean"]
    assert summary["rubric"]["cases"] >= 150 and summary["rubric"]["agreement"] >= 0.9
    assert summary["themes"]["demo"]["interests"] >= 60
    assert "Would a marketer publish it?" in report and "Cold start: themes from" in report
    # No judge is configured: the report says so rather than leaving the scores out silently.
    assert summary["copy"]["default"]["judge"]["run"] is False
    assert "Judge: not run (no judge configured" in report


def test_tune_on_the_demo_writes_settings_the_service_reads(tmp_path: Path) -> None:
    """`marquee eval tune --dataset demo` as the README runs it; then `marquee candidates`
    with MARQUEE_SETTINGS_FILE pointing at what it wrote runs on the tuned blend."""
    out = tmp_path / "tune"
    result = marquee("eval", "tune", "--dataset", "demo", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "tune.json").read_text())
    validation = [point["ndcg@10"] for point in report["validation"]]
    assert len(validation) == 32 and validation == sorted(validation, reverse=True)
    assert set(report["test"]) == {"default", "tuned"}
    lines = (out / "tuned.env").read_text().splitlines()
    written = dict(line.split("=", 1) for line in lines if not line.startswith("#"))
    assert written["MARQUEE_SEMANTIC_WEIGHT"] == str(report["best"]["semantic_weight"])
    assert "test split:" in result.stdout and "tuned" in result.stdout

    shown = marquee(
        "candidates", "--user", "u004", "--json", MARQUEE_SETTINGS_FILE=str(out / "tuned.env")
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    used = json.loads(shown.stdout)["signals"]
    best = report["best"]
    total = best["semantic_weight"] + best["collaborative_weight"] + best["popularity_weight"]
    assert used["collaborative"] == pytest.approx(best["collaborative_weight"] / total)
