"""The adaptive in-flight limit: AIMD on the latency of what it lets through."""

from __future__ import annotations

import asyncio

import pytest

from app.generation.concurrency import AdaptiveLimit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def answered(limit: AdaptiveLimit, clock: Clock, latency_s: float) -> None:
    """One request through the limit, answered after ``latency_s`` (on the fake clock)."""
    async with limit.slot() as slot:
        clock.now += latency_s
        slot.latency_s = latency_s


async def timed_out(limit: AdaptiveLimit, clock: Clock, after_s: float = 60.0) -> None:
    async with limit.slot() as slot:
        clock.now += after_s
        slot.timed_out = True


async def test_it_starts_at_full_depth_and_lets_that_many_through() -> None:
    limit = AdaptiveLimit(4, target_s=30.0)
    entered = 0
    release = asyncio.Event()

    async def hold() -> None:
        nonlocal entered
        async with limit.slot():
            entered += 1
            await release.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(6)]
    await asyncio.sleep(0.01)
    assert (entered, limit.in_flight, limit.waiting) == (4, 4, 2)
    release.set()
    await asyncio.gather(*tasks)
    assert (entered, limit.in_flight, limit.waiting) == (6, 0, 0)


async def test_a_timeout_halves_it_and_a_late_answer_takes_a_quarter_off() -> None:
    clock = Clock()
    limit = AdaptiveLimit(64, target_s=30.0, clock=clock)
    await timed_out(limit, clock)
    assert limit.limit == 32
    await answered(limit, clock, 31.0)
    assert limit.limit == 24
    await answered(limit, clock, 29.0)  # within the target: grows, by 1/24 of a slot
    assert limit.limit == 24


async def test_it_never_goes_below_the_minimum_nor_above_the_maximum() -> None:
    clock = Clock()
    limit = AdaptiveLimit(8, target_s=1.0, minimum=2, clock=clock)
    for _ in range(10):
        await timed_out(limit, clock)
    assert limit.limit == 2
    for _ in range(500):
        await answered(limit, clock, 0.1)
    assert limit.limit == 8


async def test_it_grows_by_one_per_window_of_timely_answers() -> None:
    clock = Clock()
    limit = AdaptiveLimit(64, target_s=30.0, clock=clock)
    await timed_out(limit, clock)
    assert limit.limit == 32
    for _ in range(32):  # a window at 32, each answer adding 1/limit: 32.98...
        await answered(limit, clock, 1.0)
    assert limit.limit == 32
    await answered(limit, clock, 1.0)
    assert limit.limit == 33


async def test_requests_sent_before_a_decrease_do_not_decrease_it_again() -> None:
    """Sixteen requests time out together: one outage, one halving (TCP's once per window)."""
    clock = Clock()
    limit = AdaptiveLimit(16, target_s=30.0, clock=clock)
    held = asyncio.Event()
    slots = []

    async def hold() -> None:
        async with limit.slot() as slot:
            slots.append(slot)
            await held.wait()
            slot.timed_out = True

    tasks = [asyncio.create_task(hold()) for _ in range(16)]
    await asyncio.sleep(0.01)
    clock.now += 60.0
    held.set()
    await asyncio.gather(*tasks)
    assert limit.limit == 8
    # A request sent after that decrease, timing out too, halves it again.
    await timed_out(limit, clock)
    assert limit.limit == 4


async def test_after_a_decrease_waiters_get_in_only_as_the_lower_limit_allows() -> None:
    clock = Clock()
    limit = AdaptiveLimit(4, target_s=30.0, clock=clock)
    await timed_out(limit, clock)
    assert limit.limit == 2
    inside = 0
    most = 0
    release = asyncio.Event()

    async def hold() -> None:
        nonlocal inside, most
        async with limit.slot() as slot:
            inside += 1
            most = max(most, inside)
            await release.wait()
            inside -= 1
            slot.latency_s = 1.0

    tasks = [asyncio.create_task(hold()) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert (inside, limit.waiting) == (2, 3)
    release.set()
    await asyncio.gather(*tasks)
    assert most == 2
    assert limit.in_flight == 0


async def test_an_error_without_an_answer_leaves_it_as_it_was() -> None:
    clock = Clock()
    limit = AdaptiveLimit(8, target_s=30.0, clock=clock)
    with pytest.raises(RuntimeError):
        async with limit.slot():
            raise RuntimeError("connection refused")
    assert (limit.limit, limit.in_flight) == (8, 0)


async def test_a_waiter_cancelled_in_the_queue_holds_no_slot() -> None:
    limit = AdaptiveLimit(1, target_s=30.0)
    release = asyncio.Event()

    async def hold() -> None:
        async with limit.slot():
            await release.wait()

    first = asyncio.create_task(hold())
    queued = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    assert limit.waiting == 1
    queued.cancel()
    await asyncio.sleep(0.01)
    assert limit.waiting == 0
    release.set()
    await first
    # The slot is free again: a new request enters at once.
    await asyncio.wait_for(hold(), timeout=1.0)
    assert limit.in_flight == 0


async def test_a_waiter_cancelled_as_it_is_let_in_hands_its_slot_on() -> None:
    limit = AdaptiveLimit(1, target_s=30.0)
    entered: list[str] = []
    release = asyncio.Event()

    async def hold(name: str) -> None:
        async with limit.slot():
            entered.append(name)
            await release.wait()

    async def first() -> None:
        await hold("first")
        # Leaving gave the slot to "second", which has not run since: cancel it now.
        second.cancel()

    leader = asyncio.create_task(first())
    await asyncio.sleep(0.01)
    second = asyncio.create_task(hold("second"))
    third = asyncio.create_task(hold("third"))
    await asyncio.sleep(0.01)
    assert limit.waiting == 2
    release.set()
    # Bounded: a slot lost to the cancelled waiter would leave "third" waiting for ever.
    await asyncio.wait_for(asyncio.gather(leader, second, third, return_exceptions=True), 2.0)
    assert second.cancelled()
    assert entered == ["first", "third"]
    assert (limit.in_flight, limit.waiting) == (0, 0)


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        AdaptiveLimit(0, target_s=1.0)
    with pytest.raises(ValueError):
        AdaptiveLimit(4, target_s=1.0, minimum=5)
    with pytest.raises(ValueError):
        AdaptiveLimit(4, target_s=0.0)
