"""Logs, traces and token metrics of a request, through the real app and the real vLLM engine.

The engine talks to a fake OpenAI-compatible server (an httpx transport): what the engine sends
is inspected as the HTTP request it really is.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2  # the openai client's own HTTP library
import openai
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.generation.engine import GenerationRequest, SamplingParams
from app.generation.schemas import output_model
from app.generation.vllm_engine import VLLMEngine
from app.logs import configure_logging, get_logger
from app.pipeline import Pipeline
from app.server.app import create_app
from app.store.repositories import ApiKeyStore
from app.tracing import REQUEST_ID, trace_mode
from tests.fakes import GOOD, make_pipeline, wait_ready

PROMPT_TOKENS = 123  # what the fake server reports per request
COMPLETION_TOKENS = 17


class FakeVLLM:
    """vLLM's chat completions endpoint, answering GOOD copy (or 500 when ``failing``); keeps
    every request it got, and logs through a plain stdlib logger as a library would."""

    def __init__(self) -> None:
        self.requests: list[httpx2.Request] = []
        self.failing = False

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        logging.getLogger("tests.fake_vllm").warning("fake vLLM got %s", request.url.path)
        if self.failing:
            return httpx2.Response(500, json={"error": {"message": "engine dead"}})
        return httpx2.Response(
            200,
            json={
                "id": "cmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": "fake",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": json.dumps(GOOD)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": PROMPT_TOKENS,
                    "completion_tokens": COMPLETION_TOKENS,
                    "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
                },
            },
        )


def vllm_engine(fake: FakeVLLM) -> VLLMEngine:
    engine = VLLMEngine("http://vllm.test", "fake-model")
    engine._client = openai.AsyncOpenAI(
        base_url="http://vllm.test/v1",
        api_key="none",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(fake)),
    )
    return engine


def loader(
    engine: VLLMEngine, catalog: Catalog, shoppers: ShopperStore
) -> Callable[[Settings], Pipeline]:
    return lambda settings: make_pipeline(engine, catalog, shoppers, settings)


Api = tuple[TestClient[Litestar], str, FakeVLLM]


@pytest.fixture
def api(
    tmp_path: Path, tiny_catalog: Catalog, tiny_shoppers: ShopperStore, test_settings: Settings
) -> Iterator[Api]:
    settings = test_settings.model_copy(
        update={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'marquee.db'}"}
    )
    key = asyncio.run(ApiKeyStore.create_in(settings.database, "obs-cms", ["cms"]))
    fake = FakeVLLM()
    app = create_app(settings, loader(vllm_engine(fake), tiny_catalog, tiny_shoppers))
    with TestClient(app) as client:
        wait_ready(client)
        yield client, key, fake


def ask(client: TestClient[Litestar], key: str, request_id: str, **body: Any) -> httpx.Response:
    return client.post(
        "/v1/banners",
        content=json.dumps({"shopper_id": "coffee_fan", **body}),
        headers={"X-API-Key": key, "X-Request-ID": request_id, "Content-Type": "application/json"},
    )


def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """The middleware logs and ends its span after the response went out: wait for it."""
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)


# --- logs -----------------------------------------------------------------------------------


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The service's log stream (as `marquee serve` configures it), into a buffer."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    configure_logging(json_lines=True, stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)


def test_every_log_line_of_a_request_is_json_with_its_request_id(
    api: Api, json_logs: io.StringIO
) -> None:
    client, key, fake = api
    fake.failing = True  # the pipeline then logs a warning of its own, with fields
    mark = len(json_logs.getvalue())
    response = ask(client, key, "obs-log-1")
    assert response.status_code == 200 and response.json()["banners"][0]["fallback"] is True
    eventually(lambda: '"event": "request"' in json_logs.getvalue()[mark:])
    lines = json_logs.getvalue()[mark:].splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {entry["request_id"] for entry in entries} == {"obs-log-1"}, lines
    events = {entry["event"]: entry for entry in entries}
    # Ours (structlog), a library's (stdlib, %-formatted) and the middleware's closing line.
    assert events["engine_failed"]["level"] == "warning"
    assert events["engine_failed"]["template"] == "hero_banner"
    assert "fake vLLM got /v1/chat/completions" in events
    assert events["fake vLLM got /v1/chat/completions"]["logger"] == "tests.fake_vllm"
    request = events["request"]
    assert (request["status"], request["route"]) == (200, "/v1/banners")
    assert request["api_key"] == "obs-cms"
    assert all(entry["api_key"] == "obs-cms" for entry in entries)  # known from the guard on


def test_library_records_warnings_and_odd_fields_are_json_too(
    json_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As under `marquee serve` (uvicorn without a log config of its own); a test that ran
    # uvicorn with its default config earlier in this process cut "uvicorn" off the root.
    monkeypatch.setattr(logging.getLogger("uvicorn"), "propagate", True)
    # Ray, once started in a process, stamps every record through the record factory.
    made_by = logging.getLogRecordFactory()

    def stamped(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = made_by(*args, **kwargs)
        record._ray_timestamp_ns = 1
        return record

    logging.setLogRecordFactory(stamped)
    try:
        logging.getLogger("uvicorn.error").warning(
            "Invalid HTTP request received from %s",
            "peer",
            extra={"color_message": "\x1b[33m%s"},  # uvicorn's coloured copy of the message
        )
    finally:
        logging.setLogRecordFactory(made_by)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(True)  # pytest swaps showwarning per test: route it again
        warnings.warn("a SQLAlchemy-like warning", UserWarning, stacklevel=1)
    # A field named like a LogRecord attribute is renamed, not a KeyError in the caller.
    get_logger("marquee.test").info("odd", name="n", module="m")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("marquee.test").exception("failed")
    entries = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    by_event = {e["event"]: e for e in entries}
    uvicorn_line = by_event["Invalid HTTP request received from peer"]
    assert uvicorn_line["logger"] == "uvicorn.error" and uvicorn_line["level"] == "warning"
    assert "color_message" not in uvicorn_line and "_ray_timestamp_ns" not in uvicorn_line
    assert any("a SQLAlchemy-like warning" in e["event"] for e in entries)
    assert (by_event["odd"]["name_"], by_event["odd"]["module_"]) == ("n", "m")
    assert "RuntimeError: boom" in by_event["failed"]["exception"]
    assert "request_id" not in by_event["odd"]  # outside a request: no request id


# --- traces ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """The SDK's provider with an in-memory exporter. The global provider is set once per
    process, so this stays for the rest of the session (recording costs microseconds)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def test_a_request_is_a_span_tree_with_the_pipeline_stages(
    api: Api, span_exporter: InMemorySpanExporter
) -> None:
    client, key, fake = api
    span_exporter.clear()
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = client.post(
        "/v1/banners",
        content=json.dumps({"shopper_id": "coffee_fan", "count": 2}),
        headers={"X-API-Key": key, "traceparent": parent, "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    banners = response.json()["banners"]

    def server() -> ReadableSpan | None:
        found = [s for s in span_exporter.get_finished_spans() if s.name == "POST /v1/banners"]
        return found[0] if found else None

    eventually(lambda: server() is not None)
    root = server()
    assert root is not None and root.context is not None
    assert format(root.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert root.attributes is not None
    assert root.attributes["marquee.request_id"] == response.headers["X-Request-ID"]
    assert root.attributes["marquee.api_key"] == "obs-cms"
    assert root.attributes["http.response.status_code"] == 200
    spans = [s for s in span_exporter.get_finished_spans() if s.context is not None]
    spans = [s for s in spans if s.context.trace_id == root.context.trace_id]

    def children(span: ReadableSpan) -> dict[str, ReadableSpan]:
        assert span.context is not None
        return {s.name: s for s in spans if s.parent and s.parent.span_id == span.context.span_id}

    stages = children(root)
    assert {"retrieval", "render", "pipeline.complete"} <= set(stages)
    retrieval = dict(stages["retrieval"].attributes or {})
    assert retrieval["marquee.template"] == banners[0]["template"]
    assert retrieval["marquee.template.version"] == banners[0]["template_version"]
    assert retrieval["marquee.template.label"] == "production"
    assert retrieval["marquee.shopper.known"] is True
    assert retrieval["marquee.shopper.cold_start"] is False
    assert isinstance(retrieval["marquee.candidates"], int) and retrieval["marquee.candidates"] > 0
    complete = stages["pipeline.complete"]
    summary = dict(complete.attributes or {})
    assert summary["marquee.output_tokens"] == sum(b["output_tokens"] for b in banners)
    assert summary["marquee.prompt_tokens"] == 2 * PROMPT_TOKENS
    assert (summary["marquee.retries"], summary["marquee.fallbacks"]) == (0, 0)
    inner = children(complete)
    assert {"generation", "guards"} <= set(inner)
    generation = dict(inner["generation"].attributes or {})
    assert generation["marquee.requests"] == 2
    assert generation["marquee.output_tokens"] == 2 * COMPLETION_TOKENS
    # The model server is asked within the generation span: its traceparent names that span.
    assert inner["generation"].context is not None
    sent = {r.headers.get("traceparent", "")[36:52] for r in fake.requests[-2:]}
    assert sent == {format(inner["generation"].context.span_id, "016x")}


# --- the request id at the model server -----------------------------------------------------


def test_the_request_id_reaches_every_generation_of_the_request(api: Api) -> None:
    client, key, fake = api
    before = len(fake.requests)
    response = ask(client, key, "obs-rid-1", count=3)
    assert response.status_code == 200 and response.headers["X-Request-ID"] == "obs-rid-1"
    sent = fake.requests[before:]
    assert len(sent) == 3
    assert [r.headers.get("X-Request-ID") for r in sent] == ["obs-rid-1"] * 3


async def test_concurrent_requests_forward_their_own_ids() -> None:
    fake = FakeVLLM()
    engine = vllm_engine(fake)
    request = GenerationRequest(
        messages=(("user", "hi"),),
        schema=output_model("banner", 3),
        sampling=SamplingParams(),
        seed=1,
    )

    async def serve(request_id: str | None) -> int:
        if request_id is not None:
            REQUEST_ID.set(request_id)  # this task's copy of the context only
        return (await engine.generate_many([request, request]))[0].prompt_tokens

    tokens = await asyncio.gather(serve("a1"), serve("b2"), serve(None))
    assert list(tokens) == [PROMPT_TOKENS] * 3
    ids = sorted(str(r.headers.get("X-Request-ID")) for r in fake.requests)
    assert ids == ["None", "None", "a1", "a1", "b2", "b2"]  # none sent outside a request
    await engine.close()


# --- tokens per template and key ------------------------------------------------------------


def counter(client: TestClient[Litestar], name: str, template: str, key: str) -> float:
    text = client.get("/metrics").text
    found = re.search(
        rf'^{name}\{{api_key="{key}",template="{template}"\}} (\S+)$', text, re.MULTILINE
    )
    return float(found.group(1)) if found else 0.0


def test_token_counters_move_by_the_banners_tokens_under_template_and_key(api: Api) -> None:
    client, key, _ = api
    names = ("marquee_prompt_tokens_total", "marquee_completion_tokens_total")
    before = {n: counter(client, n, "hero_banner", "obs-cms") for n in names}
    response = ask(client, key, "obs-tok-1", count=2, placement="home_hero")
    banners = response.json()["banners"]
    assert {b["template"] for b in banners} == {"hero_banner"}
    prompt = sum(b["prompt_tokens"] for b in banners)
    completion = sum(b["output_tokens"] for b in banners)
    assert (prompt, completion) == (2 * PROMPT_TOKENS, 2 * COMPLETION_TOKENS)
    after = {n: counter(client, n, "hero_banner", "obs-cms") for n in names}
    assert after["marquee_prompt_tokens_total"] - before["marquee_prompt_tokens_total"] == prompt
    assert (
        after["marquee_completion_tokens_total"] - before["marquee_completion_tokens_total"]
        == completion
    )
    # The same request again is answered from the store: it costs no tokens, none are counted.
    assert ask(client, key, "obs-tok-2", count=2, placement="home_hero").json()["cached"]
    assert counter(client, names[0], "hero_banner", "obs-cms") == after[names[0]]


# --- configuration --------------------------------------------------------------------------


def test_traces_are_off_unless_asked_for() -> None:
    assert trace_mode(None, {}) == "off"
    assert trace_mode(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == "otlp"
    assert trace_mode("off", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == "off"
    assert trace_mode("console", {}) == "console"
