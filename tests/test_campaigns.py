"""Campaigns: what copy may say about a running sale, and only about the products it covers.

The book and the guards are tested on the tiny catalog; the API on SQLite and PostgreSQL,
through the real app with a scripted engine; a banner that names a campaign goes stale when it
ends (the freshness rules the read path and the planner share).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from pydantic import ValidationError

from app.campaigns import Campaign, CampaignBook
from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.domain import Candidate, CandidateScores
from app.generation.schemas import SCHEMAS, output_model
from app.guards import Guards
from app.pipeline import BannerRequest
from app.pregeneration.freshness import Current, inputs_of, stale_reasons
from app.server.app import create_app
from tests.fakes import GOOD, ScriptedEngine, make_pipeline, wait_ready
from tests.test_api import _keys

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
DAY = timedelta(days=1)


def campaign(**changes: Any) -> Campaign:
    fields: dict[str, Any] = {
        "id": "coffee_week",
        "name": "Coffee Week",
        "starts_at": NOW - DAY,
        "ends_at": NOW + DAY,
        "message": "Big coffee sale",
        "categories": ("Coffee",),
    }
    return Campaign(**(fields | changes))


def candidates_of(catalog: Catalog, ids: list[str]) -> list[Candidate]:
    products = [catalog.products[catalog.row(pid)] for pid in ids]
    return [
        Candidate(number=i + 1, product=p, scores=CandidateScores(), source="semantic")
        for i, p in enumerate(products)
    ]


# --- the campaign and the book ----------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ends_at": NOW - 2 * DAY}, "must be after starts_at"),
        ({"message": None}, "discount_percent or a message"),
        ({"categories": ()}, "covers products or categories"),
        ({"discount_percent": 95}, "less than or equal to 90"),
        ({"name": "<b>Sale</b>"}, "should match pattern"),
    ],
)
def test_a_campaign_that_cannot_be_true_is_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        campaign(**changes)


def test_the_book_gives_the_running_campaigns_that_cover_a_candidate(
    tiny_catalog: Catalog,
) -> None:
    book = CampaignBook.of(
        [
            campaign(),
            campaign(id="ended", name="Last Week", starts_at=NOW - 9 * DAY, ends_at=NOW - DAY),
            campaign(id="planned", name="Next Week", starts_at=NOW + DAY, ends_at=NOW + 9 * DAY),
            campaign(id="tents", name="Tent Days", categories=(), products=("K1",)),
            campaign(id="grinder", name="Grinder Deal", categories=(), products=("C1",)),
        ]
    )
    coffee = [tiny_catalog.get("C1"), tiny_catalog.get("C2")]
    found = book.covering(coffee, NOW)  # type: ignore[arg-type]
    # Both coffee products are covered by Coffee Week, one by the grinder deal.
    assert [c.id for c in found] == ["coffee_week", "grinder"]
    assert book.covering([tiny_catalog.get("K1")], NOW + 2 * DAY) == []  # type: ignore[list-item]
    assert [c.id for c in book.named_in("Join our coffee  week now")] == ["coffee_week"]
    assert book.named_in("coffee weekend") == []  # whole words only


# --- the guards -------------------------------------------------------------------------

SPEC = SCHEMAS["banner"]
COPY = output_model("banner", 4, False)
DIGITS = output_model("banner", 4, True)


def check(catalog: Catalog, answer: dict[str, Any], book: CampaignBook, digits: bool = False):
    schema = DIGITS if digits else COPY
    text = schema.model_validate(answer).model_dump_json()
    candidates = candidates_of(catalog, ["C1", "C2", "K1", "K2"])
    return Guards([]).check(text, schema, SPEC, candidates, [], campaigns=book, now=NOW)


def test_copy_may_name_a_running_campaign_on_a_shown_product(tiny_catalog: Catalog) -> None:
    book = CampaignBook.of([campaign()])
    named = dict(GOOD, headline="Coffee Week is on", subheadline="A big coffee sale on a grinder.")
    verdict = check(tiny_catalog, named, book)  # products [1, 2]: the grinder and the kettle
    assert verdict.ok, verdict.problems
    assert [c.id for c in verdict.campaigns] == ["coffee_week"]
    # Without the campaign the same copy claims a sale the catalog does not state.
    refused = check(tiny_catalog, named, CampaignBook())
    assert any(p.startswith("invented_offer") for p in refused.problems)


def test_copy_about_an_ended_or_unrelated_campaign_is_refused(tiny_catalog: Catalog) -> None:
    ended = campaign(starts_at=NOW - 9 * DAY, ends_at=NOW - DAY)
    named = dict(GOOD, headline="Coffee Week is on")
    verdict = check(tiny_catalog, named, CampaignBook.of([ended]))
    assert "campaign_not_running: headline: 'Coffee Week'" in verdict.problems
    # Running, but the banner shows the tent and the headlamp (3, 4), which it does not cover.
    on_tents = dict(named, products=[3, 4], subheadline="A tent and a headlamp.")
    verdict = check(tiny_catalog, on_tents, CampaignBook.of([campaign()]))
    assert "campaign_not_shown: headline: 'Coffee Week'" in verdict.problems


def test_a_discount_is_a_fact_only_where_its_campaign_applies(tiny_catalog: Catalog) -> None:
    book = CampaignBook.of([campaign(discount_percent=20, message=None)])
    percent = dict(GOOD, headline="Coffee Week: 20% off")
    assert check(tiny_catalog, percent, book, digits=True).ok
    on_tents = dict(percent, products=[3, 4], headline="Tents at 20% off")
    problems = check(tiny_catalog, on_tents, book, digits=True).problems
    assert "invented_number: headline: '20' is not in the catalog" in problems


# --- in the pipeline --------------------------------------------------------------------


def test_the_prompt_lists_the_running_offers_and_the_banner_names_the_campaign(
    tiny_catalog: Catalog, tiny_shoppers: ShopperStore, test_settings: Settings
) -> None:
    named = dict(GOOD, headline="Coffee Week is here", subheadline="A big coffee sale for you.")
    engine = ScriptedEngine([named])
    pipeline = make_pipeline(engine, tiny_catalog, tiny_shoppers, test_settings)
    now = datetime.now(UTC)
    running = campaign(starts_at=now - DAY, ends_at=now + DAY)
    pipeline.use_campaigns(CampaignBook.of([running]))
    prepared = pipeline.prepare(BannerRequest(shopper_id="coffee_fan"))
    assert [c.id for c in prepared.campaigns] == ["coffee_week"]
    covered = [c.number for c in prepared.selection.candidates if c.product.category == "Coffee"]
    user = prepared.prompt.messages[-1][1]  # type: ignore[union-attr]
    assert "<offers>" in user
    assert f"Coffee Week: Big coffee sale (products {', '.join(map(str, covered))})" in user
    (banner,) = asyncio.run(pipeline.complete(prepared))
    assert not banner.fallback
    assert [(c.id, c.ends_at) for c in banner.campaigns] == [("coffee_week", running.ends_at)]

    # No campaign: no offers block at all, and the prompt is as it was.
    pipeline.use_campaigns(CampaignBook())
    plain = pipeline.prepare(BannerRequest(shopper_id="coffee_fan")).prompt
    assert "offers" not in plain.messages[-1][1]  # type: ignore[union-attr]
    assert "</products>\n\nWrite" in plain.messages[-1][1]  # type: ignore[union-attr]


def test_a_banner_naming_a_campaign_goes_stale_when_it_ends(
    tiny_catalog: Catalog, tiny_shoppers: ShopperStore, test_settings: Settings
) -> None:
    named = dict(GOOD, headline="Coffee Week is here", subheadline="A big coffee sale for you.")
    pipeline = make_pipeline(ScriptedEngine([named]), tiny_catalog, tiny_shoppers, test_settings)
    now = datetime.now(UTC)
    pipeline.use_campaigns(CampaignBook.of([campaign(starts_at=now - DAY, ends_at=now + DAY)]))
    (banner,) = asyncio.run(pipeline.generate(BannerRequest(shopper_id="coffee_fan")))
    inputs = inputs_of(banner, "v1", tiny_catalog)
    current = Current("v1", banner.template_version, banner.template_label, banner.model)
    assert stale_reasons(inputs, now, current, tiny_catalog, now, 0) == []
    later = now + 2 * DAY
    assert stale_reasons(inputs, now, current, tiny_catalog, later, 0) == [
        "campaign coffee_week ended"
    ]


# --- the API ----------------------------------------------------------------------------

Client = TestClient[Litestar]


@pytest.fixture
def api(
    database_url: str,
    tiny_catalog: Catalog,
    tiny_shoppers: ShopperStore,
    test_settings: Settings,
) -> Iterator[tuple[Client, dict[str, str], ScriptedEngine]]:
    settings = test_settings.model_copy(update={"database_url": database_url})
    keys = asyncio.run(_keys(settings.database))
    named = dict(GOOD, headline="Coffee Week is here", subheadline="A big coffee sale for you.")
    engine = ScriptedEngine([named] * 20)
    app = create_app(settings, lambda s: make_pipeline(engine, tiny_catalog, tiny_shoppers, s))
    with TestClient(app) as client:
        wait_ready(client)
        yield client, keys, engine


def send(client: Client, method: str, path: str, key: str, body: object = None) -> Any:
    return client.request(
        method,
        path,
        content=None if body is None else json.dumps(body, default=str),
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )


def body(**changes: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "name": "Coffee Week",
        "starts_at": (now - DAY).isoformat(),
        "ends_at": (now + DAY).isoformat(),
        "message": "Big coffee sale",
        "categories": ["coffee"],
    } | changes


def test_marketers_create_list_change_and_delete_campaigns(api) -> None:
    client, keys, _ = api
    marketer = keys["marketer"]
    made = send(client, "PUT", "/v1/campaigns/coffee_week", marketer, body())
    assert made.status_code == 201, made.text
    assert made.json()["status"] == "running" and made.json()["updated"] is False
    later = datetime.now(UTC) + 3 * DAY
    planned = body(
        name="Tent Days",
        products=["K1"],
        categories=[],
        discount_percent=15,
        starts_at=later.isoformat(),
        ends_at=(later + DAY).isoformat(),
    )
    assert send(client, "PUT", "/v1/campaigns/tents", marketer, planned).status_code == 201
    changed = send(
        client, "PUT", "/v1/campaigns/coffee_week", marketer, body(message="Two for one")
    )
    assert changed.status_code == 200 and changed.json()["updated"] is True
    listed = send(client, "GET", "/v1/campaigns", marketer).json()["campaigns"]
    assert [(c["campaign"]["id"], c["status"]) for c in listed] == [
        ("coffee_week", "running"),
        ("tents", "planned"),
    ]
    assert listed[0]["campaign"]["message"] == "Two for one"
    # Every change is in the audit trail, by the key that made it.
    audit = send(client, "GET", "/v1/audit", marketer).json()
    mine = [e for e in audit if e["action"] in {"campaign", "delete_campaign"}]
    assert len(mine) == 3 and {e["actor"] for e in mine} == {"test-marketer"}
    assert send(client, "DELETE", "/v1/campaigns/tents", marketer).status_code == 204
    assert send(client, "GET", "/v1/campaigns/tents", marketer).status_code == 404
    assert send(client, "DELETE", "/v1/campaigns/tents", marketer).status_code == 404
    # A CMS key reads banners; it does not run sales.
    assert send(client, "PUT", "/v1/campaigns/x1", keys["cms"], body()).status_code == 403


def test_a_saved_campaign_reaches_the_next_banner_at_once(api) -> None:
    client, keys, engine = api
    send(client, "PUT", "/v1/campaigns/coffee_week", keys["marketer"], body())
    made = send(client, "POST", "/v1/banners", keys["cms"], {"shopper_id": "coffee_fan"})
    assert made.status_code == 200, made.text
    (banner,) = made.json()["banners"]
    assert not banner["fallback"] and [c["id"] for c in banner["campaigns"]] == ["coffee_week"]
    assert "Coffee Week: Big coffee sale" in engine.requests[-1].messages[-1][1]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"products": ["C1", "NOPE"]}, "products[1]"),
        ({"categories": ["Coffee", "Spaceships"]}, "categories[1]"),
        ({"ends_at": "2020-01-01T00:00:00+00:00"}, "ends_at"),
        ({"message": None}, "message"),
        ({"categories": []}, "categories"),
        ({"starts_at": "2026-12-01T00:00:00"}, "starts_at"),  # no time zone
        ({"discount_percent": 0}, "discount_percent"),
        ({"name": "x" * 61}, "name"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_campaigns_get_a_400_naming_the_field_and_store_nothing(
    api, changes: dict[str, Any], field: str
) -> None:
    client, keys, _ = api
    answer = send(client, "PUT", "/v1/campaigns/bad", keys["marketer"], body(**changes))
    assert answer.status_code == 400, answer.text
    problem = answer.json()
    assert problem["type"] == "urn:marquee:problem:invalid-request"
    assert any(field in error["field"] for error in problem["errors"]), problem
    assert send(client, "GET", "/v1/campaigns/bad", keys["marketer"]).status_code == 404
