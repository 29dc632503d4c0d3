"""What `marquee serve --workers N` hands its workers: their settings, through the environment."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from app.config import Settings
from app.server.workers import worker_environment


def test_workers_read_the_parents_decisions_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parent = Settings(
        engine="vllm",
        vllm_mode="managed",
        vllm_urls=["http://a:8000", "http://b:8000"],
        host="0.0.0.0",
        port=8123,
        workers=3,
    )
    env = worker_environment(parent, "http://127.0.0.1:9001", "s3cret")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    worker = Settings()
    # The parent's managed server is an external one to them, and the only one.
    assert (worker.engine, worker.vllm_mode, worker.vllm_url) == (
        "vllm",
        "external",
        "http://127.0.0.1:9001",
    )
    assert not worker.vllm_urls
    assert (worker.host, worker.port, worker.workers) == ("0.0.0.0", 8123, 3)
    # One studio secret: a session signed by one worker is read by the next.
    assert worker.studio_secret == SecretStr("s3cret")


def test_without_a_managed_server_the_workers_keep_the_engine_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MARQUEE_VLLM_URLS", "http://a:8000,http://b:8000")
    env = worker_environment(Settings(engine="vllm", vllm_mode="external"), None, "s")
    assert not any(name.startswith("MARQUEE_VLLM") for name in env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().vllm_urls == ["http://a:8000", "http://b:8000"]
