"""The eval's optional judge, against a fake OpenAI-compatible endpoint (httpx's transport):
what it is asked, how its answers are read, and what the report says with and without it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest

from app.config import Settings
from eval.judge import NOT_RUN, Judge, Judged

BANNER = Judged(
    headline="Brew better mornings",
    subheadline="A grinder and a kettle for your coffee.",
    cta="Shop coffee",
    shopper="coffee; Burr Grinder",
    products=["Burr Grinder", "Pour-Over Kettle"],
)


def fake_judge(answers: list[str]) -> tuple[Judge, list[dict[str, Any]]]:
    """A judge whose endpoint answers ``answers`` in turn and records what it was sent."""
    sent: list[dict[str, Any]] = []

    def reply(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        content = answers[len(sent) - 1]
        return httpx.Response(
            200,
            json={
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "judge-large",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
            },
        )

    client = openai.AsyncOpenAI(
        base_url="http://judge.test/v1",
        api_key="k",
        # openai types its client as its own httpx build; an httpx client is what it runs on
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(reply)),  # type: ignore[arg-type]
        max_retries=0,
    )
    return Judge("http://judge.test/v1", "judge-large", "k", "friendly, brief", client=client), sent


def verdict(voice: int, fluency: int, relevance: int) -> str:
    return json.dumps(
        {"brand_voice": voice, "fluency": fluency, "relevance": relevance, "reason": "ok"}
    )


def test_the_judge_is_asked_the_rubric_with_the_brand_voice_and_the_banner() -> None:
    judge, sent = fake_judge([verdict(4, 5, 3)])
    scores = asyncio.run(judge.score(BANNER))
    assert (scores.brand_voice, scores.fluency, scores.relevance) == (4, 5, 3)
    (request,) = sent
    assert request["model"] == "judge-large" and request["temperature"] == 0.0
    system, user = request["messages"]
    assert "friendly, brief" in system["content"] and "1 (poor) to 5" in system["content"]
    shown = json.loads(user["content"])
    assert shown["banner"]["headline"] == BANNER.headline
    assert shown["products shown"] == BANNER.products
    assert request["response_format"]["json_schema"]["strict"] is True


def test_answers_that_are_not_the_rubric_are_left_out_and_counted() -> None:
    judge, _ = fake_judge([verdict(4, 4, 4), "I liked it", verdict(2, 4, 2), verdict(9, 9, 9)])
    summary = asyncio.run(judge.score_all([BANNER] * 4, concurrency=1))
    assert summary["run"] is True and summary["model"] == "judge-large"
    assert (summary["judged"], summary["failed"]) == (2, 2)  # prose, and scores out of range
    assert summary["brand_voice"]["mean"] == pytest.approx(3.0)
    assert summary["fluency"]["mean"] == pytest.approx(4.0)
    low, high = summary["relevance"]["ci"]
    assert 2.0 <= low <= high <= 4.0


def test_without_an_endpoint_there_is_no_judge_and_the_report_says_so(
    test_settings: Settings,
) -> None:
    from eval.report import html_report
    from eval.runner import Outcome

    assert Judge.from_settings(test_settings, "voice") is None
    half = test_settings.model_copy(update={"eval_judge_url": "http://judge.test/v1"})
    assert Judge.from_settings(half, "voice") is None  # a model is needed too
    both = half.model_copy(update={"eval_judge_model": "judge-large"})
    assert Judge.from_settings(both, "voice") is not None

    copy = {
        "banners": 1,
        "judge": dict(NOT_RUN),
        **{k: 0.0 for k in ("schema_valid_rate", "invented_claims_total", "tokens_per_s")},
        **{k: 0.0 for k in ("latency_ms_p50", "latency_ms_p95", "distinct_1", "distinct_2")},
        "self_bleu": 0.0,
        "latencies_ms": [1.0],
        **{
            k: {"mean": 1.0, "ci": [1.0, 1.0]}
            for k in (
                "schema_valid",
                "grounded",
                "length_ok",
                "fallback",
                "degenerate",
                "retries",
                "samples",
                "output_tokens",
                "generation_ms",
                "banned_hits",
                "personalization_lift",
            )
        },
    }
    summary = {
        "suite": "smoke",
        "engine": "x",
        "retrieval": {},
        "search": {},
        "datasets": {},
        "copy": {"default": copy},
    }
    report = html_report(Outcome(summary, [], []))
    assert "Judge: not run (no judge configured" in report
    copy["judge"] = {
        "run": True,
        "model": "judge-large",
        "judged": 1,
        "failed": 0,
        **{p: {"mean": 4.0, "ci": [4.0, 4.0]} for p in ("brand_voice", "fluency", "relevance")},
    }
    report = html_report(Outcome(summary, [], []))
    assert "Judge judge-large (1 banners judged, 0 unanswered)" in report
    assert "brand_voice 4" in report
