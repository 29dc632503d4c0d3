"""The A/B comparison of two template versions, around the scripted engine."""

from __future__ import annotations

import asyncio

from app.catalog.store import Catalog, ShopperStore
from app.config import PROJECT_ROOT, Settings
from app.store.db import Database
from app.store.templates import TemplateStore
from eval.runner import _compare, resolve_arm
from tests.fakes import GOOD, INVENTED, ScriptedEngine, make_pipeline

HERO = (PROJECT_ROOT / "prompts" / "hero_banner.j2").read_text()


async def _second_version(settings: Settings) -> None:
    db = Database(settings.database)
    await db.upgrade()
    store = TemplateStore(db)
    await store.seed(settings.prompts_dir)
    await store.save(
        "hero_banner",
        HERO + "Keep it short.\n",
        author="t",
        message="m",
        draft=False,
        expected_latest=1,
    )
    await db.dispose()


def test_two_versions_on_the_same_shoppers_get_paired_verdicts(
    tmp_path, tiny_catalog: Catalog, tiny_shoppers: ShopperStore, test_settings: Settings
) -> None:
    settings = test_settings.model_copy(
        update={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'ab.db'}"}
    )
    asyncio.run(_second_version(settings))
    a, b = (
        resolve_arm("hero_banner@1", settings, "hero_banner"),
        resolve_arm("hero_banner@2", settings, "hero_banner"),
    )
    assert (a.version.version, b.version.version) == (1, 2)  # type: ignore[union-attr]
    assert "Keep it short." in b.version.source  # type: ignore[union-attr]

    shoppers = [s for s in tiny_shoppers.all() if s.history][:4]
    # A is accepted at once; every B banner first invents a price, is refused, then retried.
    engine = ScriptedEngine([GOOD] * len(shoppers) + [INVENTED, GOOD] * len(shoppers))
    pipeline = make_pipeline(engine, tiny_catalog, tiny_shoppers, settings)
    report, samples = asyncio.run(_compare(pipeline, settings, [a, b], shoppers))
    assert report["a"] == "hero_banner@1" and report["shoppers"] == len(shoppers)
    retries = report["differences"]["retries"]
    assert (retries["a"], retries["b"], retries["b_minus_a"]) == (0.0, 1.0, 1.0)
    assert retries["verdict"] == "A better"  # fewer retries is better
    assert report["differences"]["invented_claims"]["verdict"] == "no clear difference"
    assert report["arms"]["hero_banner@2"]["invented_claims_total"] == 0  # guards held
    assert {s.banner.template_version for s in samples if s.arm == "hero_banner@2"} == {2}
