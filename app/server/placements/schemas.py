"""The read path's wire type: a stored banner, whose it is and how fresh."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from app.domain import Audience, Banner


@dataclass(frozen=True)
class ServedBanner:
    banner: Banner
    source: Audience  # whose banner it is: the shopper's own, their segment's, everyone's
    stale: bool  # made from inputs that changed since (still safe to show: facts checked)
    stale_reasons: list[str]
    generated_at: datetime
    job_id: str | None
