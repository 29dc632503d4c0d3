"""Test doubles, in one place: an embedder with known geometry and a scripted engine.

Unit tests use them around the logic they test; the real models run in tests/integration.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from app.catalog.store import Catalog, ShopperStore
from app.config import PROJECT_ROOT, Settings
from app.generation.engine import Engine, GenerationRequest, GenerationResult
from app.pipeline import Pipeline
from app.prompting.templates import TemplateRegistry
from app.retrieval.embedder import product_text
from app.retrieval.index import ExactIndex

VOCABULARY = (
    "coffee",
    "grinder",
    "kettle",
    "beans",
    "tea",
    "running",
    "shoe",
    "trail",
    "tent",
    "camping",
    "headlamp",
    "yoga",
)


class WordEmbedder:
    """Each vocabulary word is one axis: texts sharing words are neighbours, by construction."""

    name = "test-words"
    dim = len(VOCABULARY)
    words = r"[a-z]+"

    def axis(self, word: str) -> int | None:
        return VOCABULARY.index(word) if word in VOCABULARY else None

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        rows = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(self.words, text.lower()):
                if (axis := self.axis(word)) is not None:
                    rows[i, axis] += 1.0
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        unit: np.ndarray = rows / np.where(norms == 0, 1.0, norms)
        return unit

    def encode_query(self, text: str) -> np.ndarray:
        vector: np.ndarray = self.encode([text])[0]
        return vector


class HashedWordEmbedder(WordEmbedder):
    """Every word hashed to one of 64 axes: products sharing a word (their category's) are
    neighbours, for a catalog larger than the vocabulary."""

    name = "test-hashed-words"
    dim = 64
    words = r"[a-z0-9]+"

    def axis(self, word: str) -> int | None:
        return zlib.crc32(word.encode()) % self.dim


GOOD = {
    "headline": "Brew better mornings",
    "subheadline": "A grinder and a kettle make better coffee.",
    "cta": "Shop coffee",
    "layout": "hero",
    "tone": "warm",
    "products": [1, 2],
}
INVENTED = dict(GOOD, headline="Clearance on all coffee")  # an offer no product states


class ScriptedEngine:
    name = "scripted"
    model = "scripted-model"

    def __init__(self, answers: Sequence[object]) -> None:
        self.answers = list(answers)
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return (await self.generate_many([request]))[0]

    async def generate_many(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results = []
        for request in requests:
            self.requests.append(request)
            texts = []
            for _ in range(request.n):  # one scripted answer per sample
                answer = self.answers.pop(0) if self.answers else GOOD
                if isinstance(answer, Exception):
                    raise answer
                texts.append(answer if isinstance(answer, str) else json.dumps(answer))
            results.append(
                GenerationResult(
                    tuple(texts), output_tokens=sum(len(t) // 4 for t in texts), elapsed_ms=1.0
                )
            )
        return results

    async def close(self) -> None:
        pass


def make_pipeline(
    engine: Engine, catalog: Catalog, shoppers: ShopperStore, settings: Settings
) -> Pipeline:
    """The real pipeline over the tiny catalog, the word embedder and ``engine``."""
    embedder = WordEmbedder()
    index = ExactIndex(embedder.encode([product_text(p) for p in catalog.products]))
    return Pipeline.assemble(
        settings,
        catalog=catalog,
        shoppers=shoppers,
        embedder=embedder,
        index=index,
        engine=engine,
        templates=TemplateRegistry.from_folder(PROJECT_ROOT / "prompts"),
    )


class SlowEngine(ScriptedEngine):
    """Takes a while to answer, as a real model does: requests overlap."""

    async def generate_many(self, requests: list[Any]) -> list[Any]:
        await asyncio.sleep(0.3)
        return await super().generate_many(requests)


def wait_ready(client: Any) -> None:
    """Until the app's background load is done (/readyz 200); fails with its answer if not."""
    for _ in range(400):
        if client.get("/readyz").status_code == 200:
            return
        asyncio.run(asyncio.sleep(0.025))
    raise AssertionError(client.get("/readyz").text)


def file_loader(engine: Engine) -> Callable[[Settings], Pipeline]:
    """The app's pipeline loader over the settings' data files (with the API's writes), as the
    service loads it, around ``engine``."""

    def load(settings: Settings) -> Pipeline:
        from app.runtime import load_data

        catalog, shoppers = load_data(settings)
        return make_pipeline(engine, catalog, shoppers, settings)

    return load
