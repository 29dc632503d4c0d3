"""Banner latency in-process (transformers engine): p50/p95, output tokens/s, the compile-once
claim (first request of a template vs the next), and batched variants vs one at a time.
"""

from __future__ import annotations

import asyncio
import time

from app.config import get_settings
from app.pipeline import BannerRequest, Pipeline
from app.runtime import build_pipeline
from bench.common import pct, write_results

SHOPPERS = ["u004", "u002", "u010", "u001", "u020", "u030", "u041", "u055", "u060", "u070"]


async def timed(pipeline: Pipeline, request: BannerRequest) -> tuple[float, list]:  # type: ignore[type-arg]
    start = time.perf_counter()
    banners = await pipeline.generate(request)
    return (time.perf_counter() - start) * 1000, banners


async def run() -> None:
    settings = get_settings()
    pipeline = build_pipeline(settings, with_changes=False)
    engine = pipeline.engine
    rows: list[list[object]] = []

    # Compile once: the first banner of a template builds its grammar, the next reuse it.
    first_ms, _ = await timed(pipeline, BannerRequest(shopper_id="u005", template="grid_heading"))
    compiled_after_first = engine.compiled  # type: ignore[union-attr]
    second_ms, _ = await timed(pipeline, BannerRequest(shopper_id="u006", template="grid_heading"))
    recompiled = engine.compiled - compiled_after_first  # type: ignore[union-attr]

    # One banner per request, one request at a time.
    latencies, tokens, gen_ms, attempts, fallbacks = [], 0, 0.0, 0, 0
    for shopper in SHOPPERS:
        ms, (banner,) = await timed(pipeline, BannerRequest(shopper_id=shopper))
        latencies.append(ms)
        tokens += banner.output_tokens
        gen_ms += banner.timings.generation_ms
        attempts += banner.retries + (0 if banner.fallback and banner.output_tokens == 0 else 1)
        fallbacks += banner.fallback
    sequential_rate = len(SHOPPERS) / (sum(latencies) / 1000)
    rows.append(
        [
            "1 banner per request",
            len(SHOPPERS),
            pct(latencies, 50),
            pct(latencies, 95),
            tokens / (gen_ms / 1000),
            sequential_rate,
            1.0,
        ]
    )

    # Four variants in one request: the engine batches them (Generator.batch).
    batch_latencies, batch_tokens, batch_gen = [], 0, 0.0
    for shopper in SHOPPERS[:4]:
        ms, banners = await timed(pipeline, BannerRequest(shopper_id=shopper, count=4))
        batch_latencies.append(ms)
        batch_tokens += sum(b.output_tokens for b in banners)
        batch_gen += ms
    batch_rate = 16 / (sum(batch_latencies) / 1000)
    rows.append(
        [
            "4 variants per request (batched)",
            16,
            pct(batch_latencies, 50),
            pct(batch_latencies, 95),
            batch_tokens / (batch_gen / 1000),
            batch_rate,
            batch_rate / sequential_rate,
        ]
    )

    write_results(
        "banner",
        f"Banner latency, in-process transformers engine (SmolLM2-135M, {engine.dtype}, CPU)",  # type: ignore[union-attr]
        ["mode", "banners", "p50 ms", "p95 ms", "output tok/s", "banners/s", "vs 1-by-1"],
        rows,
        [
            f"compile once: first grid_heading request {first_ms:,.0f} ms (builds the grammar), "
            f"second {second_ms:,.0f} ms; grammars built on the second request: {recompiled}",
            f"latency includes retries: {attempts} generations for {len(SHOPPERS)} banners, "
            f"{fallbacks} fallbacks",
            "batched: per-request latency is for all 4 variants; tok/s counts every output token "
            "over wall time",
        ],
    )
    await pipeline.close()


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
