"""`auto` picks the dtype this machine embeds fastest in (within 1.5x of the faster one)."""

from __future__ import annotations

import time

import pytest

from app.config import Settings
from app.retrieval.embedder import SentenceEmbedder, product_text
from app.runtime import hardware_choices, load_data

pytestmark = pytest.mark.integration


def products_per_second(embedder: SentenceEmbedder, texts: list[str]) -> float:
    embedder.encode(texts[:4])  # warm-up
    start = time.perf_counter()
    embedder.encode(texts)
    return len(texts) / (time.perf_counter() - start)


def test_auto_embeds_within_1_5x_of_the_faster_dtype(settings: Settings) -> None:
    choice = hardware_choices(settings.model_copy(update={"embedding_dtype": "auto"}))["embedder"]
    if choice.device != "cpu":
        pytest.skip("measured on the CPU path")
    catalog, _ = load_data(settings, with_changes=False)
    # 32 real product texts: enough for a stable rate, short enough for emulated bf16 (~6/s).
    texts = [product_text(p) for p in catalog.products[:32]]
    rates = {}
    for dtype in ("float32", "bfloat16"):
        try:
            embedder = SentenceEmbedder(settings.embedding_model, 32, dtype)
            rates[dtype] = products_per_second(embedder, texts)
        except RuntimeError as refused:
            # A bf16 CPU forced onto torch's AVX2 kernels (ATEN_CPU_CAPABILITY=avx2) can fail
            # outright ("pack_vnni2 is only supported when avx512 is supported"): unusable.
            rates[dtype] = 0.0
            print(f"{dtype} does not run here: {refused}")
    faster = max(rates, key=lambda dtype: rates[dtype])
    assert rates[choice.dtype] > 0, (choice, rates)  # auto never picks what cannot run
    assert rates[choice.dtype] * 1.5 >= rates[faster], (choice, rates)
