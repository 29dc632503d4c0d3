"""The engine interface: chat messages + an output schema in, constrained JSON text out.

The pipeline only knows this interface; the in-process transformers engine and the vLLM engine
are interchangeable behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from app.generation.schemas import BannerCopy


class SamplingParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=160, ge=16, le=1024)


@dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    schema: type[BannerCopy]
    sampling: SamplingParams
    seed: int


@dataclass(frozen=True)
class GenerationResult:
    text: str
    output_tokens: int
    elapsed_ms: float
    prompt_tokens: int = 0  # the prompt as the engine tokenized it (0: not reported)


class EngineError(RuntimeError):
    """The engine could not produce text at all (not loaded, crashed, timed out)."""


class Engine(Protocol):
    name: str  # "transformers", "vllm"
    model: str  # the model's name, recorded on every banner

    async def generate(self, request: GenerationRequest) -> GenerationResult: ...

    async def generate_many(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Several requests at once, so the engine can batch them."""
        ...

    async def close(self) -> None: ...
