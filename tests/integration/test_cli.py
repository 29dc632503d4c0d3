"""The `marquee` command as a user runs it: real process, real exit codes, no tracebacks."""

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
        timeout=300,
        env={**os.environ, **env},
    )


def test_candidates_explains_the_selection() -> None:
    run = marquee("candidates", "--user", "u004", "--json")
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    assert shown["known"] and not shown["cold_start"]
    assert len(shown["candidates"]) == 6
    assert {"semantic", "collaborative", "popularity", "relevance", "mmr"} <= set(
        shown["candidates"][0]["scores"]
    )


def test_unknown_template_is_one_line_and_exit_2() -> None:
    run = marquee("candidates", "--user", "u004", "--template", "nope")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("error: unknown template 'nope'")
    assert "Traceback" not in run.stderr


def test_bad_catalog_row_is_one_line_with_the_line_number(tmp_path: Path) -> None:
    bad = tmp_path / "products.jsonl"
    bad.write_text('{"id": "P1", "title": "x"}\n')
    run = marquee("candidates", "--user", "u004", MARQUEE_PRODUCTS_PATH=str(bad))
    assert run.returncode == 2
    assert "products.jsonl:1: field 'brand'" in run.stderr
    assert "Traceback" not in run.stderr
