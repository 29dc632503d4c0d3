"""Prometheus metrics: requests, per-stage latency, tokens, retries, fallbacks, cache hits."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from app.domain import Banner

REGISTRY = CollectorRegistry()
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter(
    "marquee_requests_total", "HTTP requests", ["route", "status"], registry=REGISTRY
)
REQUEST_SECONDS = Histogram(
    "marquee_request_seconds", "HTTP request latency", ["route"], buckets=BUCKETS, registry=REGISTRY
)
STAGE_SECONDS = Histogram(
    "marquee_stage_seconds",
    "Pipeline stage latency per banner",
    ["stage"],
    buckets=BUCKETS,
    registry=REGISTRY,
)
OUTPUT_TOKENS = Counter("marquee_output_tokens_total", "Tokens generated", registry=REGISTRY)
# Per template and API key (by name: keys are few, so the label stays bounded): who spends what.
PROMPT_TOKENS = Counter(
    "marquee_prompt_tokens_total",
    "Prompt tokens sent to the engine, every attempt counted",
    ["template", "api_key"],
    registry=REGISTRY,
)
COMPLETION_TOKENS = Counter(
    "marquee_completion_tokens_total",
    "Tokens the engine generated, every attempt counted",
    ["template", "api_key"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "marquee_retries_total", "Generations retried after a guard refused them", registry=REGISTRY
)
FALLBACKS = Counter(
    "marquee_fallbacks_total", "Banners that fell back to catalog copy", registry=REGISTRY
)
BANNERS = Counter("marquee_banners_total", "Banners served", ["template"], registry=REGISTRY)
CACHE_HITS = Counter(
    "marquee_cache_hits_total", "Requests answered from stored banners", registry=REGISTRY
)
ANSWERS = Counter(
    "marquee_banner_answers_total",
    "POST /v1/banners answers by source: live, cache, pregenerated, fallback (max_wait_ms)",
    ["source"],
    registry=REGISTRY,
)
COALESCED = Counter(
    "marquee_coalesced_total",
    "Requests answered by an identical request's generation already under way",
    registry=REGISTRY,
)
STORE_ERRORS = Counter(
    "marquee_store_errors_total", "Banners generated but not stored", registry=REGISTRY
)
ENGINE_RESTARTS = Counter(
    "marquee_engine_restarts_total", "Managed vLLM servers started again", registry=REGISTRY
)
SUSPICIOUS_TEXT = Counter(
    "marquee_suspicious_text_total",
    "Product texts written with markup, chat tokens or instructions in them",
    ["field"],
    registry=REGISTRY,
)
REJECTED = Counter(
    "marquee_rejected_total", "Requests refused because too many were in flight", registry=REGISTRY
)


def observe_banners(banners: list[Banner], api_key: str) -> None:
    """Count freshly generated banners (never cached ones: they cost nothing again) for the
    key that asked for them."""
    for banner in banners:
        timings = banner.timings
        for stage, ms in (
            ("retrieval", timings.retrieval_ms),
            ("render", timings.render_ms),
            ("generation", timings.generation_ms),
            ("guards", timings.guards_ms),
            ("total", timings.total_ms),
        ):
            STAGE_SECONDS.labels(stage).observe(ms / 1000)
        OUTPUT_TOKENS.inc(banner.output_tokens)
        PROMPT_TOKENS.labels(banner.template, api_key).inc(banner.prompt_tokens)
        COMPLETION_TOKENS.labels(banner.template, api_key).inc(banner.output_tokens)
        RETRIES.inc(banner.retries)
        FALLBACKS.inc(int(banner.fallback))
        BANNERS.labels(banner.template).inc()


def exposition() -> bytes:
    """The metrics as Prometheus reads them: this process's, or with `serve --workers N`
    (PROMETHEUS_MULTIPROC_DIR set) every worker's, summed from the files they write there."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return generate_latest(REGISTRY)
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=folder)  # type: ignore[no-untyped-call]
    return generate_latest(merged)
