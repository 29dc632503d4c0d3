"""Pre-generation over HTTP: jobs (POST/GET/DELETE /v1/jobs) and the read path
(GET /v1/placements/{placement}/banners/{shopper_id}).

The app runs with ``jobs_in_process=True``: a job's shards are made by the app's own pipeline
(the scripted engine), not Ray workers. The runner plans a job from the data files of the
settings, so the tiny catalog and shoppers are written to files the settings name, and the
app's pipeline is loaded from them too: planner and pipeline see the same shoppers.

Nothing here waits on the wall clock for an outcome: a job is followed by polling GET
/v1/jobs/{id} until a deadline, and an engine that must hold a job running waits on a gate
the test opens.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from app.config import Settings
from app.domain import Audience, Subject
from app.generation.engine import GenerationRequest, GenerationResult
from app.pregeneration.plan import POPULAR
from app.server.app import create_app
from app.store.db import Database
from app.store.pregenerated import PlacementBannerStore, StoredBanner
from tests.fakes import ScriptedEngine, file_loader, wait_ready
from tests.test_api import _keys

Client = TestClient[Litestar]
HERO = "home_hero"
GRID = "home_grid"
PLACEMENTS = (
    "home_back_in_stock, home_because_viewed, home_brand, home_grid, home_hero, "
    "home_new_arrivals, home_spotlight"
)
SHOPPERS = ("coffee_fan", "coffee_two", "runner", "camper", "newcomer")
SEGMENTS = {"coffee_fan": "regular", "coffee_two": "regular", "newcomer": "regular"}
SEGMENTS |= {"runner": "sporty", "camper": "sporty"}
# Every shopper, their two segments (regular, sporty) and everyone else (popular).
TOTAL_ALL = len(SHOPPERS) + 2 + 1
FINISHED = ("succeeded", "failed", "cancelled")
DEADLINE_S = 60.0  # a bound for a defect to fail on, not a speed to meet


def shopper(key: str) -> Subject:
    return Subject(audience=Audience.SHOPPER, key=key)


def segment(key: str) -> Subject:
    return Subject(audience=Audience.SEGMENT, key=key)


ALL_SUBJECTS = [
    *(shopper(s) for s in SHOPPERS),
    segment("regular"),
    segment("sporty"),
    POPULAR,
]


class GateEngine(ScriptedEngine):
    """Answers its first ``free`` requests at once (GOOD); every later one waits until the test
    opens ``gate``. A threading event: the test's thread opens it, the app's loop polls it."""

    def __init__(self, free: int = 0) -> None:
        super().__init__([])
        self.free = free
        self.gate = threading.Event()
        self.waiting = 0

    async def generate_many(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        if self.free >= len(requests):
            self.free -= len(requests)
        else:
            self.waiting += len(requests)
            while not self.gate.is_set():
                await asyncio.sleep(0.01)
            self.waiting -= len(requests)
        return await super().generate_many(requests)


# --- the app -----------------------------------------------------------------------------------


@pytest.fixture
def settings(data_files_settings: Settings) -> Settings:
    """Settings whose data files hold the tiny catalog and shoppers; shards of two subjects,
    each written as soon as it is made (a job's progress moves shard by shard)."""
    return data_files_settings.model_copy(
        update={
            "job_shard_size": 2,
            "job_write_batch": 1,
        }
    )


@pytest.fixture
def keys(settings: Settings) -> dict[str, str]:
    return asyncio.run(_keys(settings.database))


@contextmanager
def serving(settings: Settings, engine: ScriptedEngine) -> Iterator[Client]:
    app = create_app(settings, file_loader(engine), jobs_in_process=True)
    with TestClient(app) as client:
        wait_ready(client)
        yield client


def call(client: Client, method: str, path: str, key: str | None, body: Any = None) -> Any:
    headers = {"X-API-Key": key} if key else {}
    if body is None:
        return client.request(method, path, headers=headers)
    return client.request(
        method,
        path,
        content=json.dumps(body),
        headers={**headers, "Content-Type": "application/json"},
    )


def start(client: Client, admin: str, body: dict[str, Any]) -> dict[str, Any]:
    response = call(client, "POST", "/v1/jobs", admin, body)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    return job


def until(
    client: Client, admin: str, job_id: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The job as GET /v1/jobs/{id} shows it, once ``done`` holds (fails at the deadline)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        response = call(client, "GET", f"/v1/jobs/{job_id}", admin)
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if done(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job never got there: {job}")
        time.sleep(0.02)


def finish(client: Client, admin: str, job_id: str) -> dict[str, Any]:
    return until(client, admin, job_id, lambda job: job["state"] in FINISHED)


def run_job(client: Client, admin: str, body: dict[str, Any]) -> dict[str, Any]:
    job = finish(client, admin, start(client, admin, body)["id"])
    assert job["state"] == "succeeded", job
    return job


def stored_rows(
    url: str, placement: str, subjects: list[Subject] | None = None
) -> dict[Subject, StoredBanner]:
    async def read() -> dict[Subject, StoredBanner]:
        db = Database(url)
        try:
            return await PlacementBannerStore(db).many(placement, subjects or ALL_SUBJECTS)
        finally:
            await db.dispose()

    return asyncio.run(read())


def stored(url: str, placement: str, subject: Subject) -> StoredBanner | None:
    async def read() -> StoredBanner | None:
        db = Database(url)
        try:
            return await PlacementBannerStore(db).get(placement, subject)
        finally:
            await db.dispose()

    return asyncio.run(read())


def read_banner(
    client: Client, key: str | None, shopper_id: str, placement: str = HERO, **params: Any
) -> Any:
    headers = {"X-API-Key": key} if key else {}
    return client.get(
        f"/v1/placements/{placement}/banners/{shopper_id}", params=params, headers=headers
    )


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


# --- 1. a job's life ---------------------------------------------------------------------------


def test_a_job_runs_to_success_and_is_listed_newest_first(
    settings: Settings, keys: dict[str, str]
) -> None:
    engine = ScriptedEngine([])  # GOOD for every request
    admin = keys["admin"]
    with serving(settings, engine) as client:
        grid = run_job(client, admin, {"placement": GRID})
        assert grid["done"] == grid["total"] == TOTAL_ALL
        made_for_grid = len(engine.requests)  # (GOOD is no grid heading: tries, fallbacks)

        created = start(client, admin, {"placement": HERO})
        assert created["state"] in ("queued", "running")
        assert created["resumed"] is False and created["cancel_requested"] is False
        assert (created["placement"], created["shoppers"], created["stale_only"]) == (
            HERO,
            "all",
            False,
        )
        assert created["shopper_count"] is None and created["created_by"] == "test-admin"

        job = finish(client, admin, created["id"])
        assert job["state"] == "succeeded", job
        assert (job["total"], job["done"], job["failures"]) == (TOTAL_ALL, TOTAL_ALL, 0)
        assert job["fallbacks"] == 0 and job["error"] is None and job["eta_s"] is None
        assert job["banners_per_s"] is not None and job["banners_per_s"] > 0
        assert job["finished_at"] is not None and job["started_at"] is not None
        moments = [datetime.fromisoformat(job[k]) for k in ("created_at", "started_at")]
        moments.append(datetime.fromisoformat(job["finished_at"]))
        assert moments == sorted(moments)
        assert len(engine.requests) - made_for_grid == TOTAL_ALL  # one generation each

        listed = call(client, "GET", "/v1/jobs", admin)
        assert listed.status_code == 200, listed.text
        assert [j["id"] for j in listed.json()] == [job["id"], grid["id"]]
        assert listed.json()[0] == job
        assert [j["id"] for j in call(client, "GET", "/v1/jobs?limit=1", admin).json()] == [
            job["id"]
        ]

    rows = stored_rows(settings.database, HERO)
    assert set(rows) == set(ALL_SUBJECTS)
    assert {row.job_id for row in rows.values()} == {job["id"]}
    assert all(row.stale_reason is None and row.banner.products for row in rows.values())


# --- 2. what a job is refused for ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"placement": "nowhere"}, "placement", [PLACEMENTS]),
        # A rule over two fields: the body is at fault, and the message names the list.
        ({"placement": HERO, "shoppers": "ids"}, "body", ["shopper_ids", "'ids'"]),
        ({"placement": HERO, "shopper_ids": ["coffee_fan"]}, "body", ["shopper_ids", "'ids'"]),
        (
            {
                "placement": HERO,
                "shoppers": "ids",
                "shopper_ids": ["coffee_fan", "ghost", "nobody"],
            },
            "shopper_ids",
            ["2 unknown", "ghost", "nobody"],
        ),
        ({"placement": HERO, "shoppers": "segment:vip"}, "shoppers", ["vip", "regular, sporty"]),
        ({"placement": HERO, "shoppers": "everyone"}, "shoppers", []),
        ({"placement": HERO, "priority": "high"}, "priority", []),
    ],
    ids=[
        "unknown-placement",
        "ids-without-list",
        "list-without-ids",
        "unknown-shoppers",
        "empty-segment",
        "bad-selection",
        "extra-field",
    ],
)
def test_a_job_that_cannot_be_made_is_refused_naming_the_field(
    settings: Settings,
    keys: dict[str, str],
    body: dict[str, Any],
    field: str,
    words: list[str],
) -> None:
    engine = ScriptedEngine([])
    with serving(settings, engine) as client:
        refused = problem(call(client, "POST", "/v1/jobs", keys["admin"], body), 400)
        assert refused["type"] == "urn:marquee:problem:invalid-request"
        error = refused["errors"][0]
        assert error["field"] == field, refused
        for word in words:
            assert word in error["message"], refused
        assert call(client, "GET", "/v1/jobs", keys["admin"]).json() == []  # nothing started
    assert engine.requests == []


def test_jobs_are_for_admin_keys_and_unknown_jobs_are_404(
    settings: Settings, keys: dict[str, str]
) -> None:
    with serving(settings, ScriptedEngine([])) as client:
        for method, path in (
            ("POST", "/v1/jobs"),
            ("GET", "/v1/jobs"),
            ("GET", "/v1/jobs/job_nope"),
            ("DELETE", "/v1/jobs/job_nope"),
        ):
            body = {"placement": HERO} if method == "POST" else None
            anonymous = problem(call(client, method, path, None, body), 401)
            assert anonymous["type"] == "urn:marquee:problem:unauthorized"
            cms = problem(call(client, method, path, keys["cms"], body), 403)
            assert cms["type"] == "urn:marquee:problem:forbidden"
            marketer = problem(call(client, method, path, keys["marketer"], body), 403)
            assert marketer["type"] == "urn:marquee:problem:forbidden"
        assert call(client, "GET", "/v1/jobs", keys["admin"]).json() == []  # none was started
        for method in ("GET", "DELETE"):
            missing = problem(call(client, method, "/v1/jobs/job_nope", keys["admin"]), 404)
            assert "job_nope" in missing["detail"]


# --- 3. one job per placement; cancelling ------------------------------------------------------


def test_one_job_per_placement_and_cancel_stops_it_after_its_shard(
    settings: Settings, keys: dict[str, str]
) -> None:
    engine = GateEngine()  # nothing is answered until the gate opens
    admin = keys["admin"]
    with serving(settings, engine) as client:
        first = start(client, admin, {"placement": HERO})
        running = until(client, admin, first["id"], lambda j: j["state"] == "running")
        assert (running["total"], running["done"]) == (TOTAL_ALL, 0)

        for body in ({"placement": HERO}, {"placement": HERO, "shoppers": "segment:sporty"}):
            conflict = problem(call(client, "POST", "/v1/jobs", admin, body), 409)
            assert conflict["type"] == "urn:marquee:problem:conflict"
            assert conflict["job"] == first["id"]
            assert first["id"] in conflict["detail"]

        other = start(client, admin, {"placement": GRID})  # another placement starts fine
        assert other["id"] != first["id"] and other["state"] in ("queued", "running")

        response = call(client, "DELETE", f"/v1/jobs/{first['id']}", admin)
        assert response.status_code == 202, response.text
        asked = response.json()
        assert asked["cancel_requested"] is True
        assert asked["state"] in ("queued", "running")  # it stops after its current shard
        still = call(client, "GET", f"/v1/jobs/{first['id']}", admin).json()
        assert still["state"] == "running" and still["cancel_requested"] is True

        engine.gate.set()
        cancelled = finish(client, admin, first["id"])
        assert cancelled["state"] == "cancelled", cancelled
        assert cancelled["finished_at"] is not None
        # The shard in flight was stored (two subjects), and nothing after it.
        assert cancelled["done"] == settings.job_shard_size < cancelled["total"]
        assert cancelled["failures"] == 0

        grid = finish(client, admin, other["id"])
        assert grid["state"] == "succeeded" and grid["done"] == grid["total"] == TOTAL_ALL

        # A finished job is unchanged by DELETE, cancelled or succeeded.
        for job in (cancelled, grid):
            again = call(client, "DELETE", f"/v1/jobs/{job['id']}", admin)
            assert again.status_code == 202, again.text
            assert again.json() == job

        # The placement is free again once its job is cancelled.
        after = run_job(client, admin, {"placement": HERO})
        assert after["id"] != first["id"] and after["resumed"] is False

    made = stored_rows(settings.database, HERO)
    assert set(made) == set(ALL_SUBJECTS)
    assert {row.job_id for row in made.values()} == {after["id"]}


# --- 4. an interrupted job resumes where it stopped ----------------------------------------------


def test_a_job_interrupted_by_shutdown_resumes_without_making_again(
    settings: Settings, keys: dict[str, str]
) -> None:
    admin = keys["admin"]
    shard = settings.job_shard_size
    first_engine = GateEngine(free=shard)  # one shard answered, then it hangs
    with serving(settings, first_engine) as client:
        job = start(client, admin, {"placement": HERO})
        until(client, admin, job["id"], lambda j: j["done"] == shard)
        until(client, admin, job["id"], lambda j: first_engine.waiting == shard)
    # Leaving the client shuts the app down: its running job stops, interrupted.
    before = stored_rows(settings.database, HERO)
    assert len(before) == shard and {r.job_id for r in before.values()} == {job["id"]}

    engine = ScriptedEngine([])
    with serving(settings, engine) as client:
        shown = call(client, "GET", f"/v1/jobs/{job['id']}", admin).json()
        assert shown["state"] == "interrupted" and shown["done"] == shard

        resumed = start(client, admin, {"placement": HERO})
        assert resumed["id"] == job["id"] and resumed["resumed"] is True
        assert resumed["state"] in ("queued", "running")
        done = finish(client, admin, job["id"])
        assert done["state"] == "succeeded", done
        assert (done["total"], done["done"], done["failures"]) == (TOTAL_ALL, TOTAL_ALL, 0)
        # Only what the first run did not store was made again.
        assert len(engine.requests) == TOTAL_ALL - shard
        listed = call(client, "GET", "/v1/jobs", admin).json()
        assert [j["id"] for j in listed] == [job["id"]]  # resumed, not a second job

    after = stored_rows(settings.database, HERO)
    assert set(after) == set(ALL_SUBJECTS)
    assert {r.job_id for r in after.values()} == {job["id"]}
    for subject, row in before.items():
        assert after[subject].generated_at == row.generated_at
        assert after[subject].banner.id == row.banner.id


def test_resuming_with_another_selection_starts_a_new_job(
    settings: Settings, keys: dict[str, str]
) -> None:
    admin = keys["admin"]
    with serving(settings, GateEngine(free=0)) as client:
        job = start(client, admin, {"placement": HERO})
        until(client, admin, job["id"], lambda j: j["state"] == "running")

    with serving(settings, ScriptedEngine([])) as client:
        other = start(client, admin, {"placement": HERO, "shoppers": "segment:sporty"})
        assert other["id"] != job["id"] and other["resumed"] is False
        superseded = call(client, "GET", f"/v1/jobs/{job['id']}", admin).json()
        assert superseded["state"] == "cancelled" and "superseded" in superseded["error"]
        made = finish(client, admin, other["id"])
        # The sporty shoppers (runner, camper), their segment, and everyone else.
        assert (made["state"], made["total"], made["done"]) == ("succeeded", 4, 4)


def test_cancelling_an_interrupted_job_ends_it_and_frees_its_placement(
    settings: Settings, keys: dict[str, str]
) -> None:
    admin = keys["admin"]
    with serving(settings, GateEngine(free=0)) as client:
        job = start(client, admin, {"placement": HERO})
        until(client, admin, job["id"], lambda j: j["state"] == "running")

    with serving(settings, ScriptedEngine([])) as client:
        response = call(client, "DELETE", f"/v1/jobs/{job['id']}", admin)
        assert response.status_code == 202, response.text
        ended = response.json()
        # Nobody runs it to notice the request: it ends here.
        assert ended["state"] == "cancelled" and ended["cancel_requested"] is True
        assert ended["finished_at"] is not None
        fresh = start(client, admin, {"placement": HERO})  # the same spec: not resumed
        assert fresh["id"] != job["id"] and fresh["resumed"] is False
        assert finish(client, admin, fresh["id"])["done"] == TOTAL_ALL


# --- 5. the read path ----------------------------------------------------------------------------


def test_the_read_path_serves_own_segment_or_popular_banners(
    settings: Settings, keys: dict[str, str]
) -> None:
    admin, cms = keys["admin"], keys["cms"]
    with serving(settings, ScriptedEngine([])) as client:
        nothing = problem(read_banner(client, cms, "coffee_fan"), 404)
        assert "POST /v1/jobs" in nothing["detail"]

        job = run_job(
            client, admin, {"placement": HERO, "shoppers": "ids", "shopper_ids": ["coffee_fan"]}
        )
        assert job["total"] == 3 and job["shopper_count"] == 1  # coffee_fan, regular, popular

        own = read_banner(client, cms, "coffee_fan")
        assert own.status_code == 200, own.text
        body = own.json()
        assert body["source"] == "shopper" and body["job_id"] == job["id"]
        assert body["stale"] is False and body["stale_reasons"] == []
        assert body["banner"]["products"] and body["banner"]["placement"] == HERO
        etag = own.headers["ETag"]
        assert etag.startswith('"') and "max-age" in own.headers["Cache-Control"]

        same = client.get(
            "/v1/placements/home_hero/banners/coffee_fan",
            headers={"X-API-Key": cms, "If-None-Match": etag},
        )
        assert same.status_code == 304 and same.headers["ETag"] == etag and not same.content

        # coffee_two is known (segment regular) but has no banner of its own.
        theirs = read_banner(client, cms, "coffee_two")
        assert theirs.status_code == 200, theirs.text
        assert theirs.json()["source"] == "segment"
        assert theirs.headers["ETag"] != etag
        # The runner's segment (sporty) has none either: everyone's banner.
        assert read_banner(client, cms, "runner").json()["source"] == "popular"
        # An unknown shopper gets everyone's.
        stranger = read_banner(client, cms, "never_seen")
        assert stranger.status_code == 200 and stranger.json()["source"] == "popular"

        strict = problem(read_banner(client, cms, "coffee_two", fallback="false"), 404)
        assert "coffee_two" in strict["detail"]
        assert problem(read_banner(client, cms, "never_seen", fallback="false"), 404)
        own_only = read_banner(client, cms, "coffee_fan", fallback="false")
        assert own_only.status_code == 200 and own_only.json()["source"] == "shopper"

        unknown = problem(read_banner(client, cms, "coffee_fan", placement="home_footer"), 404)
        assert PLACEMENTS in unknown["detail"]
        assert problem(read_banner(client, None, "coffee_fan"), 401)
        assert read_banner(client, admin, "coffee_fan").status_code == 200
        # Another placement has nothing made yet.
        assert problem(read_banner(client, cms, "coffee_fan", placement=GRID), 404)


def first_clean(
    rows: dict[Subject, StoredBanner], order: list[Subject], product_id: str
) -> Subject | None:
    """The first of ``order`` whose stored banner does not show ``product_id``."""
    for subject in order:
        if subject in rows and product_id not in rows[subject].inputs.facts:
            return subject
    return None


@pytest.mark.parametrize("change", ["reprice", "withdraw"])
@pytest.mark.parametrize(
    "who",
    # coffee_fan's first product (C1) is on no other banner: their segment's is served.
    # newcomer's (C3) is on their segment's and everyone's too: nothing is left to serve.
    ["coffee_fan", "newcomer"],
)
# The read path's memory of stored rows (read_cache_s) never serves a changed product's old
# facts: the rows it holds are checked against the live catalog on every read as well.
@pytest.mark.parametrize("read_cache_s", [0.0, 60.0])
def test_a_banner_whose_product_changed_is_not_served_and_is_marked_stale(
    settings: Settings, keys: dict[str, str], change: str, who: str, read_cache_s: float
) -> None:
    admin, cms = keys["admin"], keys["cms"]
    settings = settings.model_copy(update={"read_cache_s": read_cache_s})
    with serving(settings, ScriptedEngine([])) as client:
        run_job(client, admin, {"placement": HERO})
        own = read_banner(client, cms, who).json()
        assert own["source"] == "shopper"
        shown = own["banner"]["products"][0]
        pid, old_price = shown["id"], shown["price"]

        rows = stored_rows(settings.database, HERO)
        order = [shopper(who), segment(SEGMENTS[who]), POPULAR]
        showing = {s for s, row in rows.items() if pid in row.inputs.facts}
        expected = first_clean(rows, order, pid)
        # The rows the read looks at before it finds one to serve: each is marked stale.
        looked_at = order[: order.index(expected)] if expected is not None else order

        if change == "reprice":
            item = call(client, "GET", f"/v1/products/{pid}", cms).json()
            item["price"] = round(old_price + 7.5, 2)
            put = call(client, "PUT", "/v1/products", admin, {"products": [item]})
            assert put.status_code == 200 and put.json()["updated"] == [pid], put.text
            reason = f"product {pid} price {old_price:g} -> {item['price']:g}"
        else:
            gone = call(client, "DELETE", f"/v1/products/{pid}", admin)
            assert gone.status_code == 204, gone.text
            reason = f"product {pid} withdrawn"

        response = read_banner(client, cms, who)
        if expected is None:
            assert "POST /v1/jobs" in problem(response, 404)["detail"]
        else:
            assert response.status_code == 200, response.text
            served = response.json()
            assert served["source"] == expected.audience.value
            assert served["banner"]["id"] == rows[expected].banner.id
            assert pid not in {p["id"] for p in served["banner"]["products"]}
        assert problem(read_banner(client, cms, who, fallback="false"), 404)

        deadline = time.monotonic() + DEADLINE_S
        while True:
            marks = {s: stored(settings.database, HERO, s) for s in looked_at}
            if all(m is not None and m.stale_reason for m in marks.values()):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert {s: m.stale_reason if m else None for s, m in marks.items()} == {
            s: reason for s in looked_at
        }

        if read_cache_s:
            return  # the banners made again next are served once the memory ends (60 s)
        # A stale-only job makes again every banner that shows the product, and only those.
        remade = run_job(client, admin, {"placement": HERO, "stale_only": True})
        assert remade["total"] == remade["done"] == len(showing)
        fresh = read_banner(client, cms, who)
        assert fresh.status_code == 200 and fresh.json()["source"] == "shopper"
        assert fresh.json()["stale"] is False
        assert fresh.json()["job_id"] == remade["id"]
        if change == "withdraw":
            assert pid not in {p["id"] for p in fresh.json()["banner"]["products"]}
        else:
            prices = {p["id"]: p["price"] for p in fresh.json()["banner"]["products"]}
            assert prices.get(pid, item["price"]) == item["price"]


@pytest.mark.parametrize("change", ["profile", "events"])
def test_a_shopper_who_changed_is_still_served_their_banner_flagged_stale(
    settings: Settings, keys: dict[str, str], change: str
) -> None:
    admin, cms = keys["admin"], keys["cms"]
    with serving(settings, ScriptedEngine([])) as client:
        run_job(client, admin, {"placement": HERO})
        before = read_banner(client, cms, "runner").json()
        assert before["stale"] is False

        if change == "profile":
            profile = {"segment": "sporty", "interests": ["yoga"]}
            put = call(client, "PUT", "/v1/shoppers/runner", cms, profile)
            assert put.status_code == 200, put.text
        else:
            events = {"events": [{"shopper_id": "runner", "product_id": "Y1", "type": "view"}]}
            posted = call(client, "POST", "/v1/events", cms, events)
            assert posted.status_code == 202, posted.text

        after = read_banner(client, cms, "runner")
        assert after.status_code == 200, after.text
        served = after.json()
        assert served["source"] == "shopper"
        assert served["banner"]["id"] == before["banner"]["id"]
        assert served["stale"] is True
        assert served["stale_reasons"] == ["profile or history changed"]
        # Nobody else changed.
        assert read_banner(client, cms, "camper").json()["stale"] is False


# --- 6. stale-only jobs ------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["profile", "events"])
def test_a_stale_only_job_makes_only_what_changed(
    settings: Settings, keys: dict[str, str], change: str
) -> None:
    admin, cms = keys["admin"], keys["cms"]
    engine = ScriptedEngine([])
    with serving(settings, engine) as client:
        full = run_job(client, admin, {"placement": HERO})
        made = len(engine.requests)

        idle = run_job(client, admin, {"placement": HERO, "stale_only": True})
        assert (idle["total"], idle["done"], idle["failures"]) == (0, 0, 0)
        assert idle["stale_only"] is True and idle["id"] != full["id"]
        assert len(engine.requests) == made

        if change == "profile":
            profile = {"segment": "regular", "interests": ["tea"]}  # same segment: no new one
            changed = call(client, "PUT", "/v1/shoppers/coffee_fan", cms, profile)
            assert changed.status_code == 200, changed.text
        else:
            events = {
                "events": [
                    {"shopper_id": "coffee_fan", "product_id": "T1", "type": "view"},
                    {"shopper_id": "coffee_fan", "product_id": "C2", "type": "purchase"},
                ]
            }
            changed = call(client, "POST", "/v1/events", cms, events)
            assert changed.status_code == 202, changed.text
        assert read_banner(client, cms, "coffee_fan").json()["stale"] is True

        one = run_job(client, admin, {"placement": HERO, "stale_only": True})
        # Only the changed shopper: a segment's and everyone's banner are made for stand-ins
        # that no shopper's change touches.
        assert (one["total"], one["done"], one["failures"]) == (1, 1, 0)
        assert len(engine.requests) == made + 1

        served = read_banner(client, cms, "coffee_fan").json()
        assert served["source"] == "shopper" and served["job_id"] == one["id"]
        assert served["stale"] is False, served

        # What it made is fresh to the planner too: nothing is left.
        again = run_job(client, admin, {"placement": HERO, "stale_only": True})
        assert again["total"] == 0, again
        assert len(engine.requests) == made + 1

    rows = stored_rows(settings.database, HERO)
    assert {s: r.job_id for s, r in rows.items()} == {
        s: (one["id"] if s == shopper("coffee_fan") else full["id"]) for s in ALL_SUBJECTS
    }


# --- the scheduler ------------------------------------------------------------------------------


def test_the_scheduler_fills_every_placement_then_makes_only_what_went_stale(
    settings: Settings, keys: dict[str, str]
) -> None:
    engine = ScriptedEngine([])
    scheduled = settings.model_copy(update={"pregenerate_every_s": 0.2})
    with serving(scheduled, engine) as client:

        def passes() -> list[dict[str, Any]]:
            listed = call(client, "GET", "/v1/jobs?limit=500", keys["admin"]).json()
            return [job for job in listed if job["created_by"] == "scheduler"]

        deadline = time.monotonic() + DEADLINE_S
        placements = PLACEMENTS.split(", ")
        while len([j for j in passes() if j["state"] == "succeeded"]) < 2 * len(placements):
            assert time.monotonic() < deadline, passes()
            time.sleep(0.05)
        jobs = sorted(passes(), key=lambda job: job["created_at"])
        # The first pass: one stale-only job per placement, one at a time.
        first = jobs[: len(placements)]
        assert sorted(job["placement"] for job in first) == placements
        assert all(job["stale_only"] and job["shoppers"] == "all" for job in first)
        assert all(job["total"] == TOTAL_ALL for job in first)  # nothing was stored yet
        later = [job for job in jobs[len(placements) :] if job["state"] == "succeeded"]
        # The tiny catalog has no added or restocked dates: nothing is new or back for
        # anyone, so those placements store nothing, and every pass looks again (a restock
        # shows at the next pass), making no banner and calling no model.
        empty = {"home_back_in_stock", "home_new_arrivals"}
        assert later and all(job["total"] == 0 for job in later if job["placement"] not in empty)
        again = [job for job in later if job["placement"] in empty]
        assert all(job["total"] == job["done"] == TOTAL_ALL for job in again)
        assert all(job["fallbacks"] == job["failures"] == 0 for job in again)
        for placement in placements:
            rows = stored_rows(settings.database, placement)
            assert len(rows) == (0 if placement in empty else TOTAL_ALL)
