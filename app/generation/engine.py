"""The engine interface: chat messages + an output schema in, constrained JSON text out.

The pipeline only knows this interface; the in-process transformers engine and the vLLM engine
are interchangeable behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from app.generation.schemas import BannerCopy

# The most samples one banner may ask for: each is a whole generation's decode.
MAX_BEST_OF = 8


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
    # Samples of this one prompt (best-of-n): the vLLM engine sends them as requests of one
    # sample each (its prefix cache shares the prompt), the in-process engine batches them.
    n: int = 1


@dataclass(frozen=True)
class GenerationResult:
    texts: tuple[str, ...]  # ``n`` samples, in the engine's order
    output_tokens: int  # all samples together
    elapsed_ms: float
    prompt_tokens: int = 0  # the prompt as the engine tokenized it, once (0: not reported)

    @property
    def text(self) -> str:
        """The first sample: the whole answer of a request with ``n`` = 1."""
        return self.texts[0]


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
