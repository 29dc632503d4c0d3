"""`marquee serve --workers 2` as an operator runs it: two processes on one port, one service.

The workers use the test run's vLLM (as they would a vLLM on another host). Requests go over
fresh connections, so the kernel hands them to either worker: each must see what the other
stored, read the studio session the other signed, and count into the same /metrics.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from app.config import PROJECT_ROOT
from tests.integration.conftest import RunningService, wait_until_ready

pytestmark = pytest.mark.integration

READ = "/v1/placements/home_hero/banners/u004"


@pytest.fixture
def two_workers(service: RunningService, tmp_path: Path) -> Iterator[tuple[str, Path, int]]:
    """The base URL, the folder holding its stderr, and the parent's pid."""
    from app.generation.vllm_server import free_port

    port = free_port()
    env = {
        **os.environ,
        "MARQUEE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'workers.db'}",
        "MARQUEE_ENGINE": "vllm",
        "MARQUEE_VLLM_MODE": "external",
        "MARQUEE_VLLM_URL": service.vllm_url,
        "MARQUEE_ENV": "dev",
        "MARQUEE_READ_CACHE_S": "0",
    }
    with (tmp_path / "out.log").open("w") as out, (tmp_path / "err.log").open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--workers", "2", "--port", str(port)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=err,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(base, process, tmp_path / "err.log", 300)
        try:
            yield base, tmp_path, process.pid
        finally:
            children = psutil.Process(process.pid).children(recursive=True)
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=90)
            assert code in (0, -signal.SIGTERM), (tmp_path / "err.log").read_text()[-3000:]
            _, alive = psutil.wait_procs(children, timeout=30)
            assert not alive, f"workers outlived the service: {alive}"


def fresh() -> httpx.Client:
    """A client that opens a new connection for every request: any worker may take it."""
    return httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=120)


def test_two_workers_serve_as_one_service(two_workers: tuple[str, Path, int]) -> None:
    base, folder, pid = two_workers
    workers = [
        child
        for child in psutil.Process(pid).children()
        if "spawn_main" in " ".join(child.cmdline())
    ]
    assert len(workers) == 2

    # The database was prepared once: one dev key, printed once.
    printed = re.findall(
        r"dev API key \(admin scope, shown once\): (\S+)", (folder / "err.log").read_text()
    )
    assert len(printed) == 1, printed
    key = {"X-API-Key": printed[0]}

    with fresh() as client:
        made = client.post(f"{base}/v1/banners", json={"shopper_id": "u004"}, headers=key)
        assert made.status_code == 200, made.text
        banner_id = made.json()["banners"][0]["id"]
        # Stored by the worker that made it, read by either.
        deadline = time.monotonic() + 30
        while client.get(f"{base}{READ}?fallback=false", headers=key).status_code != 200:
            assert time.monotonic() < deadline, "the live banner was never stored for reads"
            time.sleep(0.5)
        reads = [client.get(f"{base}{READ}?fallback=false", headers=key) for _ in range(30)]
        assert all(r.status_code == 200 for r in reads)
        assert {r.json()["banner"]["id"] for r in reads} == {banner_id}

        # Every worker's requests in one /metrics, whichever worker answers it.
        metrics = client.get(f"{base}/metrics").text
        served = re.search(
            r'marquee_requests_total\{route="/v1/placements/\{placement\}/banners/\{shopper_id\}",'
            r'status="200"\} (\S+)',
            metrics,
        )
        assert served is not None and float(served.group(1)) >= 31

    # One studio secret: the sign-in form of one worker is accepted by the other, and the
    # session it signs is read by both.
    with fresh() as browser:
        page = browser.get(f"{base}/studio/login")
        token = page.text.split('name="_csrf_token" value="')[1].split('"')[0]
        signed = browser.post(
            f"{base}/studio/login",
            data={"key": printed[0], "_csrf_token": token},
            follow_redirects=False,
        )
        assert signed.status_code in (302, 303), signed.text
        pages = [
            browser.get(f"{base}/studio/templates/hero_banner", follow_redirects=False)
            for _ in range(12)
        ]
        assert [p.status_code for p in pages] == [200] * 12
