"""How many requests one model server is sent at once: a limit that follows its latency.

A vLLM server batches whatever it holds, so each request's latency grows with the number in
flight. At a fixed number, a server that slows down (a busier host, longer answers) pushes
every request past the client's timeout together, and each timed-out request is work thrown
away. (Measured: at 64 in flight, a vLLM that fell to a third of its rate failed 77 of a job's
first 96 subjects on the 60 s timeout.) Past saturation, fewer in flight loses no throughput;
the requests wait here instead, in order, at no cost to the server.

The limit moves by AIMD, as TCP's window does:
- it grows by one for each full window of answers back within the latency target;
- it shrinks to three quarters when an answer comes back later than the target, and to half
  on a timeout;
- it shrinks at most once per window: answers to requests sent before the last decrease tell
  of the old limit, not the new one.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from app.logs import get_logger

log = get_logger(__name__)

SLOW_FACTOR = 0.75  # an answer later than the target
TIMEOUT_FACTOR = 0.5  # no answer at all within the timeout


@dataclass
class Slot:
    """One request's place in flight; the caller says how it went before leaving it."""

    started: float
    latency_s: float | None = None  # set when an answer came back
    timed_out: bool = False  # set when none did within the timeout


class AdaptiveLimit:
    """An asyncio semaphore whose size moves between ``minimum`` and ``maximum`` with the
    latency of what it lets through. Only used from one event loop, so no lock."""

    def __init__(
        self,
        maximum: int,
        *,
        target_s: float,
        minimum: int = 1,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError(f"need 1 <= minimum ({minimum}) <= maximum ({maximum})")
        if target_s <= 0:
            raise ValueError("the latency target must be positive")
        self.maximum = maximum
        self.minimum = minimum
        self.target_s = target_s
        self.name = name  # for the log line when the limit moves
        self.in_flight = 0
        self._limit = float(maximum)  # a healthy server starts at full depth
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._decreased_at = -math.inf
        self._clock = clock  # injectable so tests set latencies without sleeping

    @property
    def limit(self) -> int:
        return int(self._limit)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        await self._acquire()
        slot = Slot(started=self._clock())
        try:
            yield slot
        finally:
            self._release(slot)

    async def _acquire(self) -> None:
        if not self._waiters and self.in_flight < self.limit:
            self.in_flight += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # Granted a slot just as it was cancelled: hand the slot on.
                self.in_flight -= 1
                self._wake()
            else:
                with suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _release(self, slot: Slot) -> None:
        self.in_flight -= 1
        if slot.timed_out:
            self._decrease(slot, TIMEOUT_FACTOR, "timeout")
        elif slot.latency_s is not None:
            if slot.latency_s > self.target_s:
                self._decrease(slot, SLOW_FACTOR, "slow")
            else:
                self._limit = min(float(self.maximum), self._limit + 1.0 / self._limit)
        # An error without an answer (connection refused, a 4xx) says nothing of load.
        self._wake()

    def _decrease(self, slot: Slot, factor: float, reason: str) -> None:
        if slot.started < self._decreased_at:
            return  # sent under the old limit: the decrease already answered it
        before = self.limit
        self._limit = max(float(self.minimum), self._limit * factor)
        self._decreased_at = self._clock()
        if self.limit != before:
            log.info(
                "concurrency_lowered",
                server=self.name,
                limit=self.limit,
                was=before,
                reason=reason,
                latency_s=None if slot.latency_s is None else round(slot.latency_s, 1),
                target_s=self.target_s,
            )

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue  # cancelled while it waited
            self.in_flight += 1
            waiter.set_result(None)
