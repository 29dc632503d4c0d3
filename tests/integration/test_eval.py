"""The smoke eval suite as the README runs it: real models, thresholds in eval/thresholds.yaml."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import PROJECT_ROOT

pytestmark = pytest.mark.integration


def test_smoke_suite_meets_its_thresholds_and_writes_a_report(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "eval", "--suite", "smoke", "--out", str(tmp_path)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["passed"] is True
    summary = written["summary"]
    assert summary["copy"]["default"]["banners"] == 6
    assert set(summary["retrieval"]["demo"]) >= {"marquee", "random", "popularity"}
    report = (tmp_path / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 2  # retrieval curves, copy bars
    assert "all checks passed" in report
