"""Pre-generation with the real parts: Ray workers, the real pipeline, the real vLLM server.

A job started over HTTP fills a placement and the read path serves it; `marquee pregenerate`
killed half-way and started again resumes without making again what it finished.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from app.config import PROJECT_ROOT
from app.store.db import Database
from app.store.pregenerated import JobStore
from tests.integration.conftest import RunningService

pytestmark = pytest.mark.integration

SHOPPERS = [
    json.loads(line) for line in (PROJECT_ROOT / "data/shoppers.jsonl").read_text().splitlines()
]
PRODUCTS = {
    row["id"]: row
    for row in (
        json.loads(line) for line in (PROJECT_ROOT / "data/products.jsonl").read_text().splitlines()
    )
}


def segment(name: str) -> list[str]:
    return [s["id"] for s in SHOPPERS if s.get("segment", "unknown") == name]


def wait_for_job(service: RunningService, job_id: str, timeout_s: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = service.get(f"/v1/jobs/{job_id}", key="admin").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def assert_grounded(banner: dict[str, Any]) -> None:
    assert banner["headline"] and banner["cta"] and banner["products"]
    for product in banner["products"]:
        stored = PRODUCTS[product["id"]]  # a catalog product, never an invented one
        assert product["price"] == stored["price"] and product["title"] == stored["title"]


def test_a_job_over_http_fills_the_placement_and_reads_serve_it(service: RunningService) -> None:
    premium = segment("premium")
    started = service.post(
        "/v1/jobs", {"placement": "home_hero", "shoppers": "segment:premium"}, key="admin"
    )
    assert started.status_code == 202, started.text
    job = wait_for_job(service, started.json()["id"])
    assert job["state"] == "succeeded", job
    # The segment's shoppers, the segment itself, and everyone else.
    assert job["total"] == job["done"] == len(premium) + 2
    assert job["failures"] == 0 and job["banners_per_s"] > 0

    again = service.post(
        "/v1/jobs",
        {"placement": "home_hero", "shoppers": "segment:premium", "stale_only": True},
        key="admin",
    )
    assert again.status_code == 202, again.text
    assert wait_for_job(service, again.json()["id"])["total"] == 0  # nothing changed since

    read = service.get(f"/v1/placements/home_hero/banners/{premium[0]}")
    assert read.status_code == 200, read.text
    served = read.json()
    assert served["source"] == "shopper" and served["job_id"] == job["id"]
    assert served["banner"]["shopper_id"] == premium[0]
    assert_grounded(served["banner"])
    cached = service.get(
        f"/v1/placements/home_hero/banners/{premium[0]}", **{"If-None-Match": read.headers["ETag"]}
    )
    assert cached.status_code == 304

    stranger = service.get("/v1/placements/home_hero/banners/someone-new").json()
    assert stranger["source"] == "popular"
    assert_grounded(stranger["banner"])
    other = next(s for s in segment("mainstream"))
    assert (
        service.get(f"/v1/placements/home_hero/banners/{other}?fallback=false").status_code == 404
    )


def marquee(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "app", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def rows(database: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(audience, subject) -> (job id, generated at) of every stored banner of home_grid."""
    import sqlalchemy as sa

    async def read() -> dict[tuple[str, str], tuple[str, str]]:
        db = Database(database)
        try:
            async with db.engine.connect() as connection:
                result = await connection.execute(
                    sa.text(
                        "SELECT audience, subject, job_id, generated_at FROM placement_banners "
                        "WHERE placement = 'home_grid'"
                    )
                )
                return {(a, s): (j, str(g)) for a, s, j, g in result}
        finally:
            await db.dispose()

    return asyncio.run(read())


def test_pregenerate_killed_half_way_resumes_without_making_anything_twice(
    service: RunningService, tmp_path: Path
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"
    ids = tmp_path / "shoppers.txt"
    chosen = segment("bargain_hunter")[:12]
    ids.write_text("# bargain hunters\n" + "\n".join(chosen) + "\n")
    env = {
        "MARQUEE_DATABASE_URL": database,
        "MARQUEE_ENGINE": "vllm",
        "MARQUEE_VLLM_MODE": "external",
        "MARQUEE_VLLM_URL": service.vllm_url,  # the service's vLLM: no second model server
        "MARQUEE_JOB_HEARTBEAT_TIMEOUT_S": "6",  # a killed job reads as interrupted soon
        # One subject at a time, each stored as it is made: the rows grow one by one, so the
        # kill lands half-way (with the defaults, all 14 are generated together and stored in
        # the same instant).
        "MARQUEE_JOB_SHARD_SIZE": "1",
        "MARQUEE_JOB_SHARDS_IN_FLIGHT": "1",
        "MARQUEE_JOB_WRITE_BATCH": "1",
    }
    command = ("pregenerate", "--placement", "home_grid", "--shoppers", f"ids:{ids}")
    first = marquee(*command, **env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(rows_or_empty(database)) < 4:
        assert first.poll() is None, first.communicate()
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = rows(database)
    assert 4 <= len(before) < len(chosen) + 2, "killed half-way"
    (job_id,) = {job for job, _ in before.values()}
    time.sleep(7)  # past the heartbeat timeout: the job is interrupted

    second = marquee(*command, **env)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    assert f"resuming {job_id}: {len(before)} made before" in err
    assert f"job {job_id} succeeded" in out
    after = rows(database)
    assert len(after) == len(chosen) + 2  # the shoppers, their one segment, everyone else
    for key, made in before.items():
        assert after[key] == made, f"{key} was made again"

    async def job() -> Any:
        db = Database(database)
        try:
            return await JobStore(db).get(job_id)
        finally:
            await db.dispose()

    finished = asyncio.run(job())
    assert finished.state == "succeeded" and finished.done == finished.total == len(after)

    # Nothing changed since: a stale-only run makes nothing, and says so as JSON.
    stale_only = marquee(*command, "--stale-only", "--json", **env)
    out, err = stale_only.communicate(timeout=600)
    assert stale_only.returncode == 0, err[-3000:]
    report = json.loads(out)
    assert report["state"] == "succeeded" and report["total"] == 0 and report["id"] != job_id
    assert rows(database) == after


def rows_or_empty(database: str) -> dict[tuple[str, str], tuple[str, str]]:
    try:
        return rows(database)
    except Exception:  # the command has not made its tables yet
        return {}
