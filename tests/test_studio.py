"""The template studio over HTTP: versions, lint, labels, previews, splits, feedback.

A real SQLite database under the app; the scripted engine stands in for the model (previews
with the real model run in tests/integration).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from pydantic import SecretStr

from app.catalog.store import Catalog, ShopperStore
from app.config import PROJECT_ROOT, Settings
from app.prompting.templates import PRODUCTION, Split, load_brand
from app.server.app import create_app
from app.store.db import Database
from app.store.repositories import ApiKeyStore
from app.store.templates import Conflict, TemplateStore
from tests.fakes import GOOD, ScriptedEngine, make_pipeline, wait_ready
from tests.test_api import _keys

Client = TestClient[Litestar]
HERO = (PROJECT_ROOT / "prompts" / "hero_banner.j2").read_text()
HERO_LINES = HERO.splitlines()
LAST_LINE = len(HERO_LINES)


def edited(extra: str) -> str:
    """The hero template with one more line at the end of its body."""
    return HERO.rstrip("\n") + "\n" + extra + "\n"


@pytest.fixture
def studio_settings(database_url: str, test_settings: Settings) -> Settings:
    return test_settings.model_copy(update={"database_url": database_url})


def start(settings: Settings, catalog: Catalog, shoppers: ShopperStore) -> Any:
    engine = ScriptedEngine([GOOD] * 200)
    app = create_app(settings, lambda s: make_pipeline(engine, catalog, shoppers, s))
    return TestClient(app)


@pytest.fixture
def studio(
    studio_settings: Settings, tiny_catalog: Catalog, tiny_shoppers: ShopperStore
) -> Iterator[tuple[Client, dict[str, str]]]:
    keys = asyncio.run(_keys(studio_settings.database))
    with start(studio_settings, tiny_catalog, tiny_shoppers) as client:
        wait_ready(client)
        yield client, keys


def call(
    client: Client, method: str, path: str, key: str, body: object = None, **headers: str
) -> Any:
    return client.request(
        method,
        path,
        content=None if body is None else json.dumps(body),
        headers={"X-API-Key": key, "Content-Type": "application/json", **headers},
    )


def save(client: Client, key: str, source: str, base: int | None, **extra: object) -> Any:
    body = {"source": source, "message": "edit", **extra}
    headers = {"If-Match": f'"{base}"'} if base else {}
    return call(client, "POST", "/v1/templates/hero_banner/versions", key, body, **headers)


def test_templates_are_seeded_from_the_prompts_folder(studio) -> None:
    client, keys = studio
    listed = call(client, "GET", "/v1/templates", keys["cms"]).json()
    assert [t["name"] for t in listed] == [
        "back_in_stock",
        "because_you_viewed",
        "brand",  # the brand rules (tests/test_brand_rules.py)
        "brand_showcase",
        "category_spotlight",
        "grid_heading",
        "hero_banner",
        "new_arrivals",
    ]
    assert all(t["labels"] == {"production": 1} and t["latest"] == 1 for t in listed)
    version = call(client, "GET", "/v1/templates/hero_banner/versions/1", keys["marketer"])
    assert version.json()["source"] == HERO and version.json()["labels"] == ["production"]
    assert version.headers["ETag"] == '"1"'


def test_saves_add_versions_and_a_stale_writer_gets_409(studio) -> None:
    client, keys = studio
    first = save(client, keys["marketer"], edited("Keep it short."), base=1)
    assert first.status_code == 201, first.text
    assert first.json()["version"] == 2 and first.json()["author"] == "test-marketer"
    stale = save(client, keys["marketer"], edited("Keep it warm."), base=1)
    assert stale.status_code == 409
    assert stale.json()["current_version"] == 2
    detail = call(client, "GET", "/v1/templates/hero_banner", keys["cms"]).json()
    assert [v["version"] for v in detail["versions"]] == [2, 1]
    assert detail["labels"] == {"production": 1}  # saving publishes nothing
    assert (
        call(client, "GET", "/v1/templates/hero_banner/versions/1", keys["cms"]).json()["source"]
        == HERO
    )  # the original is untouched


@pytest.mark.parametrize(
    ("extra", "line", "words"),
    [
        ("{{ shoper.name }}", LAST_LINE + 1, "unknown variable 'shoper'"),
        ("{% if %}", LAST_LINE + 1, "syntax error"),
        ("{% if false %}{{ ''.__class__.__mro__ }}{% endif %}", LAST_LINE + 1, "__class__"),
        ("{{ candidates | attr('__class__') }}", LAST_LINE + 1, "__class__"),
        ("{{ shopper.nickname }}", LAST_LINE + 1, "nickname"),
    ],
)
def test_a_template_failing_lint_is_not_saved(studio, extra: str, line: int, words: str) -> None:
    client, keys = studio
    response = save(client, keys["marketer"], edited(extra), base=1)
    assert response.status_code == 422, response.text
    problems = response.json()["errors"]
    assert any(p["line"] == line and words in p["message"] for p in problems), problems
    detail = call(client, "GET", "/v1/templates/hero_banner", keys["cms"]).json()
    assert [v["version"] for v in detail["versions"]] == [1]


def test_header_problems_are_reported(studio) -> None:
    client, keys = studio
    response = save(client, keys["marketer"], HERO.replace("k: 6", "k: 99"), base=1)
    assert response.status_code == 422 and "'k'" in json.dumps(response.json()["errors"])
    renamed = save(client, keys["marketer"], HERO.replace("name: hero_banner", "name: other"), 1)
    assert renamed.status_code == 422 and "header name" in renamed.text


def test_drafts_keep_broken_work_but_can_never_be_labelled(studio) -> None:
    client, keys = studio
    draft = save(client, keys["marketer"], edited("{{ shoper }}"), base=1, draft=True)
    assert draft.status_code == 201 and draft.json()["draft"] is True
    assert draft.json()["problems"][0]["line"] == LAST_LINE + 1
    moved = call(
        client,
        "PUT",
        "/v1/templates/hero_banner/labels/production",
        keys["marketer"],
        {"version": 2},
    )
    assert moved.status_code == 422 and "draft" in moved.text


def test_publish_serves_the_new_version_and_rollback_restores_it(studio) -> None:
    client, keys = studio
    assert save(client, keys["marketer"], edited("Keep it short."), base=1).status_code == 201

    def served() -> tuple[int, str]:
        body = {"shopper_id": "coffee_fan", "filters": {"exclude_products": ["Y1"]}}
        banner = call(client, "POST", "/v1/banners", keys["cms"], body).json()["banners"][0]
        return banner["template_version"], banner["template_label"]

    assert served() == (1, "production")
    published = call(
        client,
        "PUT",
        "/v1/templates/hero_banner/labels/production",
        keys["marketer"],
        {"version": 2},
    )
    assert published.json() == {
        "name": "hero_banner",
        "label": "production",
        "version": 2,
        "previous": 1,
    }
    assert served() == (2, "production")  # not the cached v1 answer: the version is in the key
    rollback = call(
        client,
        "PUT",
        "/v1/templates/hero_banner/labels/production",
        keys["marketer"],
        {"version": 1},
        **{"If-Match": '"2"'},
    )
    assert rollback.status_code == 200
    assert served() == (1, "production")
    stale = call(
        client,
        "PUT",
        "/v1/templates/hero_banner/labels/production",
        keys["marketer"],
        {"version": 2},
        **{"If-Match": '"2"'},
    )
    assert stale.status_code == 409 and stale.json()["current_version"] == 1

    audit = call(client, "GET", "/v1/audit?template=hero_banner", keys["cms"]).json()
    actions = [(a["action"], a["detail"].get("to")) for a in audit]
    assert actions[:3] == [("move_label", 1), ("move_label", 2), ("save", None)]
    assert all(a["actor"] == "test-marketer" for a in audit[:3])


def test_writes_need_the_marketer_scope(studio) -> None:
    client, keys = studio
    assert save(client, keys["cms"], edited("x"), base=1).status_code == 403
    move = call(
        client, "PUT", "/v1/templates/hero_banner/labels/staging", keys["cms"], {"version": 1}
    )
    assert move.status_code == 403
    assert call(client, "GET", "/v1/templates", keys["marketer"]).status_code == 200


def test_preview_renders_for_a_shopper_and_generates(studio) -> None:
    client, keys = studio
    body = {"shopper_id": "coffee_fan", "generate": 2}
    preview = call(client, "POST", "/v1/templates/hero_banner/preview", keys["marketer"], body)
    assert preview.status_code == 200, preview.text
    out = preview.json()
    user_turns = [m["content"] for m in out["messages"] if m["role"] == "user"]
    assert "coffee" in user_turns[-1].lower()  # the shopper's interests reached the prompt
    assert len(out["banners"]) == 2 and out["version"] == 1

    unsaved = {"shopper_id": "runner", "source": edited("{{ shopper.nickname }}")}
    broken = call(client, "POST", "/v1/templates/hero_banner/preview", keys["marketer"], unsaved)
    assert broken.status_code == 200 and broken.json()["messages"] == []
    assert "nickname" in broken.json()["problems"][0]["message"]

    trial = {"source": edited("Mention {{ shopper.segment }}."), "shopper_id": "runner"}
    tried = call(client, "POST", "/v1/templates/hero_banner/preview", keys["marketer"], trial)
    assert "Mention sporty." in tried.json()["messages"][-1]["content"]
    assert (
        call(client, "GET", "/v1/templates/hero_banner", keys["cms"]).json()["versions"][0][
            "version"
        ]
        == 1
    )  # a preview saves nothing


def test_previews_that_generate_take_a_generation_slot(studio) -> None:
    client, keys = studio
    limit = client.app.state.services.limit
    limit.current = limit.limit  # every slot taken
    try:
        path = "/v1/templates/hero_banner/preview"
        rendering = call(client, "POST", path, keys["marketer"], {"shopper_id": "runner"})
        body = {"shopper_id": "runner", "generate": 1}
        generating = call(client, "POST", path, keys["marketer"], body)
        token = sign_in(client, keys["marketer"])
        form = {"source": HERO, "action": "preview", "generate": "1", "_csrf_token": token}
        page = client.post("/studio/templates/hero_banner", data=form)
    finally:
        limit.current = 0
    assert rendering.status_code == 200  # rendering alone needs no slot
    assert generating.status_code == 503
    assert generating.json()["type"] == "urn:marquee:problem:busy"
    assert page.status_code == 503 and "No preview" in page.text


def test_a_best_of_n_preview_shows_each_samples_scores(studio) -> None:
    client, keys = studio
    token = sign_in(client, keys["marketer"])
    source = HERO.replace("schema: banner", "schema: banner\nbest_of: 3", 1)
    form = {
        "source": source,
        "action": "preview",
        "generate": "1",
        "shopper_id": "coffee_fan",
        "_csrf_token": token,
    }
    page = client.post("/studio/templates/hero_banner", data=form)
    assert page.status_code == 200, page.text
    assert "scores: 3 of 3 samples passed the guards" in page.text
    assert page.text.count('class="chosen"') == 1 and "(served)" in page.text
    parts = ("personal", "relevance", "vs catalog", "theme", "novelty", "length", "soft findings")
    for part in parts:
        assert f"<th>{part}</th>" in page.text
    # The hero is themed: the preview says what it is about and why.
    assert "theme: <b>Coffee</b> (what they looked at lately)" in page.text
    # And whether a marketer would publish the served copy as written (app/rubric.py).
    assert re.search(
        r'class="meta findings">(publishable as written|would not publish as written: \w+)',
        page.text,
    )


def test_the_page_refuses_a_label_the_api_would_refuse(studio) -> None:
    client, keys = studio
    token = sign_in(client, keys["marketer"])
    for label in ("BAD LABEL", "x", "Production"):
        form = {"version": "1", "label": label, "expected": "0", "_csrf_token": token}
        page = client.post("/studio/templates/hero_banner/label", data=form)
        assert page.status_code == 400, label
    labels = call(client, "GET", "/v1/templates/hero_banner", keys["cms"]).json()["labels"]
    assert labels == {"production": 1}


def test_page_forms_with_impossible_versions_are_refused_not_a_500(studio) -> None:
    client, keys = studio
    token = sign_in(client, keys["marketer"])
    huge = str(2**70)
    label = {"version": huge, "label": "candidate", "expected": "0", "_csrf_token": token}
    assert client.post("/studio/templates/hero_banner/label", data=label).status_code == 400
    save = {"source": HERO, "base_version": huge, "_csrf_token": token}
    assert client.post("/studio/templates/hero_banner", data=save).status_code == 400
    assert client.get(f"/studio/templates/hero_banner?diff={huge}").status_code == 200  # shown


def sign_in(client: Client, key: str) -> str:
    """Sign in to the studio's pages; the CSRF token the forms need."""
    page = client.get("/studio/login")
    token: str = page.text.split('name="_csrf_token" value="')[1].split('"')[0]
    signed = client.post(
        "/studio/login", data={"key": key, "_csrf_token": token}, follow_redirects=False
    )
    assert signed.status_code in (302, 303)
    return token


def test_diff_and_file_round_trip(studio) -> None:
    client, keys = studio
    save(client, keys["marketer"], edited("Keep it short."), base=1)
    diff = call(
        client, "GET", "/v1/templates/hero_banner/diff?from_version=1&to_version=2", keys["cms"]
    ).json()["diff"]
    added = [
        line for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")
    ]
    assert added == ["+Keep it short."]
    exported = client.get(
        "/v1/templates/hero_banner/versions/2/file", headers={"X-API-Key": keys["cms"]}
    )
    assert exported.headers["content-type"].startswith("text/plain")
    imported = client.post(
        "/v1/templates/hero_banner/import?message=restore",
        content=exported.text.encode(),
        headers={"X-API-Key": keys["marketer"], "Content-Type": "text/plain"},
    )
    assert imported.status_code == 201, imported.text
    assert imported.json()["version"] == 3
    versions = call(client, "GET", "/v1/templates/hero_banner", keys["cms"]).json()["versions"]
    assert imported.json()["content_hash"] == versions[1]["content_hash"]  # same text as v2
    assert imported.json()["message"] == "restore"


def test_split_feedback_and_experiment_read_out(studio) -> None:
    client, keys = studio
    marketer, cms = keys["marketer"], keys["cms"]
    save(client, marketer, edited("Keep it short."), base=1)
    call(client, "PUT", "/v1/templates/hero_banner/labels/variant_b", marketer, {"version": 2})
    split = {"template": "hero_banner", "variant": "variant_b", "variant_weight": 0.5}
    started = call(client, "PUT", "/v1/experiments/home_hero", marketer, split)
    assert started.status_code == 200, started.text

    arms: Counter[str] = Counter()
    banners = {}
    for i in range(40):
        shopper = f"shopper{i}"
        banner = call(client, "POST", "/v1/banners", cms, {"shopper_id": shopper}).json()
        banner = banner["banners"][0]
        arms[banner["template_label"]] += 1
        assert banner["template_version"] == (2 if banner["template_label"] == "variant_b" else 1)
        again = call(client, "POST", "/v1/banners", cms, {"shopper_id": shopper}).json()
        assert again["banners"][0]["template_label"] == banner["template_label"]  # stable
        banners[shopper] = banner
    assert set(arms) == {"production", "variant_b"} and min(arms.values()) >= 10

    # Each banner shown five times: ~100 impressions an arm, enough for the always-valid test
    # to call a 100 % against 25 % click rate (20 an arm are not).
    for i, banner in enumerate(banners.values()):
        path = f"/v1/banners/{banner['id']}/feedback"
        for view in range(5):
            event = {"event_id": f"imp-{i}-{view}", "kind": "impression"}
            assert call(client, "POST", path, cms, event)
            if banner["template_label"] == "variant_b" or (i + view) % 4 == 0:
                call(client, "POST", path, cms, {"event_id": f"clk-{i}-{view}", "kind": "click"})
    repeat = call(
        client,
        "POST",
        f"/v1/banners/{banners['shopper0']['id']}/feedback",
        cms,
        {"event_id": "imp-0-0", "kind": "impression"},
    )
    assert repeat.status_code == 202 and repeat.json()["recorded"] is False

    report = call(client, "GET", "/v1/experiments/home_hero", marketer).json()
    by_label = {arm["label"]: arm for arm in report["arms"]}
    assert by_label["variant_b"]["impressions"] == 5 * arms["variant_b"]
    assert by_label["production"]["impressions"] == 5 * arms["production"]
    assert by_label["variant_b"]["ctr"]["value"] == 1.0
    low, high = by_label["production"]["ctr"]["low"], by_label["production"]["ctr"]["high"]
    assert 0.0 <= low < by_label["production"]["ctr"]["value"] < high <= 1.0
    assert report["ctr_verdict"] == "variant wins"
    # Beside the verdict: its always-valid p-value and the bandit's P(variant better).
    assert report["ctr_p_value"] < 0.05 and report["variant_better"] > 0.99

    bad = call(client, "PUT", "/v1/experiments/home_hero", marketer, dict(split, variant="nope"))
    assert bad.status_code == 404 and "nope" in bad.text
    wrong = call(client, "PUT", "/v1/experiments/home_grid", marketer, split)
    assert wrong.status_code == 422
    assert call(client, "DELETE", "/v1/experiments/home_hero", marketer).status_code == 204
    after = call(client, "POST", "/v1/banners", cms, {"shopper_id": "someone-else"}).json()
    assert after["banners"][0]["template_label"] == "production"


def test_a_thompson_experiment_moves_its_weight_towards_the_arm_that_is_clicked(studio) -> None:
    """The bandit sets the weight when a period ends, from the clicks so far, once: a second
    replica that read the same split before the move writes nothing."""
    client, keys = studio
    marketer, cms = keys["marketer"], keys["cms"]
    save(client, marketer, edited("Keep it short."), base=1)
    call(client, "PUT", "/v1/templates/hero_banner/labels/variant_b", marketer, {"version": 2})
    bandit = {"template": "hero_banner", "variant": "variant_b", "strategy": "thompson"}
    started = call(client, "PUT", "/v1/experiments/home_hero", marketer, bandit | {"period_s": 60})
    assert started.status_code == 200, started.text
    services = client.app.state.services
    split = services.studio.pipeline.templates.splits["home_hero"]
    assert (split.strategy, split.variant_weight, split.min_share) == ("thompson", 0.5, 0.1)
    assert client.blocking_portal.call(services.studio.move_bandits) == []  # not due yet

    for i in range(60):
        banner = call(client, "POST", "/v1/banners", cms, {"shopper_id": f"b{i}"}).json()
        banner = banner["banners"][0]
        path = f"/v1/banners/{banner['id']}/feedback"
        call(client, "POST", path, cms, {"event_id": f"i{i}", "kind": "impression"})
        if banner["template_label"] == "variant_b" or i % 5 == 0:
            call(client, "POST", path, cms, {"event_id": f"c{i}", "kind": "click"})

    later = datetime.now(UTC) + timedelta(minutes=2)
    moved = client.blocking_portal.call(services.studio.move_bandits, later)
    assert moved == ["home_hero"]
    now_split = services.studio.pipeline.templates.splits["home_hero"]
    assert now_split.variant_weight == 0.9  # all but certain: the cap keeps 10 % exploring
    assert now_split.since is not None and now_split.since > split.since
    stale = client.blocking_portal.call(services.studio.store.move_bandit, "home_hero", split, 0.2)
    assert stale is False  # another replica's late write: refused
    assert services.studio.pipeline.templates.splits["home_hero"].variant_weight == 0.9
    audit = call(client, "GET", "/v1/audit", marketer).json()
    assert any(entry["actor"] == "bandit" and entry["action"] == "bandit" for entry in audit)
    report = call(client, "GET", "/v1/experiments/home_hero", marketer).json()
    assert report["split"]["strategy"] == "thompson"
    sign_in(client, marketer)
    page = client.get("/studio/templates/hero_banner").text
    assert "90% to the variant, set by Thompson sampling from clicks every 1 min" in page

    bad = call(client, "PUT", "/v1/experiments/home_hero", marketer, bandit | {"min_share": 0.7})
    assert bad.status_code == 400 and "min_share" in bad.text


def test_feedback_on_an_unknown_banner_is_404(studio) -> None:
    client, keys = studio
    body = {"event_id": "e1", "kind": "click"}
    assert (
        call(client, "POST", "/v1/banners/bnr_nope/feedback", keys["cms"], body).status_code == 404
    )
    bad = call(client, "POST", "/v1/banners/bnr_nope/feedback", keys["cms"], {"kind": "like"})
    assert bad.status_code == 400


def test_history_and_labels_survive_a_restart(
    studio_settings: Settings, tiny_catalog: Catalog, tiny_shoppers: ShopperStore
) -> None:
    keys = asyncio.run(_keys(studio_settings.database))
    with start(studio_settings, tiny_catalog, tiny_shoppers) as client:
        wait_ready(client)
        save(client, keys["marketer"], edited("Keep it short."), base=1)
        call(
            client,
            "PUT",
            "/v1/templates/hero_banner/labels/production",
            keys["marketer"],
            {"version": 2},
        )
    with start(studio_settings, tiny_catalog, tiny_shoppers) as client:
        wait_ready(client)
        detail = call(client, "GET", "/v1/templates/hero_banner", keys["cms"]).json()
        assert [v["version"] for v in detail["versions"]] == [2, 1]
        assert detail["labels"] == {"production": 2}
        banner = call(client, "POST", "/v1/banners", keys["cms"], {"shopper_id": "runner"})
        assert banner.json()["banners"][0]["template_version"] == 2


# --- the store under concurrency -------------------------------------------------------------


async def _store(settings: Settings) -> TemplateStore:
    db = Database(settings.database)
    await db.upgrade()
    store = TemplateStore(db)
    await store.seed(PROJECT_ROOT / "prompts")
    return store


async def test_replicas_starting_together_seed_each_template_once(
    studio_settings: Settings,
) -> None:
    """Two processes' stores (each its own connections and locks) seed one database at once."""
    first, second = Database(studio_settings.database), Database(studio_settings.database)
    await first.upgrade()
    one, two = TemplateStore(first), TemplateStore(second)
    seeded = await asyncio.gather(*(s.seed(PROJECT_ROOT / "prompts") for s in (one, two)))
    names = sorted(await one.names())
    assert sorted(seeded[0] + seeded[1]) == names  # each seeded by exactly one of them
    labels = await two.labels()
    for name in names:
        assert await one.latest(name) == 1 and labels[name][PRODUCTION] == 1
    moves = [e for e in await one.audit() if e.action == "move_label"]
    assert len(moves) == len(names)
    await first.dispose()
    await second.dispose()


async def test_a_version_saved_before_the_copy_rules_still_serves(
    studio_settings: Settings,
) -> None:
    """A production version whose example says "Save 20" (saved when copy could hold digits)
    still loads into the registry the service serves from; the grammar now keeps digits out."""
    store = await _store(studio_settings)
    old = HERO.replace('cta: "Shop camping"', 'cta: "Save 20 on camping"')
    assert old != HERO
    await store.save(
        "hero_banner",
        old,
        author="a",
        message="m",
        draft=False,
        expected_latest=1,
        label=PRODUCTION,
    )
    registry = await store.registry(load_brand(PROJECT_ROOT / "prompts"))
    served = registry.get("hero_banner")
    assert served.version == 2 and served.example_outputs[0]["cta"] == "Save 20 on camping"
    assert "0-9" in served.output_model.model_json_schema()["properties"]["cta"]["pattern"]
    await store.db.dispose()


async def test_concurrent_saves_lose_nothing(studio_settings: Settings) -> None:
    store = await _store(studio_settings)
    sources = [edited(f"Edit number {i}.") for i in range(6)]

    async def one(source: str) -> int | None:
        try:
            saved = await store.save(
                "hero_banner", source, author="a", message="m", draft=False, expected_latest=1
            )
        except Conflict:
            return None
        return saved.version

    results = await asyncio.gather(*(one(s) for s in sources))
    assert sorted(r for r in results if r is not None) == [2]  # exactly one won
    # The losers reload and retry: every edit ends up as its own version.
    for source, result in zip(sources, results, strict=True):
        if result is None:
            latest = await store.latest("hero_banner")
            await store.save(
                "hero_banner",
                source,
                author="a",
                message="m",
                draft=False,
                expected_latest=latest,
            )
    stored = {v.source for v in await store.versions("hero_banner")}
    assert stored == {HERO, *sources}
    await store.db.dispose()


async def test_label_moves_are_atomic_and_all_audited(studio_settings: Settings) -> None:
    store = await _store(studio_settings)
    for i in range(4):
        await store.save(
            "hero_banner",
            edited(f"v{i}"),
            author="a",
            message="m",
            draft=False,
            expected_latest=1 + i,
        )
    await asyncio.gather(
        *(store.move_label("hero_banner", "staging", v, actor="a") for v in (1, 2, 3, 4, 5))
    )
    final = (await store.labels("hero_banner"))["hero_banner"]["staging"]
    moves = [e.detail for e in await store.audit("hero_banner") if e.action == "move_label"]
    moves = [m for m in moves if m["label"] == "staging"][::-1]  # oldest first
    assert len(moves) == 5 and moves[0]["from"] is None
    # Each move starts where the previous one ended: no move read a stale label.
    assert all(a["to"] == b["from"] for a, b in itertools.pairwise(moves))
    assert moves[-1]["to"] == final
    await store.db.dispose()


def test_split_is_stable_and_close_to_its_weights() -> None:
    split = Split("hero_banner", "production", "variant_b", 0.3)
    shoppers = [f"s{i}" for i in range(20_000)]
    arms = [split.label_for("home_hero", s) for s in shoppers]
    share = arms.count("variant_b") / len(arms)
    assert abs(share - 0.3) < 0.015
    assert arms == [split.label_for("home_hero", s) for s in shoppers]  # same every time
    other = [split.label_for("home_grid", s) for s in shoppers]
    assert other != arms  # placements split independently


# --- the studio page (the browser walks it in tests/integration/test_studio_browser.py) -------


def test_studio_pages_need_a_marketer_and_a_csrf_token(studio) -> None:
    client, keys = studio
    anonymous = client.get("/studio/templates/hero_banner", follow_redirects=False)
    assert anonymous.status_code in (302, 303, 307)
    assert anonymous.headers["location"].startswith("/studio/login")
    page = client.get("/studio/login")
    token = page.text.split('name="_csrf_token" value="')[1].split('"')[0]
    refused = client.post("/studio/login", data={"key": keys["cms"], "_csrf_token": token})
    assert refused.status_code == 401 and "no marketer scope" in refused.text
    forged = client.post("/studio/login", data={"key": keys["marketer"]})
    assert forged.status_code == 403  # no CSRF token
    signed = client.post(
        "/studio/login",
        data={"key": keys["marketer"], "_csrf_token": token},
        follow_redirects=False,
    )
    assert signed.status_code in (302, 303) and "httponly" in signed.headers["set-cookie"].lower()
    editor = client.get("/studio/templates/hero_banner")
    assert editor.status_code == 200 and "hero_banner" in editor.text
    # What a template says is shown as text, never as markup.
    assert "&lt;products&gt;" in editor.text and "<products>" not in editor.text


def test_lint_lines_show_each_problem_in_its_context() -> None:
    from app.prompting.lint import LintProblem
    from app.server.studio.pages import _lines

    source = "\n".join(f"line {n}" for n in range(1, 31))
    shown = _lines(
        source, [LintProblem(5, "bad"), LintProblem(25, "worse"), LintProblem(None, "x")]
    )
    numbers = [entry["number"] for entry in shown if not entry["gap"]]
    assert numbers == [2, 3, 4, 5, 6, 7, 8, 22, 23, 24, 25, 26, 27, 28]
    assert [e["gap"] for e in shown].count(True) == 1
    assert next(e for e in shown if e["number"] == 25 and not e["gap"])["problems"] == ["worse"]


def test_a_second_replica_follows_a_publish(
    studio_settings: Settings, tiny_catalog: Catalog, tiny_shoppers: ShopperStore
) -> None:
    settings = studio_settings.model_copy(update={"templates_refresh_s": 0.05})
    keys = asyncio.run(_keys(settings.database))
    with (
        start(settings, tiny_catalog, tiny_shoppers) as one,
        start(settings, tiny_catalog, tiny_shoppers) as two,
    ):
        wait_ready(one)
        wait_ready(two)
        save(one, keys["marketer"], edited("Keep it short."), base=1)
        call(
            one,
            "PUT",
            "/v1/templates/hero_banner/labels/production",
            keys["marketer"],
            {"version": 2},
        )

        def served_by_two() -> int:
            body = {"shopper_id": "runner"}
            banner = call(two, "POST", "/v1/banners", keys["cms"], body).json()["banners"][0]
            return int(banner["template_version"])

        for _ in range(100):
            if served_by_two() == 2:
                break
            asyncio.run(asyncio.sleep(0.05))
        assert served_by_two() == 2


# --- the studio's session: the cookie holds a key id, the guard looks the key up each page ---


def _cookie_headers(response: Any) -> str:
    return "\n".join(response.headers.get_list("set-cookie"))


def _signed_out(client: Client) -> bool:
    page = client.get("/studio/templates/hero_banner", follow_redirects=False)
    if page.status_code == 200:
        return False
    assert page.status_code in (302, 303, 307) and page.headers["location"].startswith(
        "/studio/login"
    )
    return True


def test_the_studio_cookie_holds_a_session_not_the_key(studio) -> None:
    client, keys = studio
    key = keys["marketer"]
    page = client.get("/studio/login")
    token = page.text.split('name="_csrf_token" value="')[1].split('"')[0]
    signed = client.post(
        "/studio/login", data={"key": key, "_csrf_token": token}, follow_redirects=False
    )
    assert signed.status_code in (302, 303)
    set_cookies = _cookie_headers(signed)
    secret = key.split("_", 2)[2]
    assert "marquee_studio=" in set_cookies and "marquee_studio_key=" not in set_cookies
    assert secret not in set_cookies and key.split("_")[1] not in set_cookies  # encrypted
    assert "httponly" in set_cookies.lower() and "samesite=strict" in set_cookies.lower()
    assert "Max-Age=28800" in set_cookies and "Path=/studio" in set_cookies
    assert "secure" not in set_cookies.lower()  # dev: plain http on localhost works
    assert all(secret not in value for value in client.cookies.values())
    # Decrypted with the app's own session backend: the key's id and name, never the key.
    (backend,) = [
        m.kwargs["backend"] for m in client.app.middleware if "backend" in getattr(m, "kwargs", {})
    ]
    session = backend.load_data([client.cookies["marquee_studio"].encode()])
    assert set(session) == {"key_id", "name", "signed_in_at"}
    assert session["key_id"] == key.split("_")[1] and session["name"] == "test-marketer"
    assert not _signed_out(client)
    # A tampered cookie is no session.
    original = client.cookies["marquee_studio"]
    client.cookies.set("marquee_studio", original[:-8] + "AAAAAAAA", path="/studio")
    assert _signed_out(client)


def test_a_cookie_with_a_tampered_expiry_is_no_session_not_a_500(studio) -> None:
    """The session cookie carries its expiry beside the ciphertext: whatever stands there, a
    cookie the studio cannot read signs the browser out."""
    import base64

    client, keys = studio
    sign_in(client, keys["marketer"])
    sealed = base64.b64decode(client.cookies["marquee_studio"])
    ciphertext = sealed[: sealed.find(b"associated_data=")]
    for expiry in (b'{"expires_at": 9', b"{}", b"[1]", b'{"expires_at": "soon"}', b"\xff"):
        forged = base64.b64encode(ciphertext + b"associated_data=" + expiry).decode()
        client.cookies.set("marquee_studio", forged, path="/studio")
        assert _signed_out(client), expiry


def test_a_revoked_keys_session_is_refused_on_the_next_page(studio) -> None:
    client, keys = studio
    sign_in(client, keys["marketer"])
    assert not _signed_out(client)
    marketer = keys["marketer"].split("_")[1]
    revoked = call(client, "DELETE", f"/v1/keys/{marketer}", keys["admin"])
    assert revoked.status_code == 204
    page = client.get("/studio/", follow_redirects=False)
    assert page.status_code in (302, 303, 307)
    assert "marquee_studio=" in _cookie_headers(page)  # the refused session is dropped
    assert _signed_out(client)


def _move_clock(client: Client, by: timedelta) -> None:
    store = client.app.state.services.keys
    now = store.clock() + by
    store.clock = lambda: now


def test_a_session_ends_after_8_hours_and_with_its_keys_expiry(studio) -> None:
    client, keys = studio
    sign_in(client, keys["marketer"])
    _move_clock(client, timedelta(hours=7, minutes=59))
    assert not _signed_out(client)  # however often it was used, 8 h from sign-in is the end
    _move_clock(client, timedelta(minutes=1))
    assert _signed_out(client)
    brief = asyncio.run(
        ApiKeyStore.using(
            client.app.state.services.settings.database,
            lambda store: store.create(
                "brief", ["marketer"], expires_at=datetime.now(UTC) + timedelta(hours=1)
            ),
        )
    )
    client.app.state.services.keys.clock = lambda: datetime.now(UTC)
    sign_in(client, brief)
    assert not _signed_out(client)
    _move_clock(client, timedelta(hours=1))
    assert _signed_out(client)


def test_logout_ends_the_session(studio) -> None:
    client, keys = studio
    token = sign_in(client, keys["marketer"])
    assert not _signed_out(client)
    out = client.post("/studio/logout", data={"_csrf_token": token}, follow_redirects=False)
    assert out.status_code in (302, 303)
    assert "marquee_studio=" in _cookie_headers(out)
    assert "marquee_studio" not in client.cookies
    assert _signed_out(client)


def test_a_refused_sign_in_is_a_401_with_the_challenge(studio) -> None:
    client, _ = studio
    page = client.get("/studio/login")
    token = page.text.split('name="_csrf_token" value="')[1].split('"')[0]
    refused = client.post("/studio/login", data={"key": "mq_no_" + "x" * 32, "_csrf_token": token})
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == 'X-API-Key realm="marquee"'


def test_replicas_sharing_the_studio_secret_share_sessions(
    studio_settings: Settings, tiny_catalog: Catalog, tiny_shoppers: ShopperStore
) -> None:
    keys = asyncio.run(_keys(studio_settings.database))
    shared = studio_settings.model_copy(update={"studio_secret": SecretStr("one secret " * 4)})
    other = studio_settings.model_copy(update={"studio_secret": SecretStr("another one " * 4)})
    with (
        start(shared, tiny_catalog, tiny_shoppers) as one,
        start(shared, tiny_catalog, tiny_shoppers) as two,
        start(other, tiny_catalog, tiny_shoppers) as three,
    ):
        for client in (one, two, three):
            wait_ready(client)
        sign_in(one, keys["marketer"])
        session = one.cookies["marquee_studio"]
        two.cookies.set("marquee_studio", session, path="/studio")
        three.cookies.set("marquee_studio", session, path="/studio")
        assert not _signed_out(two)
        assert _signed_out(three)


def test_production_session_cookies_are_secure(
    studio_settings: Settings, tiny_catalog: Catalog, tiny_shoppers: ShopperStore
) -> None:
    keys = asyncio.run(_keys(studio_settings.database))
    production = studio_settings.model_copy(update={"env": "production"})
    with start(production, tiny_catalog, tiny_shoppers) as client:
        page = client.get("/studio/login")
        token = page.text.split('name="_csrf_token" value="')[1].split('"')[0]
        signed = client.post(
            "/studio/login",
            data={"key": keys["marketer"], "_csrf_token": token},
            follow_redirects=False,
        )
        assert signed.status_code in (302, 303)
        (session,) = [c for c in signed.headers.get_list("set-cookie") if "marquee_studio=" in c]
        assert "secure" in session.lower()
