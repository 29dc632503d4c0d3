"""The generation limit: at most N generations at once in this process, beyond it a clear 503.

Every generation takes its slot inside a service (banners, homepages, previews), so no endpoint
can bypass ``MARQUEE_MAX_IN_FLIGHT_REQUESTS`` by forgetting to.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from app.server.errors import Problem
from app.server.metrics import REJECTED


class GenerationLimit:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.current = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.current >= self.limit:
            REJECTED.inc()
            raise Problem(
                "busy",
                f"{self.limit} generations already in flight; retry shortly",
                headers={"Retry-After": "2"},
            )
        self.current += 1
        try:
            yield
        finally:
            self.current -= 1
