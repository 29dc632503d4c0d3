"""What happened, for whoever listens (webhooks): a small interface the core and the
services emit through, so none of them knows how events are delivered.

Event types: ``banner.ready``, ``job.finished``, ``template.published``, ``review.decided``.
Emitting never blocks on delivery and never fails the work that emits: an implementation
stores the event (an outbox) and returns.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

EventType = Literal["banner.ready", "job.finished", "template.published", "review.decided"]
EVENT_TYPES: tuple[EventType, ...] = (
    "banner.ready",
    "job.finished",
    "template.published",
    "review.decided",
)


class Events(Protocol):
    async def emit(self, type: EventType, data: dict[str, Any]) -> None:
        """Record that ``type`` happened, with its JSON-serializable ``data``."""
        ...


class NoEvents:
    """Nobody listens: events are dropped."""

    async def emit(self, type: EventType, data: dict[str, Any]) -> None:
        return None
