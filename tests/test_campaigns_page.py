"""The studio's campaigns page (/studio/campaigns), through the real app on SQLite and on
PostgreSQL (``database_url``): a marketer lists, creates, edits and deletes campaigns with the
page's forms, and the API (``/v1/campaigns``, tests/test_campaigns.py) sees what they did.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from html import unescape
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from tests.fakes import wait_ready
from tests.test_api import _keys
from tests.test_studio import sign_in, start

Client = TestClient[Litestar]
PAGE = "/studio/campaigns"


class Studio:
    """A client signed in to the studio as the marketer, and the API keys."""

    def __init__(self, client: Client, keys: dict[str, str]) -> None:
        self.client = client
        self.keys = keys
        self.token = ""

    def sign_in(self) -> None:
        self.token = sign_in(self.client, self.keys["marketer"])

    def post(self, path: str, form: dict[str, str], **options: Any) -> Any:
        return self.client.post(path, data={**form, "_csrf_token": self.token}, **options)

    def api(self, method: str, path: str) -> Any:
        return self.client.request(method, path, headers={"X-API-Key": self.keys["marketer"]})

    def listed(self) -> list[dict[str, Any]]:
        answer = self.api("GET", "/v1/campaigns")
        assert answer.status_code == 200, answer.text
        return [c["campaign"] for c in answer.json()["campaigns"]]


@pytest.fixture
def studio(
    database_url: str,
    test_settings: Settings,
    tiny_catalog: Catalog,
    tiny_shoppers: ShopperStore,
) -> Iterator[Studio]:
    settings = test_settings.model_copy(update={"database_url": database_url})
    keys = asyncio.run(_keys(settings.database))
    with start(settings, tiny_catalog, tiny_shoppers) as client:
        wait_ready(client)
        yield Studio(client, keys)


def form(**changes: str) -> dict[str, str]:
    """The create form as a marketer fills it in (times typed as UTC, no zone)."""
    return {
        "id": "coffee_week",
        "name": "Coffee Week",
        "starts_at": "2020-01-01T09:00",
        "ends_at": "2099-01-01T18:30",
        "discount_percent": "15",
        "message": "",
        "products": "C1, C3",
        "categories": "Tea",
    } | changes


def row(html: str, campaign_id: str) -> str:
    """The table row of one campaign, as the page draws it."""
    start_at = html.index(f'<tr data-campaign="{campaign_id}"')
    return html[start_at : html.index("</tr>", start_at)]


def error_of(html: str) -> str:
    start_at = html.index('<div class="error" id="error">')
    return unescape(html[start_at : html.index("</div>", start_at)])


def test_the_page_needs_a_signed_in_marketer(studio: Studio) -> None:
    client = studio.client
    for path in (PAGE, f"{PAGE}/coffee_week"):
        anonymous = client.get(path, follow_redirects=False)
        assert anonymous.status_code in (302, 303), anonymous.text
        assert anonymous.headers["location"] == f"/studio/login?next={path}"
    studio.token = sign_in(client, studio.keys["marketer"])
    page = client.get(PAGE)
    assert page.status_code == 200, page.text
    assert 'id="nav-campaigns"' in page.text and 'id="empty"' in page.text
    assert 'name="_csrf_token"' in page.text and studio.token in page.text
    client.post("/studio/logout", data={"_csrf_token": studio.token})
    after = client.get(PAGE, follow_redirects=False)
    assert after.status_code in (302, 303) and after.headers["location"].startswith("/studio/login")


def test_a_marketer_creates_a_campaign_with_the_form(studio: Studio) -> None:
    studio.sign_in()
    made = studio.post(PAGE, form(), follow_redirects=False)
    assert made.status_code in (302, 303), made.text
    assert made.headers["location"].startswith(f"{PAGE}?notice=")
    page = studio.client.get(made.headers["location"])
    assert "Created campaign &#39;coffee_week&#39; (running)." in page.text
    shown = row(page.text, "coffee_week")
    for text in ("Coffee Week", "running", "2020-01-01 09:00", "2099-01-01 18:30", "15% off"):
        assert text in shown, shown
    assert "C1, C3" in shown and "Tea" in shown

    (stored,) = studio.listed()
    assert stored["id"] == "coffee_week" and stored["name"] == "Coffee Week"
    assert datetime.fromisoformat(stored["starts_at"]) == datetime(2020, 1, 1, 9, tzinfo=UTC)
    assert datetime.fromisoformat(stored["ends_at"]) == datetime(2099, 1, 1, 18, 30, tzinfo=UTC)
    assert stored["discount_percent"] == 15 and stored["message"] is None
    assert stored["products"] == ["C1", "C3"] and stored["categories"] == ["Tea"]
    audit = studio.api("GET", "/v1/audit").json()
    assert [(e["action"], e["actor"]) for e in audit if e["action"] == "campaign"] == [
        ("campaign", "test-marketer")
    ]


def test_the_edit_form_is_filled_in_and_changes_the_campaign(studio: Studio) -> None:
    studio.sign_in()
    assert studio.post(PAGE, form(), follow_redirects=False).status_code in (302, 303)
    page = studio.client.get(f"{PAGE}/coffee_week")
    assert page.status_code == 200, page.text
    html = page.text
    assert f'action="{PAGE}/coffee_week"' in html and 'name="id"' not in html
    for name, value in (
        ("name", "Coffee Week"),
        ("starts_at", "2020-01-01T09:00"),
        ("ends_at", "2099-01-01T18:30"),
        ("discount_percent", "15"),
        ("products", "C1, C3"),
        ("categories", "Tea"),
    ):
        assert f'name="{name}" id="field-{name}" value="{value}"' in html, name

    changed = studio.post(
        f"{PAGE}/coffee_week",
        form(
            name="Coffee Fortnight",
            discount_percent="",
            message="<b>Two</b> bags for one",
            products="C2",
            categories="",
            starts_at="2098-02-01T00:00",
        ),
        follow_redirects=False,
    )
    assert changed.status_code in (302, 303), changed.text
    listed = studio.client.get(changed.headers["location"]).text
    assert "Saved campaign &#39;coffee_week&#39; (planned)." in listed
    # What a marketer typed is shown as text, never as markup.
    assert "&lt;b&gt;Two&lt;/b&gt; bags for one" in row(listed, "coffee_week")
    assert "<b>Two</b>" not in listed
    (stored,) = studio.listed()
    assert stored["name"] == "Coffee Fortnight" and stored["discount_percent"] is None
    assert stored["message"] == "<b>Two</b> bags for one"
    assert stored["products"] == ["C2"] and stored["categories"] == []
    assert datetime.fromisoformat(stored["starts_at"]) == datetime(2098, 2, 1, tzinfo=UTC)


def test_delete_removes_the_campaign(studio: Studio) -> None:
    studio.sign_in()
    studio.post(PAGE, form(), follow_redirects=False)
    studio.post(PAGE, form(id="tea_days", name="Tea Days"), follow_redirects=False)
    assert [c["id"] for c in studio.listed()] == ["coffee_week", "tea_days"]
    gone = studio.post(f"{PAGE}/tea_days/delete", {}, follow_redirects=False)
    assert gone.status_code in (302, 303), gone.text
    page = studio.client.get(gone.headers["location"]).text
    assert "Deleted campaign &#39;tea_days&#39;." in page
    assert 'data-campaign="tea_days"' not in page and 'data-campaign="coffee_week"' in page
    assert [c["id"] for c in studio.listed()] == ["coffee_week"]
    assert studio.api("GET", "/v1/campaigns/tea_days").status_code == 404
    again = studio.post(f"{PAGE}/tea_days/delete", {})  # followed back to the page
    assert again.status_code == 200 and "Not deleted: no campaign &#39;tea_days&#39;" in again.text


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ends_at": "2019-12-31T09:00"}, "ends_at"),  # ends before it starts
        ({"products": "C1, NOPE"}, "products[1]"),
        ({"categories": "Spaceships"}, "categories[0]"),
        ({"id": "Coffee Week"}, "id"),
        ({"id": "x"}, "id"),
        ({"starts_at": ""}, "starts_at"),
        ({"starts_at": "next tuesday"}, "starts_at"),
        ({"discount_percent": "95"}, "discount_percent"),
        ({"discount_percent": "lots"}, "discount_percent"),
        ({"discount_percent": ""}, "message"),  # neither a discount nor a message
        ({"products": "", "categories": ""}, "categories"),  # covers nothing
        ({"name": "<b>Sale</b>"}, "name"),
    ],
)
def test_a_bad_form_is_a_400_naming_the_field_and_stores_nothing(
    studio: Studio, changes: dict[str, str], field: str
) -> None:
    studio.sign_in()
    typed = form(**changes)
    answer = studio.post(PAGE, typed)
    assert answer.status_code == 400, answer.text
    error = error_of(answer.text)
    assert "Not saved" in error and f"{field}: " in error, error
    # The form is drawn again as typed, the field at fault marked.
    html = answer.text
    for name in ("id", "name", "starts_at", "ends_at", "products", "categories"):
        assert f'id="field-{name}" value="{typed[name]}"' in unescape(html), name
    marked = field.split("[")[0]
    assert re.search(f'name="{marked}" id="field-{marked}" [^>]*class="(wide )?bad"', html)
    assert studio.listed() == []


def test_an_edit_with_a_bad_form_keeps_the_campaign_as_it_was(studio: Studio) -> None:
    studio.sign_in()
    studio.post(PAGE, form(), follow_redirects=False)
    refused = studio.post(f"{PAGE}/coffee_week", form(ends_at="2019-01-01T00:00", name="Later"))
    assert refused.status_code == 400, refused.text
    assert "ends_at: must be after starts_at" in error_of(refused.text)
    assert f'action="{PAGE}/coffee_week"' in refused.text  # still the edit form
    assert 'id="field-name" value="Later"' in refused.text
    (stored,) = studio.listed()
    assert stored["name"] == "Coffee Week"
    bad_id = studio.post(f"{PAGE}/Not%20An%20Id", form())
    assert bad_id.status_code == 400 and "id: " in error_of(bad_id.text)
    assert [c["id"] for c in studio.listed()] == ["coffee_week"]


def test_the_create_form_does_not_replace_a_campaign(studio: Studio) -> None:
    studio.sign_in()
    studio.post(PAGE, form(), follow_redirects=False)
    again = studio.post(PAGE, form(name="Other Week"))
    assert again.status_code == 400, again.text
    assert "id: a campaign 'coffee_week' exists already" in error_of(again.text)
    assert [c["name"] for c in studio.listed()] == ["Coffee Week"]


def test_an_unknown_campaign_is_a_404_page(studio: Studio) -> None:
    studio.sign_in()
    missing = studio.client.get(f"{PAGE}/nothing_here")
    assert missing.status_code == 404
    assert "no campaign 'nothing_here'" in error_of(missing.text)
    assert 'action="/studio/campaigns"' in missing.text  # the page, with its create form


def test_forms_without_a_csrf_token_are_refused(studio: Studio) -> None:
    studio.sign_in()
    assert studio.client.post(PAGE, data=form()).status_code == 403
    assert studio.post(PAGE, form(), follow_redirects=False).status_code in (302, 303)
    changed = studio.client.post(f"{PAGE}/coffee_week", data=form(name="Forged Week"))
    assert changed.status_code == 403
    deleted = studio.client.post(f"{PAGE}/coffee_week/delete", data={})
    assert deleted.status_code == 403
    forged = studio.client.post(PAGE, data={**form(id="other"), "_csrf_token": "forged"})
    assert forged.status_code == 403
    assert [(c["id"], c["name"]) for c in studio.listed()] == [("coffee_week", "Coffee Week")]
    assert json.loads(studio.api("GET", "/v1/campaigns").text)["campaigns"][0]["status"] == (
        "running"
    )
