"""A big pre-generation job as an operator runs it: memory over the run, a kill, a resume.

    .venv/bin/python -m bench.pregeneration_scale [--shoppers 10000] [--kill-at 0.4]

Makes ``--shoppers`` synthetic shoppers with the demo generator (scripts/make_demo_data.py:
the demo catalog, the first 72 shoppers as committed, the rest more of the same personas),
starts one vLLM server, then runs `marquee pregenerate --placement home_hero --shoppers all`
as a subprocess against it, on a temporary SQLite database:

1. samples every 5 s the resident memory of the command and of everything it started (the
   local Ray's processes and its workers), and the job's progress from the database;
2. kills the command with SIGKILL once ``--kill-at`` of the job is stored, and notes which
   banners were stored by then (and when each was made);
3. runs the same command again: it must say it resumes, finish the job, and leave every banner
   stored before the kill as it was (not made again);
4. checks memory flat over the second run (the median of its last third within 5 % of its
   first third, after a warm-up), for the command and for the workers.

``--resume FOLDER`` takes the work folder of an earlier run that did not finish (its path is
printed at the start) and runs only step 3 on it, with the same checks: a 10,000-shopper job
takes hours of a 2-core machine, and it can be finished in parts.

Writes bench/results/pregeneration_scale.md, .json and .png; exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from app.config import PROJECT_ROOT, get_settings
from app.runtime import make_vllm_engine
from bench.common import make_shoppers, write_results

PLACEMENT = "home_hero"
SAMPLE_S = 5.0
GROWTH_LIMIT_PCT = 5.0


def progress(database: Path) -> tuple[int, int]:
    """(done, total) of the newest job, from the database (0, 0 before there is one)."""
    done, total, _, _ = counts(database)
    return done, total


def counts(database: Path) -> tuple[int, int, int, int]:
    """(done, total, failures, fallbacks) of the newest job; the last two count every run of it."""
    with contextlib.suppress(sqlite3.Error), sqlite3.connect(database, timeout=5) as db:
        row = db.execute(
            "SELECT done, total, failures, fallbacks FROM jobs ORDER BY created_at DESC LIMIT 1"
        ).fetchone()
        if row:
            return int(row[0]), int(row[1]), int(row[2]), int(row[3])
    return 0, 0, 0, 0


def limit_changes(log: str) -> list[int]:
    """The engine's in-flight limits, each time a late or timed-out answer lowered it."""
    return [int(m) for m in re.findall(r"concurrency_lowered.*?\blimit\W+(\d+)", log)]


def stored(database: Path) -> dict[tuple[str, str], str]:
    with sqlite3.connect(database, timeout=5) as db:
        rows = db.execute(
            "SELECT audience, subject, generated_at FROM placement_banners WHERE placement = ?",
            (PLACEMENT,),
        ).fetchall()
    return {(a, s): str(g) for a, s, g in rows}


def memory(process: psutil.Process) -> tuple[float, float]:
    """RSS of the command itself, and of everything it started (Ray and its workers), in MB."""
    try:
        own = process.memory_info().rss
        children = process.children(recursive=True)
    except psutil.Error:
        return float("nan"), float("nan")
    total = 0
    for child in children:
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return own / 2**20, total / 2**20


def run(
    env: dict[str, str],
    database: Path,
    samples: list[dict[str, Any]],
    phase: str,
    kill_at: float | None,
) -> tuple[int | None, str]:
    """Run the command, sampling it; SIGKILL it once ``kill_at`` of the job is stored."""
    command = [
        sys.executable, "-m", "app", "pregenerate",
        "--placement", PLACEMENT, "--shoppers", "all",
    ]  # fmt: skip
    log = database.with_suffix(f".{phase}.log")
    with log.open("w") as out:
        child = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=out)
        process = psutil.Process(child.pid)
        start = time.monotonic()
        while child.poll() is None:
            time.sleep(SAMPLE_S)
            done, total = progress(database)
            command_mb, workers_mb = memory(process)
            samples.append(
                {
                    "phase": phase,
                    "t": round(time.monotonic() - start, 1),
                    "done": done,
                    "total": total,
                    "command_rss_mb": command_mb,
                    "workers_rss_mb": workers_mb,
                }
            )
            print(f"  {phase} t={samples[-1]['t']:6.0f}s {done}/{total} "
                  f"command={command_mb:.0f}MB workers={workers_mb:.0f}MB", flush=True)  # fmt: skip
            if kill_at is not None and total and done >= kill_at * total:
                for proc in [*process.children(recursive=True), process]:
                    with contextlib.suppress(psutil.Error):
                        proc.send_signal(signal.SIGKILL)
                child.wait()
                return None, log.read_text()
    return child.returncode, log.read_text()


def growth(values: list[float]) -> tuple[float, float, float]:
    values = [v for v in values if v == v]
    if len(values) < 6:
        return float("nan"), float("nan"), float("nan")
    third = len(values) // 3
    first, last = statistics.median(values[:third]), statistics.median(values[-third:])
    return first, last, (last / first - 1) * 100


def mb(first: float, last: float, change: float) -> str:
    return f"{first:,.0f} / {last:,.0f} ({change:+.1f} %)"


def plot(samples: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (done, rss) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    offset = 0.0
    for phase in ("first run (killed)", "second run (resumed)"):
        rows = [s for s in samples if s["phase"] == phase]
        if not rows:
            continue
        t = [(offset + s["t"]) / 60 for s in rows]
        done.plot(t, [s["done"] for s in rows], label=phase)
        rss.plot(t, [s["command_rss_mb"] for s in rows], label=f"command, {phase}")
        rss.plot(t, [s["workers_rss_mb"] for s in rows], label=f"Ray + workers, {phase}")
        offset += rows[-1]["t"] + SAMPLE_S
    done.set_ylabel("banners stored")
    done.legend(fontsize=8)
    done.set_title("A big pre-generation job: killed, then resumed")
    rss.set_ylabel("RSS (MB)")
    rss.set_xlabel("minutes")
    rss.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shoppers", type=int, default=10_000)
    parser.add_argument("--kill-at", type=float, default=0.4)
    parser.add_argument("--resume", type=Path, help="an unfinished run's work folder")
    args = parser.parse_args()
    if args.resume:
        folder, data = args.resume, args.resume / "data"
        args.shoppers = sum(1 for _ in (data / "shoppers.jsonl").open())
    else:
        folder = Path(tempfile.mkdtemp(prefix="bench-scale-"))
        make_shoppers(folder / "data", args.shoppers)
        data = folder / "data"
    print(f"work folder: {folder}", flush=True)
    database = folder / "jobs.db"
    settings = get_settings()
    engine = make_vllm_engine(settings.model_copy(update={"vllm_mode": "managed"}))
    base = engine.base_urls[0]  # type: ignore[attr-defined]
    env = {
        **os.environ,
        "MARQUEE_DATA_DIR": str(data),
        "MARQUEE_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "MARQUEE_ENGINE": "vllm",
        "MARQUEE_VLLM_MODE": "external",
        "MARQUEE_VLLM_URL": base,
        "MARQUEE_JOB_HEARTBEAT_TIMEOUT_S": "10",
        # the workers' log lines in the command's log (the engine's limit changes are read there)
        "MARQUEE_RAY_LOG_TO_DRIVER": "true",
        # the demo catalog is the committed one: its index is reused, not embedded again
        "MARQUEE_INDEX_PATH": str(settings.index_dir),
    }
    samples: list[dict[str, Any]] = []
    try:
        if not args.resume:
            run(env, database, samples, "first run (killed)", args.kill_at)
        before = stored(database)
        _, _, failures_before, fallbacks_before = counts(database)
        time.sleep(12)  # past the heartbeat timeout: the job reads as interrupted
        code, second_log = run(env, database, samples, "second run (resumed)", None)
        after = stored(database)
    finally:
        asyncio.run(engine.close())
    resumed_line = next((line for line in second_log.splitlines() if "resuming" in line), "")
    kept = sum(1 for key, made in before.items() if after.get(key) == made)
    second = [s for s in samples if s["phase"] == "second run (resumed)"]
    warm = second[len(second) // 5 :]  # warm-up: Ray's start, the workers loading
    c_first, c_last, c_growth = growth([s["command_rss_mb"] for s in warm])
    w_first, w_last, w_growth = growth([s["workers_rss_mb"] for s in warm])
    done, total, failures, fallbacks = counts(database)
    limits = limit_changes(second_log)
    checks = {
        "finished": code == 0 and done == total and len(after) == total,
        "resumed": bool(resumed_line) and kept == len(before),
        "memory flat": all(g == g and g <= GROWTH_LIMIT_PCT for g in (c_growth, w_growth)),
    }
    seconds = second[-1]["t"] if second else float("nan")
    rate = (total - len(before)) / seconds if second else float("nan")
    rows: list[list[object]] = [
        ["shoppers", args.shoppers],
        ["subjects (shoppers + segments + everyone)", total],
        ["stored before the kill", len(before)],
        ["of those, untouched by the resumed run", kept],
        ["second run: banners made", total - len(before)],
        ["second run: seconds", seconds],
        ["second run: banners/s (whole run, start-up included)", rate],
        ["second run: failed subjects (fallback stored, stale)", failures - failures_before],
        ["second run: fallback banners (guards refused every try)", fallbacks - fallbacks_before],
        [
            "second run: in-flight limit lowered (times, lowest)",
            f"{len(limits)}, {min(limits)}" if limits else "0",
        ],
        ["command RSS, first / last third (MB)", mb(c_first, c_last, c_growth)],
        ["Ray + workers RSS, first / last third (MB)", mb(w_first, w_last, w_growth)],
    ]
    notes = [f"CHECK {name}: {'PASS' if ok else 'FAIL'}" for name, ok in checks.items()]
    notes += [f"resume: {resumed_line.strip()}", f"work folder: {folder}"]
    if args.resume:
        notes.append(
            "this run resumed a folder an earlier run of this bench left unfinished (--resume): "
            "the first run's memory samples are in that run's notes, not here"
        )
    write_results(
        "pregeneration_scale",
        "A big pre-generation job, killed and resumed",
        ["", "value"],
        rows,
        notes,
    )
    plot(samples, Path(__file__).resolve().parent / "results" / "pregeneration_scale.png")
    raise SystemExit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
