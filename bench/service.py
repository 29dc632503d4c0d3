"""The service against raw vLLM, side by side in one run, at concurrency 1, 4, 8 and 16.

Starts the real service (`marquee serve --engine vllm`, managed vLLM) and sends:
- raw: the very prompts and schemas the service would send, straight to its vLLM server;
- service: POST /v1/banners over HTTP (each request unique, so none is served from cache).
Then the in-process transformers engine at concurrency 1 as the naive baseline, and a cache
hit (an identical request repeated).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.config import PROJECT_ROOT, get_settings
from app.generation.engine import GenerationRequest
from app.generation.vllm_engine import VLLMEngine
from app.generation.vllm_server import free_port
from app.pipeline import BannerRequest
from app.runtime import build_pipeline
from app.store.repositories import ApiKeyStore
from bench.common import pct, write_results

LEVELS = (1, 4, 8, 16)
ROUNDS = 4  # requests per level = ROUNDS x concurrency (at least 16)


def profiles(pipeline, count: int, tag: str) -> list[dict[str, Any]]:
    """Demo shoppers' profiles under fresh ids: same work as the demo, never a cache hit."""
    people = [s for s in pipeline.shoppers.all() if s.history]
    made = []
    for i in range(count):
        shopper = people[i % len(people)]
        made.append(
            {
                "id": f"{tag}-{i}-{shopper.id}",
                "segment": shopper.segment,
                "interests": list(shopper.interests),
                "history": [e.model_dump(mode="json") for e in shopper.history[-40:]],
            }
        )
    return made


async def run_level(level: int, jobs: list[Any], call) -> tuple[list[float], int, float]:
    gate = asyncio.Semaphore(level)
    latencies: list[float] = []
    tokens = 0

    async def one(job) -> None:
        nonlocal tokens
        async with gate:
            start = time.perf_counter()
            # Await first: `tokens += await ...` would read `tokens` before the await and lose
            # the increments of the requests finishing meanwhile.
            produced = await call(job)
            tokens += produced
            latencies.append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(one(job) for job in jobs))
    return latencies, tokens, time.perf_counter() - start


async def run(base: str, vllm_url: str, key: str) -> list[list[object]]:
    settings = get_settings()
    pipeline = build_pipeline(settings, with_engine=False, with_changes=False)
    raw = VLLMEngine(vllm_url, settings.llm_name)
    http = httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}, timeout=600)
    rows: list[list[object]] = []
    overheads: dict[int, list[float]] = {}
    stage_work: list[float] = []
    for level in LEVELS:
        count = max(16, ROUNDS * level)
        people = profiles(pipeline, count, f"L{level}")

        async def raw_call(profile: dict) -> int:  # type: ignore[type-arg]
            from app.domain import Shopper

            prepared = pipeline.prepare(BannerRequest(shopper=Shopper.model_validate(profile)))
            assert prepared.prompt is not None
            result = await raw.generate(
                GenerationRequest(
                    messages=prepared.prompt.messages,
                    schema=prepared.output_model,
                    sampling=prepared.template.header.sampling,
                    seed=7,
                )
            )
            return result.output_tokens

        service_call = _tracking(http, overheads.setdefault(level, []), stage_work)
        for name, call in (("raw vLLM", raw_call), ("service", service_call)):
            latencies, tokens, wall = await run_level(level, people, call)
            rows.append(
                [
                    name,
                    level,
                    count,
                    count / wall,
                    tokens / wall,
                    pct(latencies, 50),
                    pct(latencies, 95),
                ]
            )
    await http.aclose()
    await raw.close()
    for level, values in overheads.items():
        rows.append(
            ["service overhead per banner (ms)", level, len(values), "-", "-",
             pct(values, 50), pct(values, 95)]
        )  # fmt: skip
    rows.append(
        ["pipeline stages: retrieval + render + guards (ms)", "all", len(stage_work), "-", "-",
         pct(stage_work, 50), pct(stage_work, 95)]
    )  # fmt: skip
    return rows


def _tracking(http: httpx.AsyncClient, overheads: list[float], stage_work: list[float]):
    """A service call that also records its overhead (wall time minus generation time) and the
    CPU work of the pipeline's own stages, from the banner's timings."""

    async def call(profile: dict) -> int:  # type: ignore[type-arg]
        start = time.perf_counter()
        response = await http.post("/v1/banners", json={"profile": profile})
        elapsed = (time.perf_counter() - start) * 1000
        response.raise_for_status()
        banner = response.json()["banners"][0]
        timings = banner["timings"]
        overheads.append(elapsed - timings["generation_ms"])
        stage_work.append(timings["retrieval_ms"] + timings["render_ms"] + timings["guards_ms"])
        return int(banner["output_tokens"])

    return call


async def cache_hits(base: str, key: str) -> list[float]:
    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}) as http:
        body = {"shopper_id": "u004"}
        (await http.post("/v1/banners", json=body, timeout=600)).raise_for_status()
        samples = []
        for _ in range(50):
            start = time.perf_counter()
            response = await http.post("/v1/banners", json=body)
            samples.append((time.perf_counter() - start) * 1000)
            assert response.json()["cached"] is True
    return samples


async def in_process(count: int = 4) -> list[object]:
    settings = get_settings()
    pipeline = build_pipeline(settings, with_changes=False)
    people = profiles(pipeline, count, "inproc")
    from app.domain import Shopper

    latencies, tokens = [], 0
    start = time.perf_counter()
    for profile in people:
        t0 = time.perf_counter()
        (banner,) = await pipeline.generate(BannerRequest(shopper=Shopper.model_validate(profile)))
        latencies.append((time.perf_counter() - t0) * 1000)
        tokens += banner.output_tokens
    wall = time.perf_counter() - start
    await pipeline.close()
    return [
        "in-process transformers",
        1,
        count,
        count / wall,
        tokens / wall,
        pct(latencies, 50),
        pct(latencies, 95),
    ]


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="marquee-bench-"))
    database = f"sqlite+aiosqlite:///{folder / 'bench.db'}"
    key = asyncio.run(ApiKeyStore.create_in(database, "bench", ["cms"]))
    port, vllm_port = free_port(), free_port()
    env = {
        **os.environ,
        "MARQUEE_DATABASE_URL": database,
        "MARQUEE_VLLM_PORT": str(vllm_port),
        "MARQUEE_MAX_IN_FLIGHT_REQUESTS": "64",
    }
    log = (folder / "service.log").open("w")
    service = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--engine", "vllm", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if service.poll() is not None:
                raise SystemExit(f"service exited; see {folder / 'service.log'}")
            time.sleep(1)
        rows = asyncio.run(run(base, f"http://127.0.0.1:{vllm_port}", key))
        hits = asyncio.run(cache_hits(base, key))
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=120)
        log.close()
    rows.append(
        ["cache hit (identical request)", 1, len(hits), "-", "-", pct(hits, 50), pct(hits, 95)]
    )
    rows.append(asyncio.run(in_process()))
    raw8 = next(r for r in rows if r[0] == "raw vLLM" and r[1] == 8)
    svc8 = next(r for r in rows if r[0] == "service" and r[1] == 8)
    token_ratio = float(svc8[4]) / float(raw8[4])  # type: ignore[arg-type]
    banner_ratio = float(svc8[3]) / float(raw8[3])  # type: ignore[arg-type]
    write_results(
        "service",
        "Service vs raw vLLM (SmolLM2-135M, vLLM CPU, 2 cores)",
        ["mode", "concurrency", "requests", "banners/s", "output tok/s", "p50 ms", "p95 ms"],
        rows,
        [
            f"at concurrency 8 the service makes {banner_ratio:.0%} of raw vLLM's banners/s and "
            f"{token_ratio:.0%} of its output tokens/s: service tokens include guard retries "
            "(a refused banner is generated again), raw vLLM sends each prompt once, unchecked",
            "overhead = client-side latency minus the banner's generation time (retrieval, render, "
            "guards, storage, HTTP, and waiting for the CPU both processes share on this 2-core "
            "machine); at concurrency 1 it is the service's own cost, above that it is mostly "
            "waiting; the stage row is the pipeline's own CPU work per banner",
        ],
    )


if __name__ == "__main__":
    main()
