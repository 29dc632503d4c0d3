"""A pre-generation job against raw vLLM, side by side in one run, on the same prompts.

    .venv/bin/python -m bench.pregeneration [--shoppers 300] [--concurrency 64]

Starts a managed vLLM server (or uses --vllm-url), then:
- raw: the very prompts a job sends (the placement's template rendered for each subject by the
  real pipeline), straight to vLLM, ``--concurrency`` in flight: the ceiling;
- job: a real job (JobRunner, Ray workers, the database) making the same subjects, its workers
  keeping the same number of generations in flight.
vLLM's prefix cache is emptied before each phase, so neither inherits the other's cache (the
server runs with VLLM_SERVER_DEV_MODE=1 for /reset_prefix_cache). For each phase: banners/s,
generation requests/s (a job retries what the guards refuse), the prefix-cache hit rate and
vLLM's prefill/decode time split, read from its /metrics. Each phase is timed while vLLM is
busy with it (from its first request arriving to its last finishing), so the job's start-up
(Ray, the worker loading the pipeline) is reported apart, not counted against its throughput.
Writes bench/results/pregeneration.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from app.config import Settings, get_settings
from app.domain import Audience
from app.generation.engine import GenerationRequest, GenerationResult
from app.generation.vllm_engine import VLLMEngine
from app.pipeline import BannerRequest, Pipeline, PreparedRequest
from app.pregeneration.plan import shopper_for, subjects
from app.pregeneration.runner import JobRunner, Progress
from app.runtime import build_pipeline, make_vllm_engine
from app.store.db import Database
from app.store.pregenerated import JobSpec, JobStore, PlacementBannerStore
from bench.common import make_shoppers, write_results

PLACEMENT = "home_hero"
DEMO_SHOPPERS = 72  # in data/shoppers.jsonl
METRICS = {
    "requests": r'^vllm:request_success_total\{[^}]*finished_reason="stop"[^}]*\} (\S+)',
    "prefix_queries": r"^vllm:prefix_cache_queries_total\{[^}]*\} (\S+)",
    "prefix_hits": r"^vllm:prefix_cache_hits_total\{[^}]*\} (\S+)",
    "prefill_s": r"^vllm:request_prefill_time_seconds_sum\{[^}]*\} (\S+)",
    "decode_s": r"^vllm:request_decode_time_seconds_sum\{[^}]*\} (\S+)",
    "prompt_tokens": r"^vllm:prompt_tokens_total\{[^}]*\} (\S+)",
    "output_tokens": r"^vllm:generation_tokens_total\{[^}]*\} (\S+)",
}


def vllm_metrics(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found = {}
    for name, pattern in METRICS.items():
        match = re.search(pattern, text, re.MULTILINE)
        found[name] = float(match.group(1)) if match else 0.0
    return found


class Busy:
    """When vLLM was busy: polls its running and waiting request gauges in a thread, so a
    phase is timed from its first request reaching the server, not from its own start-up."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.first: float | None = None
        self.last: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Busy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                text = client.get(f"{self.base}/metrics").text
                load = sum(
                    float(m.group(1))
                    for m in re.finditer(
                        r"^vllm:num_requests_(?:running|waiting)\{[^}]*\} (\S+)", text, re.M
                    )
                )
                now = time.perf_counter()
                if load > 0:
                    self.first = self.first or now
                    self.last = now
                self._stop.wait(0.1)

    @property
    def seconds(self) -> float:
        return (self.last - self.first) if self.first and self.last else float("nan")


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in METRICS}


def reset_prefix_cache(base: str) -> None:
    response = httpx.post(f"{base}/reset_prefix_cache", timeout=30)
    response.raise_for_status()


def prompts(
    pipeline: Pipeline, ids: list[str]
) -> tuple[list[GenerationRequest], list[PreparedRequest]]:
    """What a job sends for these shoppers' subjects: one request per subject, first attempt
    (and what the guards need to judge its answer)."""
    requests = []
    prepared_all = []
    for subject in subjects(pipeline.shoppers, "ids", ids):
        shopper = shopper_for(subject, pipeline.shoppers)
        prepared = pipeline.prepare(
            BannerRequest(shopper_id=shopper.id, shopper=shopper, placement=PLACEMENT)
        )
        assert prepared.prompt is not None, subject
        prepared_all.append(prepared)
        requests.append(
            GenerationRequest(
                messages=prepared.prompt.messages,
                schema=prepared.output_model,
                sampling=prepared.template.header.sampling,
                seed=0,
            )
        )
    return requests, prepared_all


async def raw(
    base: str, served: str, requests: list[GenerationRequest], concurrency: int
) -> list[GenerationResult]:
    engine = VLLMEngine(base, served, max_in_flight=concurrency, timeout_s=600)
    try:
        return await engine.generate_many(requests)
    finally:
        await engine.close()


def refused(pipeline: Pipeline, prepared: list[PreparedRequest], answers: list[GenerationResult]):
    """Raw vLLM's answers the job's guards would refuse, and the commonest reasons."""
    reasons: Counter[str] = Counter()
    count = 0
    for request, answer in zip(prepared, answers, strict=True):
        assert request.prompt is not None
        verdict = pipeline.guards.check(
            answer.text,
            request.output_model,
            request.template.spec,
            request.selection.candidates,
            request.template.example_outputs,
            request.prompt,
        )
        if not verdict.ok:
            count += 1
            # "cut_at_limit: cta", "invented_number: headline: '20' ...": the kind and field.
            reasons.update({": ".join(p.split(": ")[:2]).split(" '")[0] for p in verdict.problems})
    return count, reasons


async def job(settings: Settings, base: str, ids: list[str]) -> dict[str, float]:
    """Run a real job; its wall time and when it stored its first batch."""
    first_write: list[float] = []

    def progress(p: Progress) -> None:
        if p.done > 0 and not first_write:
            first_write.append(time.perf_counter())

    async with Database.upgraded(settings.database) as db:
        jobs = JobStore(db)
        made, _ = await jobs.start(JobSpec(PLACEMENT, "ids", tuple(ids)), "bench")
        runner = JobRunner(
            settings,
            jobs,
            PlacementBannerStore(db),
            [base],
            settings.llm_name,
            on_progress=progress,
        )
        start = time.perf_counter()
        finished = await runner.run(made)
        wall = time.perf_counter() - start
    assert finished.state == "succeeded", finished
    return {
        "banners": float(finished.done),
        "fallbacks": float(finished.fallbacks),
        "wall_s": wall,
        "first_write_s": first_write[0] - start,
    }


def row(name: str, banners: float, seconds: float, used: dict[str, float]) -> list[object]:
    queries = used["prefix_queries"] or 1.0
    busy = used["prefill_s"] + used["decode_s"] or 1.0
    return [
        name,
        int(banners),
        seconds,
        banners / seconds,
        used["requests"] / seconds,
        f"{100 * used['prefix_hits'] / queries:.0f} %",
        f"{100 * used['prefill_s'] / busy:.0f} / {100 * used['decode_s'] / busy:.0f}",
        used["prompt_tokens"] / max(used["requests"], 1),
        used["output_tokens"] / max(used["requests"], 1),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shoppers",
        type=int,
        default=300,
        help="shoppers to make for: the demo's, and synthetic ones past its 72 (the guards' "
        "refusals are a share of a few dozen answers otherwise, and swing run to run)",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="generations in flight")
    parser.add_argument("--vllm-url", default=None, help="an external vLLM (default: start one)")
    args = parser.parse_args()

    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # /reset_prefix_cache between the phases
    folder = Path(tempfile.mkdtemp(prefix="bench-pregeneration-"))
    base_settings = get_settings()
    if args.shoppers > DEMO_SHOPPERS:
        make_shoppers(folder / "data", args.shoppers)
        base_settings = base_settings.model_copy(update={"data_dir": folder / "data"})
    settings = base_settings.model_copy(
        update={
            "database_url": f"sqlite+aiosqlite:///{folder / 'bench.db'}",
            "job_workers": 1,
            # One worker keeps --concurrency generations in flight, as the raw phase does.
            "job_shard_size": 8,
            "job_shards_in_flight": max(1, args.concurrency // 8),
        }
    )
    engine = None
    if args.vllm_url:
        base = args.vllm_url.rstrip("/")
    else:
        engine = make_vllm_engine(settings.model_copy(update={"vllm_mode": "managed"}))
        base = engine.base_urls[0]  # type: ignore[attr-defined]
    try:
        pipeline = build_pipeline(settings, with_engine=False)
        ids = [s.id for s in pipeline.shoppers.all()][: args.shoppers]
        requests, prepared = prompts(pipeline, ids)
        served = settings.vllm_served_model or settings.llm_name
        asyncio.run(raw(base, served, requests[:8], 8))  # warm-up: grammar compiled once

        reset_prefix_cache(base)
        before = vllm_metrics(base)
        with Busy(base) as raw_busy:
            answers = asyncio.run(raw(base, served, requests, args.concurrency))
        raw_used = delta(vllm_metrics(base), before)

        reset_prefix_cache(base)
        before = vllm_metrics(base)
        with Busy(base) as job_busy:
            made = asyncio.run(job(settings, base, ids))
        job_used = delta(vllm_metrics(base), before)
    finally:
        if engine is not None:
            asyncio.run(engine.close())
        from app.pregeneration import cluster

        cluster.shutdown()

    raw_rate = len(requests) / raw_busy.seconds
    job_rate = made["banners"] / job_busy.seconds
    raw_gen = raw_used["requests"] / raw_busy.seconds
    job_gen = job_used["requests"] / job_busy.seconds
    retries = job_used["requests"] - made["banners"]
    raw_refused, reasons = refused(pipeline, prepared, answers)
    commonest = ", ".join(f"{reason} {n}" for reason, n in reasons.most_common(5))
    header = [
        "phase",
        "banners",
        "seconds",
        "banners/s",
        "generations/s",
        "prefix-cache hits",
        "prefill / decode time",
        "prompt tokens/gen",
        "output tokens/gen",
    ]
    rows = [
        row("raw vLLM (same prompts)", len(requests), raw_busy.seconds, raw_used),
        row("job", made["banners"], job_busy.seconds, job_used),
    ]
    segments = sum(
        1 for s in subjects(pipeline.shoppers, "ids", ids) if s.audience is Audience.SEGMENT
    )
    notes = [
        f"**job / raw, banners/s: {job_rate / raw_rate:.2f}** (target at least 0.90); "
        f"generations/s: {job_gen / raw_gen:.2f} (the job's machinery alone: the guards' "
        f"retries are generations raw vLLM never makes; {retries:.0f} retries for "
        f"{made['banners']:.0f} banners)",
        "seconds: from the first request reaching vLLM to the last finishing (its running and "
        f"waiting gauges polled every 0.1 s); the job's whole run took {made['wall_s']:.1f} s",
        f"{len(ids)} shoppers + {segments} segments + everyone else = {len(requests)} subjects; "
        f"{args.concurrency} generations in flight in both phases; placement {PLACEMENT}",
        f"job: first batch stored after {made['first_write_s']:.1f} s (Ray start, worker "
        f"loading the pipeline); {int(made['fallbacks'])} fallback banners",
        "a job sends more generations than raw when the guards refuse an answer and retry it: "
        f"the guards would refuse {raw_refused} of raw vLLM's {len(requests)} answers "
        f"({100 * raw_refused / len(requests):.0f} %; {commonest}), so raw vLLM's servable "
        f"banners/s at one try is {raw_rate * (1 - raw_refused / len(requests)):.2f}",
        "prefix-cache hits: share of prompt tokens vLLM found cached (system text, examples and "
        "the template's shared start come first in every prompt)",
    ]
    write_results(
        "pregeneration", "Pre-generation job vs raw vLLM, same prompts", header, rows, notes
    )
    print(f"raw {raw_rate:.2f} banners/s; job {job_rate:.2f}; ratio {job_rate / raw_rate:.2f}")


if __name__ == "__main__":
    main()
