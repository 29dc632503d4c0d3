"""Integration fixtures: the real embedding model, the real index and the real generation model.

Loaded once per test session. The models must be prepared (`make test` does it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.config import PROJECT_ROOT, Settings
from app.models import is_prepared
from app.pipeline import Pipeline


@pytest.fixture(scope="session")
def settings() -> Settings:
    settings = Settings()
    if not is_prepared(settings.llm_folder):
        pytest.fail(
            f"model not prepared in {settings.llm_folder}: run `make test` "
            "(or `marquee model prepare`)"
        )
    return settings


@pytest.fixture(scope="session")
def pipeline(settings: Settings) -> Pipeline:
    from app.runtime import build_pipeline

    return build_pipeline(settings)


@dataclass
class RunningService:
    base_url: str
    vllm_url: str
    keys: dict[str, str]
    process: subprocess.Popen[str]

    def post(self, path: str, body: object, key: str | None = "cms") -> httpx.Response:
        return self.send("POST", path, body, key)

    def send(self, method: str, path: str, body: object, key: str | None = "cms") -> httpx.Response:
        headers = {"X-API-Key": self.keys[key]} if key else {}
        return httpx.request(
            method, f"{self.base_url}{path}", json=body, headers=headers, timeout=300
        )

    def get(self, path: str, key: str | None = "cms", **headers: str) -> httpx.Response:
        if key:
            headers["X-API-Key"] = self.keys[key]
        return httpx.get(f"{self.base_url}{path}", headers=headers, timeout=60)


def wait_until_ready(
    base_url: str, process: subprocess.Popen[str], log: Path, timeout_s: float
) -> None:
    """Until /readyz answers 200; the test fails with the log's tail if the service exits or
    is not ready in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"service exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(1)
    process.kill()
    pytest.fail(f"service not ready: {log.read_text()[-3000:]}")


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def service(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """The real service (`marquee serve --engine vllm`, managed vLLM), once per test run.

    Its teardown checks the shutdown: the service exits cleanly and leaves no vLLM behind.
    """
    from app.generation.vllm_server import free_port
    from app.store.repositories import ApiKeyStore

    folder = tmp_path_factory.mktemp("service")
    database = f"sqlite+aiosqlite:///{folder / 'marquee.db'}"

    async def make_keys() -> dict[str, str]:
        return {
            s: await ApiKeyStore.create_in(database, f"e2e-{s}", [s])
            for s in ("cms", "marketer", "admin")
        }

    keys = asyncio.run(make_keys())
    # The service writes its index when the catalog changes: a copy keeps the shared one as is.
    index = folder / "index"
    shutil.copytree(settings.index_dir, index)
    port, vllm_port = free_port(), free_port()
    env = {
        **os.environ,
        "MARQUEE_DATABASE_URL": database,
        "MARQUEE_INDEX_PATH": str(index),
        "MARQUEE_SIGNALS_REFRESH_DELAY_S": "0",
        "MARQUEE_VLLM_PORT": str(vllm_port),
        "MARQUEE_ENGINE": "vllm",
        "MARQUEE_VLLM_MODE": "managed",
    }
    log = (folder / "service.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = RunningService(
        f"http://127.0.0.1:{port}", f"http://127.0.0.1:{vllm_port}", keys, process
    )
    wait_until_ready(running.base_url, process, folder / "service.log", 420)
    yield running
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=90)
    log.close()
    # uvicorn finishes its graceful shutdown, then exits through the signal it received.
    assert code in (0, -signal.SIGTERM), (folder / "service.log").read_text()[-3000:]
    assert "Application shutdown complete" in (folder / "service.log").read_text()
    assert not _port_open(vllm_port), "the managed vLLM outlived the service"
