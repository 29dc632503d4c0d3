"""A few seconds of real work on the chosen settings, so `marquee doctor` shows speeds, not only
choices: catalog products embedded per second and output tokens decoded per second."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.retrieval.embedder import Embedder


@dataclass(frozen=True)
class ProbeResult:
    rate: float  # items per second
    unit: str
    items: int
    seconds: float


def _rate(step: Callable[[], int], seconds: float, unit: str) -> ProbeResult:
    """Repeat ``step`` (it returns how many items it did) for about ``seconds``, after one
    warm-up call: first-call allocations are not throughput."""
    step()
    done, start = 0, time.perf_counter()
    while True:
        done += step()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return ProbeResult(done / elapsed, unit, done, elapsed)


def probe_embedder(embedder: Embedder, texts: Sequence[str], seconds: float) -> ProbeResult:
    """Encode batches of ``texts`` for about ``seconds``."""
    batch = list(texts[:32]) or ["a product"]

    def encode() -> int:
        embedder.encode(batch)
        return len(batch)

    return _rate(encode, seconds, "products/s")


def probe_decode(folder: Path, dtype: str, device: str, seconds: float) -> ProbeResult:
    """Greedy decoding of a short prompt with the in-process model, for about ``seconds``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model: Any = AutoModelForCausalLM.from_pretrained(
        folder, dtype=getattr(torch, dtype), device_map=device
    )
    prompt = tokenizer("Write a short headline for a camping tent sale:", return_tensors="pt")
    prompt = prompt.to(device)
    steps = 16

    def decode() -> int:
        with torch.inference_mode():
            output = model.generate(
                **prompt,
                max_new_tokens=steps,
                min_new_tokens=steps,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )
        return int(output.shape[1] - prompt["input_ids"].shape[1])

    return _rate(decode, seconds, "tokens/s")
