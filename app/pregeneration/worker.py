"""Making the banners of a job's subjects: retrieval, render and guards here, generation in the
engine (vLLM replicas). ``SubjectMaker`` is plain code; ``Worker`` runs it as a Ray actor.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from app.catalog.store import shopper_version
from app.config import Settings
from app.domain import Subject
from app.generation.engine import Engine
from app.logs import get_logger
from app.pipeline import BannerRequest, Pipeline, engine_failed
from app.pregeneration.freshness import inputs_of
from app.pregeneration.plan import shopper_for
from app.store.pregenerated import Generated

log = get_logger(__name__)

ENGINE_DOWN = "the model did not answer"


@dataclass(frozen=True)
class Failed:
    """A subject nothing could be made for (a defect, not the model: the pipeline answers a
    model's failure with fallback copy)."""

    subject: Subject
    error: str


@dataclass(frozen=True)
class Nothing:
    """A subject with nothing to show in the placement (nothing back in stock for them): no
    banner, and any stored before is removed, rather than copy about no products."""

    subject: Subject
    reason: str


Outcome = Generated | Failed | Nothing


def model_failed(generated: Generated) -> bool:
    """Whether the engine never answered: the banner is fallback copy, stored but stale."""
    return generated.stale_reason == ENGINE_DOWN


class SubjectMaker:
    """Makes one placement's banner for subjects, concurrently: the engine batches them."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def make(
        self, placement: str, subjects: list[Subject], variation: str = ""
    ) -> list[Outcome]:
        """``variation``: the job's id, mixed into the seeds (see BannerRequest)."""
        return list(await asyncio.gather(*(self._one(placement, s, variation) for s in subjects)))

    async def _one(self, placement: str, subject: Subject, variation: str) -> Outcome:
        pipeline = self.pipeline
        try:
            shopper = shopper_for(subject, pipeline.shoppers)
            request = BannerRequest(
                shopper_id=shopper.id, shopper=shopper, placement=placement, variation=variation
            )
            prepared = pipeline.prepare(request)
            if prepared.empty:
                return Nothing(subject, f"{len(prepared.selection.candidates)} product(s)")
            banner = (await pipeline.complete(prepared))[0]
        except Exception as error:  # one subject's defect never stops the others
            log.exception("subject_failed", subject=subject.shopper_id, placement=placement)
            return Failed(subject, f"{type(error).__name__}: {error}"[:300])
        return Generated(
            subject=subject,
            banner=banner,
            inputs=inputs_of(banner, shopper_version(shopper), pipeline.catalog),
            stale_reason=ENGINE_DOWN if engine_failed(banner) else None,
        )


def engine_urls(engine: Engine | None) -> list[str]:
    """The vLLM server(s) behind ``engine``, for workers to send generation to; empty for an
    in-process engine (each worker then loads its own)."""
    urls = getattr(engine, "base_urls", None)
    return list(urls) if urls else []


def worker_settings(settings: Settings, engine_urls: list[str]) -> Settings:
    """A worker's settings: the job's engine is the vLLM server(s) at ``engine_urls`` (the
    managed server of the process that started the job, or the configured replicas); none:
    the worker loads the configured engine itself.

    A worker's generations have no deadline of their own: it holds a whole window of subjects
    at once, more than the engine lets through when the server slows, so the rest queue for
    a while by design. A deadline over that queue would fail them for waiting; each request
    sent still has the engine's timeout."""
    update: dict[str, object] = {"generation_timeout_s": 0.0}
    if engine_urls:
        update |= {"engine": "vllm", "vllm_mode": "external", "vllm_urls": list(engine_urls)}
    return settings.model_copy(update=update)


class Worker:
    """A Ray actor (made in ``JobRunner._on_ray``) holding one pipeline. Its methods are
    coroutines, so Ray runs several ``make`` calls at once on the actor's event loop. Its
    process ends with the job (``ray.kill``), and the pipeline with it."""

    def __init__(self, settings: Settings, engine_urls: list[str]) -> None:
        self.settings = worker_settings(settings, engine_urls)
        self.maker: SubjectMaker | None = None

    async def ready(self) -> int:
        """Load the pipeline (off the event loop: loading runs its own), then report the
        process id."""
        import os

        from app.logs import configure_logging
        from app.runtime import build_pipeline, share_cores_with_model_server

        if self.maker is None:
            # Our INFO events (the engine lowering its in-flight limit) in Ray's worker log,
            # and on the job's stderr with ray_log_to_driver: Ray leaves the root logger at
            # WARNING. Not httpx's line per generation.
            configure_logging(json_lines=False)
            logging.getLogger("httpx").setLevel(logging.WARNING)
            share_cores_with_model_server(self.settings.torch_threads_beside_vllm)
            pipeline = await asyncio.to_thread(build_pipeline, self.settings)
            self.maker = SubjectMaker(pipeline)
        return os.getpid()

    async def make(
        self, placement: str, subjects: list[Subject], variation: str = ""
    ) -> list[Outcome]:
        if self.maker is None:
            await self.ready()
        assert self.maker is not None
        return await self.maker.make(placement, subjects, variation)
