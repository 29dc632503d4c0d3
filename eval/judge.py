"""An optional judge: a stronger model, behind any OpenAI-compatible endpoint, scores each
banner on a rubric (brand voice, fluency, relevance to the shopper and the products).

Off by default: the metrics elsewhere in the eval are computed, not opined, and a judge costs
money and time. With ``MARQUEE_EVAL_JUDGE_URL`` and ``MARQUEE_EVAL_JUDGE_MODEL`` set, every
banner of the default arm is scored; the report says which model judged, or that none did. A
judge that fails on one banner leaves that banner out (counted), never the run.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.config import Settings
from eval import metrics

RUBRIC = (
    "You judge homepage banners written for an online store. Score each from 1 (poor) to 5 "
    "(excellent) on: brand_voice (matches the voice: {voice}), fluency (natural, grammatical "
    "English, no broken or repeated phrases), relevance (about this shopper and the products "
    "shown, not generic). Reply with JSON only."
)
PARTS = ("brand_voice", "fluency", "relevance")


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    brand_voice: int = Field(ge=1, le=5)
    fluency: int = Field(ge=1, le=5)
    relevance: int = Field(ge=1, le=5)
    reason: str = Field(max_length=300)


@dataclass(frozen=True)
class Judged:
    """What the judge is shown about one banner."""

    headline: str
    subheadline: str
    cta: str
    shopper: str  # interests and recent items, in words
    products: list[str]  # the titles shown


class Judge:
    def __init__(
        self, url: str, model: str, api_key: str, voice: str, *, client: Any = None
    ) -> None:
        self.model = model
        self.voice = voice
        self._client = client or openai.AsyncOpenAI(
            base_url=url, api_key=api_key or "none", timeout=60.0, max_retries=2
        )

    @classmethod
    def from_settings(cls, settings: Settings, voice: str) -> Judge | None:
        if not (settings.eval_judge_url and settings.eval_judge_model):
            return None
        return cls(
            settings.eval_judge_url,
            settings.eval_judge_model,
            settings.eval_judge_api_key.get_secret_value(),
            voice,
        )

    async def score(self, banner: Judged) -> Verdict:
        """One banner's scores. Raises ValueError when the answer is not the rubric's JSON."""
        question = json.dumps(
            {
                "shopper": banner.shopper,
                "products shown": banner.products,
                "banner": {
                    "headline": banner.headline,
                    "subheadline": banner.subheadline,
                    "call to action": banner.cta,
                },
            },
            ensure_ascii=False,
        )
        response = await self._client.chat.completions.create(
            model=self.model,
            temperature=0.0,
            messages=[
                {"role": "system", "content": RUBRIC.format(voice=self.voice)},
                {"role": "user", "content": question},
            ],
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "verdict",
                    "schema": Verdict.model_json_schema(),
                    "strict": True,
                },
            },
        )
        text = response.choices[0].message.content or ""
        try:
            return Verdict.model_validate_json(text)
        except ValidationError as error:
            raise ValueError(f"the judge's answer is not the rubric: {text[:200]!r}") from error

    async def score_all(self, banners: list[Judged], concurrency: int = 4) -> dict[str, Any]:
        """Means with bootstrap intervals per part, over the banners the judge answered for."""
        gate = asyncio.Semaphore(concurrency)

        async def one(banner: Judged) -> Verdict | None:
            async with gate:
                try:
                    return await self.score(banner)
                except (openai.APIError, ValueError):
                    return None

        verdicts = await asyncio.gather(*(one(b) for b in banners))
        answered = [v for v in verdicts if v is not None]
        summary: dict[str, Any] = {
            "run": True,
            "model": self.model,
            "judged": len(answered),
            "failed": len(verdicts) - len(answered),
        }
        for part in PARTS:
            values = [float(getattr(v, part)) for v in answered]
            summary[part] = {
                "mean": sum(values) / len(values) if values else float("nan"),
                "ci": list(metrics.bootstrap_ci(values)),
            }
        return summary

    async def close(self) -> None:
        await self._client.close()


NOT_RUN = {
    "run": False,
    "why": "no judge configured (MARQUEE_EVAL_JUDGE_URL and MARQUEE_EVAL_JUDGE_MODEL)",
}
