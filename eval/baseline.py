"""A run against an earlier one (``marquee eval --baseline summary.json``), and the history
of runs kept beside the reports.

Copy metrics are compared banner by banner when both runs wrote for the same shoppers and
templates (a paired bootstrap: the same suite on the same data), else as two independent
samples. Retrieval rows are compared as numbers: their intervals are in each report.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.config import PROJECT_ROOT
from eval import metrics

HISTORY = "history.jsonl"
# metrics.verdict speaks of arms A and B; here A is the baseline and B this run.
VERDICTS = {
    "B better": "better now",
    "A better": "worse now",
    "no clear difference": "no clear difference",
}


def load(path: Path) -> dict[str, Any]:
    """The summary of an earlier run: its ``summary.json``. Raises ValueError saying why not."""
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read the baseline {path}: {error}") from error
    summary = document.get("summary") if isinstance(document, dict) else None
    if not isinstance(summary, dict) or "copy" not in summary:
        raise ValueError(f"{path} is not a summary.json written by marquee eval")
    return summary


def differences(
    summary: dict[str, Any], baseline: dict[str, Any], higher_is_better: dict[str, bool]
) -> dict[str, Any]:
    """This run (B) minus the baseline (A), per copy arm both have and per metric, with a 95 %
    interval and a verdict; and NDCG@10 per retrieval row both have."""
    copy: dict[str, Any] = {}
    for arm, now in summary.get("copy", {}).items():
        before = baseline.get("copy", {}).get(arm)
        if not before or "values" not in before or "values" not in now:
            continue
        paired = before.get("subjects") == now.get("subjects")
        rows = {}
        for metric, higher in higher_is_better.items():
            a, b = before["values"].get(metric), now["values"].get(metric)
            if a is None or b is None:
                continue
            compare = metrics.paired_difference if paired else metrics.unpaired_difference
            diff, low, high = compare(a, b)
            rows[metric] = {
                "baseline": sum(a) / max(1, len(a)),
                "now": sum(b) / max(1, len(b)),
                "difference": diff,
                "ci": [low, high],
                "verdict": VERDICTS[metrics.verdict(low, high, higher)],
            }
        copy[arm] = {"paired": paired, "banners": len(now["values"]["fallback"]), "metrics": rows}
    retrieval: dict[str, Any] = {}
    for dataset, rows_now in summary.get("retrieval", {}).items():
        rows_before = baseline.get("retrieval", {}).get(dataset, {})
        for recommender, row in rows_now.items():
            if recommender in rows_before and "ndcg@10" in row:
                was = rows_before[recommender]["ndcg@10"]
                retrieval[f"{dataset} / {recommender}"] = {
                    "baseline": was,
                    "now": row["ndcg@10"],
                    "difference": row["ndcg@10"] - was,
                }
    return {"copy": copy, "retrieval_ndcg@10": retrieval}


def print_differences(found: dict[str, Any]) -> None:
    for arm, block in found["copy"].items():
        kind = "paired" if block["paired"] else "unpaired"
        print(f"copy {arm} against the baseline ({block['banners']} banners, {kind}):")
        for metric, row in block["metrics"].items():
            low, high = row["ci"]
            print(
                f"  {metric:22} {row['baseline']:9.4g} -> {row['now']:9.4g}  "
                f"{row['difference']:+.4g} [{low:+.4g}, {high:+.4g}]  {row['verdict']}"
            )
    moved = {k: v for k, v in found["retrieval_ndcg@10"].items() if abs(v["difference"]) > 1e-9}
    if moved:
        print("retrieval NDCG@10 against the baseline:")
        for name, row in moved.items():
            print(
                f"  {name:40} {row['baseline']:.4f} -> {row['now']:.4f} ({row['difference']:+.4f})"
            )


def _commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def record(summary: dict[str, Any], passed: bool, out_dir: Path) -> Path:
    """Append this run's headline numbers to ``<out>/history.jsonl``: one line a run, so a
    trend is a ``jq`` away and a regression can be dated."""
    line: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "suite": summary.get("suite"),
        "engine": summary.get("engine"),
        "passed": passed,
        "seconds": summary.get("seconds"),
        "copy": {
            arm: {
                key: block[key]["mean"] if isinstance(block.get(key), dict) else block.get(key)
                for key in ("fallback", "retries", "personalization_lift", "self_bleu")
            }
            for arm, block in summary.get("copy", {}).items()
        },
        "ndcg@10": {
            dataset: rows["marquee"]["ndcg@10"]
            for dataset, rows in summary.get("retrieval", {}).items()
            if "marquee" in rows
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / HISTORY
    with path.open("a") as history:
        history.write(json.dumps(line) + "\n")
    return path
