"""Human review of pre-generated banners: the store (ReviewStore) and the API (/v1/review,
/v1/placements/{placement}/review), on SQLite and on PostgreSQL (``database_url``).

Pending banners come from real jobs, run in the app's own process (``jobs_in_process=True``)
by the scripted engine, after review is switched on for the placement: the runner plans a
job from the settings' data files, so the tiny catalog and shoppers are written to files.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import unescape
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from app.config import Settings
from app.domain import Audience, Subject
from app.events import EventType
from app.pregeneration.plan import POPULAR
from app.server.app import create_app
from app.store.db import Database
from app.store.pregenerated import (
    Generated,
    PlacementBannerStore,
    PlacementSettingsStore,
    ReviewDecision,
    ReviewStore,
)
from app.store.templates import TemplateStore
from tests.fakes import GOOD, ScriptedEngine, file_loader, wait_ready
from tests.test_api import _keys
from tests.test_pregeneration import banner, inputs, made
from tests.test_studio import sign_in

Client = TestClient[Litestar]
HERO = "home_hero"
GRID = "home_grid"
FINISHED = ("succeeded", "failed", "cancelled")
DEADLINE_S = 20.0
# A job for every shopper makes these: 5 shoppers, 2 segments, everyone else.
SHOPPERS = ("coffee_fan", "coffee_two", "runner", "camper", "newcomer")
ALL_MADE = len(SHOPPERS) + 2 + 1


def shopper(key: str) -> Subject:
    return Subject(audience=Audience.SHOPPER, key=key)


def segment(key: str) -> Subject:
    return Subject(audience=Audience.SEGMENT, key=key)


FAN, TWO, RUNNER = shopper("coffee_fan"), shopper("coffee_two"), shopper("runner")
REGULAR = segment("regular")


# --- the store ---------------------------------------------------------------------------------


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    async with Database.upgraded(database_url) as database:
        yield database


@pytest.fixture
def review_store(db: Database) -> ReviewStore:
    return ReviewStore(db)


async def stored(
    db: Database, placement: str, *results: Generated, review: str = "pending"
) -> None:
    await PlacementBannerStore(db).save(placement, list(results), review=review)


async def test_the_queue_filters_pages_and_counts(db: Database, review_store: ReviewStore) -> None:
    await stored(db, HERO, made(FAN, "bnr_fan"), made(TWO, "bnr_two", fallback=True))
    await stored(db, HERO, made(REGULAR, "bnr_regular", stale="products changed"))
    await stored(db, HERO, made(POPULAR, "bnr_popular"), review="none")
    await stored(db, GRID, made(RUNNER, "bnr_grid_runner"))

    items, total = await review_store.queue()
    assert total == 4 and {i.banner.id for i in items} == {
        "bnr_fan",
        "bnr_two",
        "bnr_regular",
        "bnr_grid_runner",
    }
    assert all(i.review == "pending" and i.reviewed_by is None for i in items)
    assert (await review_store.queue(placement=GRID))[1] == 1
    assert (await review_store.queue(review=None))[1] == 5  # every state
    assert (await review_store.queue(review="none"))[0][0].banner.id == "bnr_popular"
    fallback, _ = await review_store.queue(fallback=True)
    assert [i.banner.id for i in fallback] == ["bnr_two"]
    stale, _ = await review_store.queue(stale=True)
    assert [i.banner.id for i in stale] == ["bnr_regular"]
    by_segment, _ = await review_store.queue(audience=Audience.SEGMENT, subject="regular")
    assert [i.banner.id for i in by_segment] == ["bnr_regular"]
    assert (await review_store.queue(template="hero_banner"))[1] == 4  # the test banners' own
    assert (await review_store.queue(template="grid_heading"))[1] == 0
    first, total = await review_store.queue(limit=3)
    rest, again = await review_store.queue(limit=3, offset=3)
    assert (len(first), len(rest), total, again) == (3, 1, 4, 4)
    assert {i.banner.id for i in first} | {i.banner.id for i in rest} == {
        i.banner.id for i in items
    }
    assert await review_store.pending_counts() == {HERO: 3, GRID: 1}
    assert await review_store.segments() == ["regular"]


async def test_reject_then_approve(db: Database, review_store: ReviewStore) -> None:
    await stored(db, HERO, made(FAN, "bnr_fan"))
    rejected = await review_store.decide(HERO, FAN, "bnr_fan", "rejected", " too pushy ", "anna")
    assert rejected is not None
    assert (rejected.review, rejected.review_reason) == ("rejected", "too pushy")
    assert rejected.stale_reason == "rejected: too pushy"  # the next stale-only job remakes it
    assert rejected.reviewed_by == "anna" and rejected.reviewed_at is not None
    kept = await PlacementBannerStore(db).get(HERO, FAN)
    assert kept is not None and not kept.servable

    approved = await review_store.decide(HERO, FAN, "bnr_fan", "approved", None, "ben")
    assert approved is not None and approved.servable
    assert approved.stale_reason is None  # the rejection's mark is lifted, nothing else
    audit = await TemplateStore(db).audit("hero_banner")
    assert [(a.action, a.actor) for a in audit] == [
        ("review.approve", "ben"),
        ("review.reject", "anna"),
    ]
    assert audit[1].detail == {
        "placement": HERO,
        "audience": "shopper",
        "subject": "coffee_fan",
        "banner_id": "bnr_fan",
        "template_version": 1,
        "reason": "too pushy",
    }


async def test_an_approval_keeps_a_stale_mark_that_is_not_a_rejection(
    db: Database, review_store: ReviewStore
) -> None:
    await stored(db, HERO, made(FAN, "bnr_fan", stale="price of C1 changed"))
    approved = await review_store.decide(HERO, FAN, "bnr_fan", "approved", None, "anna")
    assert approved is not None and approved.stale_reason == "price of C1 changed"


async def test_a_decision_on_a_replaced_banner_changes_nothing(
    db: Database, review_store: ReviewStore
) -> None:
    await stored(db, HERO, made(FAN, "bnr_old"))
    old = (await review_store.queue())[0][0]
    await stored(db, HERO, made(FAN, "bnr_new"))  # regenerated: a new banner, pending
    assert await review_store.decide(HERO, FAN, "bnr_old", "approved", None, "anna") is None
    assert await review_store.decide(HERO, TWO, "bnr_old", "approved", None, "anna") is None
    # The same id made again (ids follow the inputs, not the copy): stale by its made-at.
    await stored(db, HERO, made(FAN, "bnr_old"))
    decided = await review_store.decide_many(
        [ReviewDecision(HERO, FAN, "bnr_old", "approved", None, old.generated_at)], "anna"
    )
    assert decided == [None]
    kept = await PlacementBannerStore(db).get(HERO, FAN)
    assert kept is not None and kept.review == "pending"
    assert await TemplateStore(db).audit("hero_banner") == []
    now = (await review_store.queue())[0][0]
    decided = await review_store.decide_many(
        [ReviewDecision(HERO, FAN, "bnr_old", "approved", None, now.generated_at)], "anna"
    )
    assert decided[0] is not None and decided[0].review == "approved"


async def test_approve_many_counts_what_it_approved(
    db: Database, review_store: ReviewStore
) -> None:
    await stored(db, HERO, made(FAN, "bnr_fan"), made(TWO, "bnr_two"), made(POPULAR, "bnr_pop"))
    count = await review_store.approve_many(
        [(HERO, FAN, "bnr_fan"), (HERO, TWO, "bnr_gone"), (HERO, POPULAR, "bnr_pop")], "anna"
    )
    assert count == 2
    assert (await review_store.queue())[1] == 1
    assert (await review_store.queue(review="approved"))[1] == 2


async def test_requiring_review_is_a_setting_the_runner_reads(
    db: Database, review_store: ReviewStore
) -> None:
    assert (await review_store.setting(HERO)).required is False
    setting = await review_store.require(HERO, True, "anna", "hero_banner")
    assert (setting.required, setting.updated_by) == (True, "anna")
    assert await PlacementSettingsStore(db).review_required(HERO)
    assert (await review_store.setting(HERO)).updated_at is not None
    assert await review_store.settings() == {HERO: True}
    await review_store.require(HERO, False, "ben", "hero_banner")
    assert not await PlacementSettingsStore(db).review_required(HERO)
    audit = await TemplateStore(db).audit("hero_banner")
    assert [a.action for a in audit] == ["review.not_required", "review.require"]


# --- the API -----------------------------------------------------------------------------------


@dataclass
class Recorded:
    """An Events sink that keeps what it is given."""

    events: list[tuple[EventType, dict[str, Any]]] = field(default_factory=list)

    async def emit(self, type: EventType, data: dict[str, Any]) -> None:
        self.events.append((type, data))


@dataclass
class Review:
    client: Client
    keys: dict[str, str]
    events: Recorded
    url: str

    def call(self, method: str, path: str, body: Any = None, key: str | None = "marketer") -> Any:
        headers = {"X-API-Key": self.keys[key]} if key else {}
        if body is None:
            return self.client.request(method, path, headers=headers)
        return self.client.request(
            method,
            path,
            content=json.dumps(body),
            headers={**headers, "Content-Type": "application/json"},
        )

    def queue(self, query: str = "") -> dict[str, Any]:
        response = self.call("GET", f"/v1/review?{query}")
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    def served(self, shopper_id: str, placement: str = HERO) -> Any:
        return self.call("GET", f"/v1/placements/{placement}/banners/{shopper_id}", key="cms")

    def decide(self, *decisions: dict[str, Any], key: str = "marketer") -> Any:
        return self.call("POST", "/v1/review/decisions", {"decisions": list(decisions)}, key=key)

    def require(self, placement: str = HERO, required: bool = True) -> None:
        response = self.call("PUT", f"/v1/placements/{placement}/review", {"required": required})
        assert response.status_code == 200, response.text

    def run_job(self, placement: str = HERO, stale_only: bool = False) -> dict[str, Any]:
        body = {"placement": placement, "stale_only": stale_only}
        started = self.call("POST", "/v1/jobs", body, key="admin")
        assert started.status_code == 202, started.text
        path = f"/v1/jobs/{started.json()['id']}"
        deadline = time.monotonic() + DEADLINE_S
        while True:
            job: dict[str, Any] = self.call("GET", path, key="admin").json()
            if job["state"] in FINISHED:
                assert job["state"] == "succeeded", job
                return job
            assert time.monotonic() < deadline, job
            time.sleep(0.02)

    def item(self, subject: Subject, query: str = "") -> dict[str, Any]:
        """The queue's entry for ``subject`` in the hero placement."""
        for found in self.queue(f"placement={HERO}&{query}")["items"]:
            if (found["audience"], found["subject"]) == (subject.audience.value, subject.key):
                entry: dict[str, Any] = found
                return entry
        raise AssertionError(f"{subject} is not in the queue")


def decision(
    item: dict[str, Any], verdict: str = "approved", reason: str | None = None
) -> dict[str, Any]:
    body = {k: item[k] for k in ("placement", "audience", "subject", "banner_id")}
    return {**body, "decision": verdict, **({"reason": reason} if reason is not None else {})}


@pytest.fixture
def settings(data_files_settings: Settings) -> Settings:
    return data_files_settings


@pytest.fixture
def review(settings: Settings) -> Iterator[Review]:
    keys = asyncio.run(_keys(settings.database))
    app = create_app(settings, file_loader(ScriptedEngine([GOOD] * 200)), jobs_in_process=True)
    with TestClient(app) as client:
        wait_ready(client)
        recorded = Recorded()
        client.app.state.services.review.events = recorded
        yield Review(client, keys, recorded, settings.database)


@pytest.fixture
def pending(review: Review) -> Review:
    """Review on for the hero placement, then a job for everyone: every banner pending."""
    review.require()
    review.run_job()
    return review


def test_review_is_off_until_switched_on(review: Review) -> None:
    answer = review.call("GET", f"/v1/placements/{HERO}/review").json()
    assert answer == {"placement": HERO, "required": False, "updated_by": None, "updated_at": None}
    review.run_job()  # review off: served as made
    assert review.queue()["total"] == 0
    assert review.served("coffee_fan").json()["source"] == "shopper"
    review.require()
    answer = review.call("GET", f"/v1/placements/{HERO}/review").json()
    assert (answer["required"], answer["updated_by"]) == (True, "test-marketer")
    audit = review.call("GET", "/v1/audit?template=hero_banner", key="cms").json()
    assert audit[0]["action"] == "review.require" and audit[0]["detail"]["placement"] == HERO


def test_pending_banners_are_not_served_until_approved(pending: Review) -> None:
    queue = pending.queue(f"placement={HERO}")
    assert queue["total"] == ALL_MADE and queue["limit"] == 50 and queue["offset"] == 0
    first = queue["items"][0]
    assert first["review"] == "pending" and first["banner"]["headline"] == GOOD["headline"]
    assert first["template"] == "hero_banner" and first["template_version"] == 1
    missing = pending.served("coffee_fan")
    assert missing.status_code == 404, missing.text  # nobody's banner is approved yet

    applied = pending.decide(decision(pending.item(POPULAR)))
    assert applied.status_code == 200, applied.text
    assert len(applied.json()["applied"]) == 1 and applied.json()["stale"] == []
    fell_back = pending.served("coffee_fan")
    assert fell_back.status_code == 200 and fell_back.json()["source"] == "popular"

    pending.decide(decision(pending.item(REGULAR)))
    assert pending.served("coffee_fan").json()["source"] == "segment"
    pending.decide(decision(pending.item(FAN)))
    own = pending.served("coffee_fan").json()
    assert own["source"] == "shopper" and own["banner"]["shopper_id"] == "coffee_fan"
    assert pending.served("runner").json()["source"] == "popular"  # sporty: still pending
    assert pending.queue(f"placement={HERO}")["total"] == ALL_MADE - 3
    approved = pending.queue(f"placement={HERO}&state=approved")["items"]
    assert {i["reviewed_by"] for i in approved} == {"test-marketer"}


def test_a_rejection_is_kept_off_marked_stale_audited_and_emitted(pending: Review) -> None:
    pending.decide(decision(pending.item(POPULAR)), decision(pending.item(REGULAR)))
    fan = pending.item(FAN)
    rejected = pending.decide(decision(fan, "rejected", "Too pushy for a first visit"))
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["applied"][0]["reason"] == "Too pushy for a first visit"
    assert pending.served("coffee_fan").json()["source"] == "segment"  # not theirs

    kept = pending.item(FAN, "state=rejected")
    assert kept["review_reason"] == "Too pushy for a first visit"
    assert kept["stale_reason"] == "rejected: Too pushy for a first visit"
    assert kept["banner_id"] == fan["banner_id"]
    audit = pending.call("GET", "/v1/audit?template=hero_banner", key="cms").json()
    assert (audit[0]["action"], audit[0]["actor"]) == ("review.reject", "test-marketer")
    assert audit[0]["detail"]["banner_id"] == fan["banner_id"]
    assert audit[0]["detail"]["reason"] == "Too pushy for a first visit"
    assert [a["action"] for a in audit[1:3]] == ["review.approve", "review.approve"]
    assert pending.events.events[-1] == (
        "review.decided",
        {
            "placement": HERO,
            "audience": "shopper",
            "subject": "coffee_fan",
            "banner_id": fan["banner_id"],
            "decision": "rejected",
            "reason": "Too pushy for a first visit",
            "edited_to": None,
            "actor": "test-marketer",
        },
    )
    assert [e[1]["decision"] for e in pending.events.events] == ["approved"] * 2 + ["rejected"]

    # The next stale-only job makes it again (pending: review is still on).
    job = pending.run_job(stale_only=True)
    assert job["total"] == 1, job  # the rejected one only
    again = pending.item(FAN)
    assert again["review"] == "pending" and again["stale_reason"] is None
    # Sampled afresh by the new job (its id is in the seeds), so a new banner: the rejection
    # still names the old one, and cannot be applied to what replaced it.
    assert again["banner_id"] != fan["banner_id"]


def store_pending(review: Review, made: Generated) -> None:
    """Store a banner in the hero placement's row as a job would, pending review."""

    async def save() -> None:
        db = Database(review.url)
        try:
            await PlacementBannerStore(db).save(HERO, [made], review="pending")
        finally:
            await db.dispose()

    asyncio.run(save())


def test_a_decision_on_a_banner_made_again_is_stale(pending: Review) -> None:
    fan = pending.item(FAN)
    # Another banner took the row (a new template version, other products ...).
    replacement = Generated(subject=FAN, banner=banner("bnr_replacement"), inputs=inputs())
    store_pending(pending, replacement)
    answer = pending.decide(decision(fan), decision(pending.item(POPULAR)))
    assert answer.status_code == 200, answer.text
    assert [d["subject"] for d in answer.json()["stale"]] == ["coffee_fan"]
    assert [d["audience"] for d in answer.json()["applied"]] == ["popular"]
    now = pending.item(FAN)
    assert (now["banner_id"], now["review"]) == ("bnr_replacement", "pending")
    assert len(pending.events.events) == 1  # the popular one only
    audit = pending.call("GET", "/v1/audit?template=hero_banner", key="cms").json()
    assert [a["detail"].get("subject") for a in audit if a["action"].startswith("review.a")] == [""]


def test_the_same_id_made_again_is_stale_for_a_decision_that_says_when_it_was_made(
    pending: Review,
) -> None:
    fan = pending.item(FAN)
    # A banner made live and kept for reads has no job id in its seeds: the same inputs make
    # the same id again, later (a job's own banners differ by job).
    store_pending(pending, Generated(subject=FAN, banner=banner(fan["banner_id"]), inputs=inputs()))
    again = pending.item(FAN)
    assert again["banner_id"] == fan["banner_id"] and again["generated_at"] != fan["generated_at"]
    answer = pending.decide({**decision(fan), "generated_at": fan["generated_at"]})
    assert answer.json()["stale"] and not answer.json()["applied"]
    answer = pending.decide({**decision(again), "generated_at": again["generated_at"]})
    assert answer.json()["applied"] and not answer.json()["stale"]


def test_bulk_approval(pending: Review) -> None:
    items = pending.queue(f"placement={HERO}&limit=200")["items"]
    answer = pending.decide(*(decision(i) for i in items))
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["applied"]) == ALL_MADE and answer.json()["stale"] == []
    assert pending.queue()["total"] == 0
    assert pending.queue("state=approved")["total"] == ALL_MADE
    for shopper_id in SHOPPERS:
        assert pending.served(shopper_id).json()["source"] == "shopper"
    assert len(pending.events.events) == ALL_MADE


def test_queue_filters_over_http(pending: Review) -> None:
    assert pending.queue("segment=regular")["items"][0]["subject"] == "regular"
    assert pending.queue("segment=regular")["total"] == 1
    assert pending.queue("shopper=runner")["items"][0]["subject"] == "runner"
    assert pending.queue("audience=popular")["total"] == 1
    assert pending.queue("template=hero_banner")["total"] == ALL_MADE
    assert pending.queue("template=grid_heading")["total"] == 0
    assert pending.queue("flags=fallback")["total"] == 0  # the scripted model always answers
    assert pending.queue("state=all&limit=3&offset=6")["items"].__len__() == 2
    assert pending.queue(f"placement={GRID}")["total"] == 0


def test_invalid_decisions_and_queries_are_refused(pending: Review) -> None:
    fan = pending.item(FAN)
    no_reason = pending.decide(decision(fan, "rejected"))
    assert no_reason.status_code == 400, no_reason.text
    assert "reason" in no_reason.json()["errors"][0]["field"]
    blank = pending.decide(decision(fan, "rejected", "   "))
    assert blank.status_code == 400 and "reason" in blank.json()["errors"][0]["field"]
    too_many = pending.decide(*[decision(fan)] * 501)
    assert too_many.status_code == 400, too_many.text
    assert too_many.json()["errors"][0]["field"].startswith("decisions")
    assert pending.decide().status_code == 400  # none at all
    unknown = pending.decide({**decision(fan), "placement": "nowhere"})
    assert unknown.status_code == 404 and "home_hero" in unknown.json()["detail"]
    assert pending.call("GET", "/v1/review?placement=nowhere").status_code == 404
    assert pending.call("GET", "/v1/placements/nowhere/review").status_code == 404
    assert (
        pending.call("PUT", "/v1/placements/nowhere/review", {"required": True}).status_code == 404
    )
    both = pending.call("GET", "/v1/review?segment=regular&shopper=runner")
    assert both.status_code == 400 and both.json()["errors"][0]["field"] == "shopper"
    clash = pending.call("GET", "/v1/review?segment=regular&audience=popular")
    assert clash.status_code == 400
    assert pending.call("GET", "/v1/review?state=maybe").status_code == 400
    # Nothing was decided by any of these.
    assert pending.item(FAN)["review"] == "pending" and pending.events.events == []


def test_edit_and_approve_serves_the_edit_and_keeps_the_models_copy_beside_it(
    pending: Review,
) -> None:
    fan = pending.item(FAN)
    edit = {"headline": "Coffee the way you like it", "cta": "Shop the grinder"}
    applied = pending.decide({**decision(fan), "edit": edit})
    assert applied.status_code == 200, applied.text
    edited_to = applied.json()["applied"][0]["edited_to"]
    assert edited_to and edited_to != fan["banner_id"]  # another text, another banner

    served = pending.served("coffee_fan")
    assert served.status_code == 200 and served.json()["source"] == "shopper"
    shown = served.json()["banner"]
    assert (shown["id"], shown["headline"], shown["cta"]) == (edited_to, *edit.values())
    assert shown["subheadline"] == GOOD["subheadline"]  # not edited: the model's stays
    assert [p["id"] for p in shown["products"]] == [p["id"] for p in fan["banner"]["products"]]
    kept = pending.item(FAN, "state=approved")
    assert kept["model_copy"] == {k: GOOD[k] for k in ("headline", "subheadline", "cta")}
    assert kept["banner_id"] == edited_to

    audit = pending.call("GET", "/v1/audit?template=hero_banner", key="cms").json()[0]
    assert audit["action"] == "review.approve"
    assert audit["detail"]["model_copy"]["headline"] == GOOD["headline"]
    assert audit["detail"]["edit"]["headline"] == edit["headline"]
    assert audit["detail"]["edited_to"] == edited_to
    assert pending.events.events[-1][1]["edited_to"] == edited_to

    # Edited again: the model's first copy is what stays beside it.
    again = pending.decide({**decision(kept), "edit": {"headline": "Coffee your way"}})
    assert again.status_code == 200, again.text
    assert pending.item(FAN, "state=approved")["model_copy"]["headline"] == GOOD["headline"]
    # A job making the banner again replaces the copy, the edit and the model's alike.
    pending.run_job()
    remade = pending.item(FAN)
    assert remade["model_copy"] is None and remade["banner"]["headline"] == GOOD["headline"]


def test_an_edit_is_held_to_what_the_models_copy_is_held_to(pending: Review) -> None:
    fan = pending.item(FAN)
    refusals = {
        "headline": {"headline": "Save 40% on coffee"},  # a number the catalog does not state
        "subheadline": {"subheadline": GOOD["headline"]},  # says the headline again
        "cta": {"cta": "Coffee"},  # no verb: not a call to action
    }
    for field_at_fault, edit in refusals.items():
        refused = pending.decide({**decision(fan), "edit": edit})
        assert refused.status_code == 400, refused.text
        problem = refused.json()
        assert problem["errors"][0]["field"] == f"decisions[0].edit.{field_at_fault}", problem
        assert "refused" in problem["detail"]
    cut = pending.decide(
        {**decision(fan), "edit": {"subheadline": "A grinder keeps the beans and a"}}
    )
    assert cut.json()["errors"][0]["field"] == "decisions[0].edit.subheadline", cut.text
    too_long = pending.decide({**decision(fan), "edit": {"headline": "Coffee " * 40}})
    assert too_long.status_code == 400
    assert too_long.json()["errors"][0]["field"].endswith("edit.headline")
    rejected = pending.decide({**decision(fan, "rejected", "no"), "edit": {"cta": "Shop now"}})
    assert rejected.status_code == 400 and "only an approval" in rejected.text
    empty = pending.decide({**decision(fan), "edit": {}})
    assert empty.status_code == 400 and "at least one" in empty.text
    unknown = pending.decide({**decision(fan), "edit": {"badge": "New"}})
    assert unknown.status_code == 400
    # Nothing was applied by any of them; the same text sent back is a plain approval.
    assert pending.item(FAN)["review"] == "pending" and pending.events.events == []
    same = pending.decide({**decision(fan), "edit": {"headline": GOOD["headline"]}})
    assert same.json()["applied"][0]["edited_to"] is None
    assert pending.item(FAN, "state=approved")["model_copy"] is None


def test_review_needs_a_marketer_or_admin_key(pending: Review) -> None:
    fan = pending.item(FAN)
    calls: list[tuple[str, str, Any]] = [
        ("GET", "/v1/review", None),
        ("POST", "/v1/review/decisions", {"decisions": [decision(fan)]}),
        ("GET", f"/v1/placements/{HERO}/review", None),
        ("PUT", f"/v1/placements/{HERO}/review", {"required": False}),
    ]
    for method, path, body in calls:
        assert pending.call(method, path, body, key="cms").status_code == 403, path
        assert pending.call(method, path, body, key=None).status_code == 401, path
    assert pending.call("GET", "/v1/review", key="admin").status_code == 200
    admin = pending.decide(decision(fan), key="admin")
    assert admin.status_code == 200 and admin.json()["applied"]
    audit = pending.call("GET", "/v1/audit?template=hero_banner", key="cms").json()
    assert audit[0]["actor"] == "test-admin"


def test_a_decision_records_who_and_when(pending: Review) -> None:
    pending.decide(decision(pending.item(FAN)))
    approved = pending.item(FAN, "state=approved")
    made_at = datetime.fromisoformat(approved["generated_at"])
    assert made_at <= datetime.fromisoformat(approved["reviewed_at"]) <= datetime.now(UTC)
    assert approved["reviewed_by"] == "test-marketer"


# --- the studio's review page --------------------------------------------------------------------


def page_items(html: str) -> list[str]:
    """The rows "approve all shown" posts, as the page holds them."""
    return [unescape(v) for v in re.findall(r'name="item" value="([^"]*)"', html)]


def test_the_review_page_draws_the_queue_as_banners(pending: Review) -> None:
    client = pending.client
    token = sign_in(client, pending.keys["marketer"])
    page = client.get("/studio/review")
    assert page.status_code == 200, page.text
    html = page.text
    assert html.count('class="review-item panel"') == ALL_MADE
    assert html.count(f'<h3 class="headline">{GOOD["headline"]}</h3>') == ALL_MADE
    assert 'class="cta">Shop coffee<' in html and 'class="tile"' in html
    assert "segment <b>regular</b>" in html and "everyone else (popular)" in html
    assert "hero_banner v1 (production)" in html
    # Each banner says whether a marketer would publish it as written (app/rubric.py).
    verdicts = html.count("publishable as written</span>") + html.count(
        "<summary>would not publish as written ("
    )
    assert verdicts == ALL_MADE
    assert f"Approve all {ALL_MADE} shown" in html and 'id="nav-review"' in html
    assert len(page_items(html)) == ALL_MADE
    assert 'name="_csrf_token"' in html and token in html

    one = client.get("/studio/review?segment=regular")
    assert one.text.count('class="review-item panel"') == 1
    none = client.get("/studio/review?fallback=1")
    assert 'id="empty"' in none.text
    unknown = client.get("/studio/review?placement=nowhere")
    assert unknown.status_code == 200 and "unknown placement" in unknown.text


def test_reject_then_approve_all_shown_from_the_page(pending: Review) -> None:
    client = pending.client
    token = sign_in(client, pending.keys["marketer"])
    fan = pending.item(FAN)
    form = {
        "_csrf_token": token,
        "placement": HERO,
        "audience": "shopper",
        "subject": "coffee_fan",
        "banner_id": fan["banner_id"],
        "generated_at": fan["generated_at"],
        "decision": "rejected",
        "back": "placement=home_hero&state=pending&evil=1",
    }
    no_reason = client.post("/studio/review/decide", data=form, follow_redirects=False)
    assert no_reason.status_code in (302, 303)
    assert "error=" in no_reason.headers["location"] and "evil" not in no_reason.headers["location"]
    assert pending.item(FAN)["review"] == "pending"

    rejected = client.post(
        "/studio/review/decide", data={**form, "reason": "Wrong tone"}, follow_redirects=False
    )
    assert rejected.status_code in (302, 303)
    assert rejected.headers["location"].startswith("/studio/review?placement=home_hero&state=")
    shown = client.get(rejected.headers["location"])
    assert "Rejected the banner for shopper coffee_fan in home_hero." in shown.text
    assert pending.item(FAN, "state=rejected")["review_reason"] == "Wrong tone"

    stale = client.post("/studio/review/decide", data={**form, "reason": "again", "banner_id": "x"})
    assert "regenerated since you saw it" in stale.text  # followed back to the page

    rows = page_items(shown.text)
    assert len(rows) == ALL_MADE - 1  # the rejected one left the pending queue
    bulk = client.post(
        "/studio/review/approve-all",
        data={"_csrf_token": token, "item": rows, "back": "placement=home_hero"},
        follow_redirects=False,
    )
    assert bulk.status_code in (302, 303)
    after = client.get(bulk.headers["location"])
    assert f"Approved {ALL_MADE - 1} banner(s)." in after.text
    assert pending.queue()["total"] == 0
    assert pending.served("coffee_fan").json()["source"] == "segment"
    assert pending.served("runner").json()["source"] == "shopper"
    decided = [e[1]["decision"] for e in pending.events.events]
    assert decided == ["rejected"] + ["approved"] * (ALL_MADE - 1)


def test_edit_and_approve_from_the_page(pending: Review) -> None:
    client = pending.client
    token = sign_in(client, pending.keys["marketer"])
    page = client.get("/studio/review?segment=regular")
    assert 'class="edit-form"' in page.text and f'value="{GOOD["subheadline"]}"' in page.text
    item = pending.item(REGULAR)
    form = {
        "_csrf_token": token,
        "placement": HERO,
        "audience": "segment",
        "subject": "regular",
        "banner_id": item["banner_id"],
        "generated_at": item["generated_at"],
        "decision": "approved",
        "headline": GOOD["headline"],
        "subheadline": GOOD["subheadline"],
        "cta": "Shop the kettle",
        "back": "segment=regular&state=all",
    }
    refused = client.post("/studio/review/decide", data={**form, "cta": "Kettle"})
    assert "Not applied: the edited copy is refused: decisions[0].edit.cta" in unescape(
        refused.text
    )
    done = client.post("/studio/review/decide", data=form)
    assert "Edited and approved the banner for segment regular" in done.text
    assert 'class="chip edited"' in done.text and "the model wrote" in done.text
    assert pending.item(REGULAR, "state=approved")["banner"]["cta"] == "Shop the kettle"


def test_the_page_switches_review_and_needs_a_marketer_and_a_token(review: Review) -> None:
    client = review.client
    anonymous = client.get("/studio/review", follow_redirects=False)
    assert anonymous.status_code in (302, 303)
    assert anonymous.headers["location"] == "/studio/login?next=/studio/review"
    token = sign_in(client, review.keys["marketer"])
    forged = client.post("/studio/review/placements/home_grid", data={"required": "true"})
    assert forged.status_code == 403  # no CSRF token
    switched = client.post(
        "/studio/review/placements/home_grid", data={"required": "true", "_csrf_token": token}
    )
    assert "Review is on for home_grid" in switched.text
    assert review.call("GET", "/v1/placements/home_grid/review").json()["required"] is True
    refused = client.post(
        "/studio/review/placements/nowhere", data={"required": "true", "_csrf_token": token}
    )
    assert "unknown placement" in refused.text
    bad = client.post("/studio/review/approve-all", data={"_csrf_token": token, "item": "{"})
    assert "not readable" in bad.text
