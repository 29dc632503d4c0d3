"""Best-of-n against one sample a banner: what a served banner costs, and how often the
shopper gets the fallback instead.

The same shoppers and template with n = 1, 2, 4 and 8 samples a banner (or the ``--samples``
given), side by side in one run
(each shopper's banners are made one n after the other, the order rotating, so a drift in the
machine's speed touches every n alike). Per n: fallbacks, retries, texts the model wrote, their
output tokens, the engine's seconds and how many served banners the rubric finds publishable
(no finding), per served banner, and that cost as a ratio of the smallest n's.

    python -m bench.best_of [--engine transformers|vllm] [--shoppers 16] [--samples 4 8]
                            [--label avx2]

With ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MARQUEE_LLM_DTYPE=float32`` it measures
what a CPU without native bf16 pays (``--label avx2`` keeps it in its own results file).

On the in-process engine the n samples are one batch (the prompt's prefill paid n times, one
decode loop); on vLLM n requests of one sample at once (the prefix cache shares the prompt).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict
from typing import Any

import numpy as np

from app.config import get_settings
from app.domain import Banner
from app.pipeline import BannerRequest
from app.runtime import build_pipeline, make_engine
from bench.common import write_results

SAMPLES = (1, 2, 4, 8)


async def run(
    engine_name: str,
    shopper_count: int,
    template: str,
    label: str = "",
    samples: tuple[int, ...] = SAMPLES,
) -> None:
    settings = get_settings()
    pipeline = build_pipeline(
        settings, engine=make_engine(settings, engine_name), with_changes=False
    )
    shoppers = [s.id for s in pipeline.shoppers.all() if s.history][:shopper_count]
    made: dict[int, list[Banner]] = defaultdict(list)
    wall: dict[int, float] = defaultdict(float)
    try:
        # One banner first: the grammar is compiled and the engine warm before anything counts.
        await pipeline.generate(BannerRequest(shopper_id=shoppers[0], template=template))
        for position, shopper in enumerate(shoppers):
            order = samples[position % len(samples) :] + samples[: position % len(samples)]
            for n in order:
                pipeline.settings = settings.model_copy(update={"best_of": n})
                start = time.perf_counter()
                (banner,) = await pipeline.generate(
                    BannerRequest(shopper_id=shopper, template=template)
                )
                wall[n] += time.perf_counter() - start
                made[n].append(banner)
            print(f"{position + 1}/{len(shoppers)} shoppers", flush=True)
    finally:
        await pipeline.close()

    def per_banner(n: int) -> dict[str, Any]:
        banners = made[n]
        return {
            "fallback": float(np.mean([b.fallback for b in banners])),
            "publishable": float(np.mean([not b.fallback and not b.findings for b in banners])),
            "calls": float(np.mean([b.retries + 1 for b in banners])),
            "samples": float(np.mean([b.samples for b in banners])),
            "tokens": float(np.mean([b.output_tokens for b in banners])),
            "generation_s": float(np.mean([b.timings.generation_ms for b in banners])) / 1000,
            "wall_s": wall[n] / len(banners),
        }

    base = per_banner(samples[0])
    rows: list[list[object]] = []
    for n in samples:
        m = per_banner(n)
        rows.append(
            [
                n,
                len(made[n]),
                f"{m['fallback']:.1%}",
                f"{m['publishable']:.1%}",
                m["calls"],
                m["samples"],
                m["tokens"],
                m["generation_s"],
                m["wall_s"],
                f"{m['generation_s'] / base['generation_s']:.2f}x",
                f"{m['tokens'] / base['tokens']:.2f}x",
            ]
        )
    write_results(
        f"best_of-{engine_name}" + (f"-{label}" if label else ""),
        f"Best-of-n: cost and fallbacks per served banner ({engine_name} engine, {template})",
        [
            "n",
            "banners",
            "fallback",
            "publishable",
            "engine calls / banner",
            "texts written / banner",
            "output tokens / banner",
            "engine s / banner",
            "wall s / banner",
            f"engine time vs n={samples[0]}",
            f"tokens vs n={samples[0]}",
        ],
        rows,
        [
            f"{len(shoppers)} demo shoppers with a history, one banner each per n, the same "
            "shoppers for every n; another call happens only when all n samples were refused "
            "(or all were off topic); publishable: served model copy with no rubric finding.",
            "engine s: the engine's own time for the banner's calls (a batch of n counts once); "
            "wall s: the whole banner, retrieval and guards included.",
            f"model {settings.llm_name}, max_retries {settings.max_retries}.",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--shoppers", type=int, default=16)
    parser.add_argument("--template", default="hero_banner")
    parser.add_argument("--label", default="", help="a suffix for the results file (avx2)")
    parser.add_argument("--samples", type=int, nargs="+", default=list(SAMPLES))
    args = parser.parse_args()
    samples = tuple(sorted(set(args.samples)))
    asyncio.run(run(args.engine, args.shoppers, args.template, args.label, samples))


if __name__ == "__main__":
    main()
