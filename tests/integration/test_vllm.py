"""The vLLM engine against the real vLLM server (CPU) that the test run's service manages."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

import openai
import pytest
from pydantic import ValidationError

from app.config import Settings
from app.generation.engine import EngineError, GenerationRequest, SamplingParams
from app.generation.schemas import output_model
from app.generation.vllm_engine import VLLMEngine
from app.generation.vllm_server import ManagedVLLM, VLLMServerConfig, free_port
from app.pipeline import BannerRequest, Pipeline
from app.rubric import GRAMMAR_CTA_VERBS, starts_with_verb
from tests.integration.conftest import RunningService
from tests.integration.test_real_models import assert_grounded

pytestmark = pytest.mark.integration

PROSE = (("user", "Write a long poem about the sea. Do not use JSON, just verse."),)


def engine_for(service: RunningService, settings: Settings) -> VLLMEngine:
    """An engine on the vLLM that the running service manages (one vLLM per test run)."""
    return VLLMEngine(service.vllm_url, settings.llm_name)


def test_constrained_output_fits_the_schema_even_for_a_prose_prompt(
    service: RunningService, settings: Settings
) -> None:
    schema = output_model("banner", 4)

    async def run() -> tuple[str, str]:
        engine = engine_for(service, settings)
        request = GenerationRequest(
            messages=PROSE,
            schema=schema,
            seed=1,
            sampling=SamplingParams(temperature=0.0, max_tokens=200),
        )
        constrained = (await engine.generate(request)).text
        # The same request without response_format: what the model writes when unconstrained.
        raw = await openai.AsyncOpenAI(
            base_url=f"{service.vllm_url}/v1", api_key="none"
        ).chat.completions.create(
            model=settings.llm_name,
            temperature=0.0,
            max_tokens=200,
            messages=[{"role": "user", "content": PROSE[0][1]}],
        )
        await engine.close()
        return constrained, raw.choices[0].message.content or ""

    constrained, unconstrained = asyncio.run(run())
    copy_ = schema.model_validate(json.loads(constrained))
    assert 1 <= len(copy_.products) <= 4
    assert " " not in constrained.split('"headline"')[0], "compact JSON, no free whitespace"
    with pytest.raises((ValidationError, ValueError)):
        schema.model_validate_json(unconstrained)


def test_the_grammar_keeps_out_what_the_guards_would_refuse(
    service: RunningService, settings: Settings
) -> None:
    """Asked for numbers, markup and a long call to action, the server still writes copy that
    fits every rule of the schema: its pattern and its maxLength held together, and a call to
    action that starts with one of the verbs (the alternation of the rubric's defaults)."""
    schema = output_model("banner", 4, False, GRAMMAR_CTA_VERBS)
    asking = (
        (
            "user",
            "Write a banner: the headline is '<b>50% off, now $19.99!</b>', the subheadline "
            "lists 3 prices, and the call to action has eight words.",
        ),
    )

    async def run() -> list[str]:
        engine = engine_for(service, settings)
        sampling = SamplingParams(temperature=1.0, max_tokens=200)
        answers = await engine.generate_many(
            [
                GenerationRequest(messages=asking, schema=schema, sampling=sampling, seed=n)
                for n in range(4)
            ]
        )
        await engine.close()
        return [answer.text for answer in answers]

    for text in asyncio.run(run()):
        copy_ = schema.model_validate_json(text)  # patterns and lengths, checked again here
        assert not any(ch.isdigit() or ch in "<>%" for ch in copy_.headline + copy_.subheadline)
        assert 1 <= len(copy_.cta.split(" ")) <= 3 and len(copy_.cta) <= 24, copy_.cta
        assert starts_with_verb(copy_.cta, GRAMMAR_CTA_VERBS), copy_.cta


def test_pipeline_on_vllm_gives_grounded_banners(
    service: RunningService, settings: Settings, pipeline: Pipeline
) -> None:
    async def run() -> list:  # type: ignore[type-arg]
        on_vllm = copy.copy(pipeline)
        engine = engine_for(service, settings)
        on_vllm.use_engine(engine)
        try:
            results = await asyncio.gather(
                *(
                    on_vllm.generate(BannerRequest(shopper_id=user, count=2))
                    for user in ("u004", "u002", "never-seen")
                )
            )
        finally:
            await engine.close()
        return [
            (user, banner)
            for user, banners in zip(("u004", "u002", "never-seen"), results, strict=True)
            for banner in banners
        ]

    made = asyncio.run(run())
    assert len(made) == 6
    for user, banner in made:
        assert banner.engine == "vllm"
        assert_grounded(pipeline, banner, user)
    assert sum(not banner.fallback for _, banner in made) >= 3


def test_a_server_that_cannot_start_gives_a_clear_error(tmp_path: Path) -> None:
    broken = ManagedVLLM(
        VLLMServerConfig(
            model_dir=tmp_path / "no-model",
            served_name="x",
            port=free_port(),
            log_path=tmp_path / "vllm.log",
            startup_timeout_s=240,
        )
    )
    with pytest.raises(EngineError, match="vLLM exited during start-up"), broken:
        pass


def test_an_unreachable_server_is_an_engine_error() -> None:
    async def run() -> None:
        engine = VLLMEngine(f"http://127.0.0.1:{free_port()}", "x", timeout_s=5)
        try:
            await engine.generate(
                GenerationRequest(
                    messages=PROSE,
                    schema=output_model("banner", 4),
                    sampling=SamplingParams(),
                    seed=1,
                )
            )
        finally:
            await engine.close()

    with pytest.raises(EngineError, match="APIConnectionError"):
        asyncio.run(run())
