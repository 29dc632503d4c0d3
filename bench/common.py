"""Small helpers shared by the benchmarks: percentiles and a results table on disk."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from app.config import PROJECT_ROOT

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q)) if samples else float("nan")


def describe_machine() -> str:
    """The machine a number came from: numbers from a CPU with native bf16 and from one
    without differ by up to 30x, so every results file says which it was."""
    from app.hardware import detect

    cpu = detect().cpu
    gpus = ", ".join(gpu.name for gpu in detect().gpus) or "no GPU"
    return (
        f"{cpu.model} ({platform.machine()}), {cpu.cores} cores, widest ISA {cpu.vector_isa}, "
        f"native bf16 {'yes' if cpu.native_bf16 else 'no'}, {gpus}, Python "
        f"{platform.python_version()}"
    )


def write_results(
    name: str,
    title: str,
    header: list[str],
    rows: list[list[object]],
    notes: list[str],
    machine: str | None = None,
) -> Path:
    """Write ``results/<name>.md`` (a table people read) and ``.json`` (for tooling).
    ``machine``: where the numbers were measured (default: this machine)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    machine = machine or describe_machine()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# {title}",
        "",
        f"_{stamp}; {machine}_",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [f"{c:,.2f}" if isinstance(c, float) else str(c) for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"- {note}" for note in notes] + [""]
    path = RESULTS_DIR / f"{name}.md"
    path.write_text("\n".join(lines))
    (RESULTS_DIR / f"{name}.json").write_text(
        json.dumps(
            {
                "title": title,
                "when": stamp,
                "machine": machine,
                "header": header,
                "rows": rows,
                "notes": notes,
            },
            indent=2,
            default=str,
        )
    )
    print("\n".join(lines))
    return path


def make_shoppers(folder: Path, count: int) -> Path:
    """``count`` synthetic shoppers with the demo generator (scripts/make_demo_data.py: the
    demo catalog, the first 72 shoppers as committed, the rest more of the same personas)."""
    subprocess.run(
        [
            sys.executable,
            "scripts/make_demo_data.py",
            "--out",
            str(folder),
            "--shoppers",
            str(count),
        ],
        cwd=PROJECT_ROOT,
        check=True,
        capture_output=True,
    )
    return folder
