"""In-process generation with transformers + Outlines: no server, one model in this process."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

# The first constrained call would otherwise torch.compile Outlines' masking kernel (+2-8 s)
# for no steady-state gain on CPU.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import outlines
import torch
from outlines.types import JsonSchema
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.generation.engine import (
    EngineError,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
)
from app.generation.schemas import BannerCopy

# Free JSON whitespace lets a small model emit newlines forever between fields: compact JSON,
# as the vLLM server writes it (disable_any_whitespace).
COMPACT_JSON = {"x-guidance": {"whitespace_flexible": False}}


class TransformersEngine:
    name = "transformers"

    def __init__(
        self, folder: Path, model_name: str, dtype: str = "float32", device: str = "cpu"
    ) -> None:
        """``dtype`` and ``device`` come from the hardware profile (app/hardware.py)."""
        if not (folder / "config.json").exists():
            raise EngineError(f"no prepared model in {folder}: run `marquee model prepare`")
        self.model = model_name
        self.dtype = dtype
        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        self._hf_model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=getattr(torch, dtype), device_map=device
        )
        self._hf_model.eval()  # type: ignore[no-untyped-call]
        self._outlines_model = outlines.from_transformers(
            self._hf_model,
            self._tokenizer,  # type: ignore[arg-type]
        )
        self._generators: dict[type[BannerCopy], Any] = {}
        # One model, one forward pass at a time; callers queue here instead of racing.
        self._lock = threading.Lock()
        self.compiled = 0  # how many grammars were built (the compile-once check)

    def _generator(self, schema: type[BannerCopy]) -> Any:
        generator = self._generators.get(schema)
        if generator is None:
            # llguidance, as the vLLM server: it honours a string's pattern and its maxLength
            # together (outlines_core keeps only the length; see app/generation/schemas.py).
            output_type = JsonSchema(schema.model_json_schema() | COMPACT_JSON)
            generator = outlines.Generator(self._outlines_model, output_type, backend="llguidance")
            self._generators[schema] = generator
            self.compiled += 1
        return generator

    def _prompt(self, messages: tuple[tuple[str, str], ...]) -> str:
        chat = [{"role": role, "content": content} for role, content in messages]
        prompt = self._tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True
        )
        return str(prompt)

    def _count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    @staticmethod
    def _kwargs(sampling: SamplingParams) -> dict[str, Any]:
        if sampling.temperature == 0:
            return {"max_new_tokens": sampling.max_tokens, "do_sample": False}
        return {
            "max_new_tokens": sampling.max_tokens,
            "do_sample": True,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }

    def _run(self, group: list[GenerationRequest]) -> list[GenerationResult]:
        first = group[0]
        prompts = [self._prompt(request.messages) for request in group]
        # Each prompt once per sample, side by side in one batch: no prefix sharing here (the
        # prefill is paid n times), but one decode loop for all of them.
        batch = [
            prompt for prompt, request in zip(prompts, group, strict=True) for _ in range(request.n)
        ]
        with self._lock:
            generator = self._generator(first.schema)
            torch.manual_seed(first.seed)
            start = time.perf_counter()
            try:
                if len(batch) == 1:
                    texts = [generator(batch[0], **self._kwargs(first.sampling))]
                else:
                    texts = generator.batch(batch, **self._kwargs(first.sampling))
            except Exception as error:  # the model library failing is an engine fault
                raise EngineError(f"generation failed: {error}") from error
            elapsed = (time.perf_counter() - start) * 1000.0
        results = []
        samples = iter(str(text) for text in texts)
        for prompt, request in zip(prompts, group, strict=True):
            mine = tuple(next(samples) for _ in range(request.n))
            results.append(
                GenerationResult(
                    mine,
                    sum(self._count_tokens(text) for text in mine),
                    elapsed,
                    # the chat template's special tokens too
                    prompt_tokens=self._count_tokens(prompt),
                )
            )
        return results

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return (await asyncio.to_thread(self._run, [request]))[0]

    async def generate_many(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Requests sharing a schema and sampling run as one batch (~3x one-by-one)."""
        groups: dict[tuple[type[BannerCopy], SamplingParams], list[int]] = defaultdict(list)
        for position, request in enumerate(requests):
            groups[(request.schema, request.sampling)].append(position)
        results: list[GenerationResult | None] = [None] * len(requests)
        for positions in groups.values():
            outputs = await asyncio.to_thread(self._run, [requests[p] for p in positions])
            for position, output in zip(positions, outputs, strict=True):
                results[position] = output
        return [result for result in results if result is not None]

    async def close(self) -> None:
        self._generators.clear()
