"""One engine over several vLLM servers: each request goes to the least-loaded live replica.

A replica that cannot be reached (or fails on its side) is marked down for a cool-down that
doubles on each new outage, and the request moves on to the next replica; a request tries each
replica at most once. When every replica is down they are still tried, soonest-back first, so a
restarted server is picked up without waiting for a timer: refusing outright would turn a short
outage of all replicas into a full cool-down of failures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.generation.engine import EngineError, GenerationRequest, GenerationResult
from app.generation.vllm_engine import ReplicaUnavailable, VLLMEngine


@dataclass(frozen=True)
class ReplicaState:
    """One replica, as observability reports it."""

    url: str
    in_flight: int  # requests from this process waiting on it now
    healthy: bool  # False while it sits out a cool-down
    failures: int  # times it was found unavailable, in all
    served: int  # answers it gave


class _Replica:
    """A replica's mutable bookkeeping; only touched from the event loop, so no lock."""

    def __init__(self, index: int, engine: VLLMEngine) -> None:
        self.index = index
        self.engine = engine
        self.in_flight = 0
        self.down_until = 0.0  # clock time its cool-down ends (0: never down)
        self.outages = 0  # consecutive outages: the cool-down's exponent
        self.failures = 0
        self.served = 0

    def healthy(self, now: float) -> bool:
        return self.down_until <= now


class ReplicaPool:
    """The Engine protocol over several ``VLLMEngine``s serving the same model."""

    name = "vllm"

    def __init__(
        self,
        engines: Sequence[VLLMEngine],
        *,
        cooldown_s: float = 10.0,
        max_cooldown_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not engines:
            raise ValueError("a replica pool needs at least one engine")
        self._replicas = [_Replica(i, engine) for i, engine in enumerate(engines)]
        self.model = engines[0].model
        self.cooldown_s = cooldown_s
        # 10 s doubles to 20, 40, then stays at 60: a replica down for long is still probed
        # about once a minute, by one request.
        self.max_cooldown_s = max_cooldown_s if max_cooldown_s is not None else 6 * cooldown_s
        self._clock = clock  # injectable so tests move time instead of sleeping
        self._next = 0  # round-robin cursor: where ties in load start looking

    @property
    def base_urls(self) -> list[str]:
        return [replica.engine.base_url for replica in self._replicas]

    def snapshot(self) -> list[ReplicaState]:
        now = self._clock()
        return [
            ReplicaState(r.engine.base_url, r.in_flight, r.healthy(now), r.failures, r.served)
            for r in self._replicas
        ]

    def _pick(self, tried: set[int]) -> _Replica | None:
        """The untried live replica with the fewest requests in flight (ties: the next in
        round-robin order, so sequential requests alternate); with none live, the untried one
        whose cool-down ends first."""
        untried = [r for r in self._replicas if r.index not in tried]
        if not untried:
            return None
        now = self._clock()
        live = [r for r in untried if r.healthy(now)]
        if not live:
            return min(untried, key=lambda r: r.down_until)
        count = len(self._replicas)
        choice = min(live, key=lambda r: (r.in_flight, (r.index - self._next) % count))
        self._next = (choice.index + 1) % count
        return choice

    def _mark_down(self, replica: _Replica) -> None:
        replica.failures += 1
        now = self._clock()
        if not replica.healthy(now):
            # Already down: requests that were in flight when it went are the same outage and
            # must not stretch its cool-down.
            return
        delay = min(self.cooldown_s * 2**replica.outages, self.max_cooldown_s)
        replica.outages += 1
        replica.down_until = now + delay

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        tried: set[int] = set()
        errors: list[ReplicaUnavailable] = []
        while (replica := self._pick(tried)) is not None:
            tried.add(replica.index)
            replica.in_flight += 1
            try:
                result = await replica.engine.generate(request)
            except ReplicaUnavailable as error:
                # Down (or failing on its side): another replica may answer. Any other
                # EngineError (a 4xx) would be refused everywhere, so it propagates as it is.
                self._mark_down(replica)
                errors.append(error)
                continue
            finally:
                replica.in_flight -= 1
            replica.served += 1
            replica.outages = 0
            replica.down_until = 0.0
            return result
        raise EngineError(
            f"no vLLM replica answered ({len(errors)} tried): "
            + "; ".join(str(error)[:160] for error in errors)
        ) from errors[-1]  # never empty: every engine was tried

    async def generate_many(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """All at once: each request picks its replica as it starts, so they spread out."""
        return list(await asyncio.gather(*(self.generate(r) for r in requests)))

    async def close(self) -> None:
        # Every engine is closed even if one fails; the first failure is raised after.
        outcomes = await asyncio.gather(
            *(r.engine.close() for r in self._replicas), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
