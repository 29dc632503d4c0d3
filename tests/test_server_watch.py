"""The managed server's lifecycle and its watch, around a small real HTTP server process.

The process stands in for vLLM (same start, health, stop and restart code paths): it answers
/health with 200, or 503 while a "sick" file names its pid (an engine that hangs).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from app.generation.engine import EngineError
from app.generation.vllm_server import ManagedVLLM, ServerWatch, VLLMServerConfig, free_port

HEALTH_SERVER = """
import http.server, os, pathlib, sys
sick = pathlib.Path(sys.argv[2])
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ill = sick.exists() and sick.read_text() == str(os.getpid())
        self.send_response(503 if ill else 200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


class HealthServer(ManagedVLLM):
    def __init__(self, folder: Path) -> None:
        super().__init__(
            VLLMServerConfig(
                model_dir=folder,
                served_name="m",
                port=free_port(),
                log_path=folder / "server.log",
                startup_timeout_s=20,
            )
        )
        self.sick_file = folder / "sick"

    def command(self) -> list[str]:
        return [sys.executable, "-c", HEALTH_SERVER, str(self.config.port), str(self.sick_file)]

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid


@pytest.fixture
def server(tmp_path: Path):
    running = HealthServer(tmp_path)
    running.start()
    running.wait_ready()
    yield running
    running.stop()


def _group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_dead_server_is_started_again(server: HealthServer) -> None:
    watch = ServerWatch(server, interval_s=0.1)
    assert watch.check() is False and watch.healthy
    first = server.pid
    os.killpg(first, signal.SIGKILL)  # a crash: nothing is shut down politely
    deadline = time.monotonic() + 10
    while server.exit_code() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.exit_code() == -signal.SIGKILL
    assert watch.check() is True
    assert watch.healthy and watch.restarts == 1
    assert server.pid != first and server.healthy()
    assert watch.check() is False  # and it is left alone once it serves


def test_a_hung_server_is_restarted_only_after_the_grace_period(server: HealthServer) -> None:
    watch = ServerWatch(server, interval_s=0.1, unhealthy_restart_s=0.5)
    hung = server.pid
    server.sick_file.write_text(str(hung))
    assert watch.check() is False  # one failed check is not enough
    assert not watch.healthy and server.pid == hung
    time.sleep(0.6)
    assert watch.check() is True
    assert watch.healthy and server.pid != hung and _group_gone(hung)


def test_a_recovered_server_restarts_the_grace_period(server: HealthServer) -> None:
    watch = ServerWatch(server, interval_s=0.1, unhealthy_restart_s=0.5)
    pid = server.pid
    server.sick_file.write_text(str(pid))
    assert watch.check() is False
    server.sick_file.unlink()
    assert watch.check() is False and watch.healthy
    server.sick_file.write_text(str(pid))
    time.sleep(0.6)
    assert watch.check() is False  # unhealthy since just now, not since the first failure
    assert server.pid == pid


def test_nothing_restarts_once_stopped(server: HealthServer) -> None:
    pid = server.pid
    server.stop()
    assert _group_gone(pid)
    with pytest.raises(EngineError, match="shutting down"):
        server.restart()
    with pytest.raises(EngineError, match="shutting down"):
        server.start()
    assert server.exit_code() is None and not server.healthy()


def test_the_watch_loop_reports_restarts(server: HealthServer) -> None:
    async def scenario() -> int:
        restarted = asyncio.Event()
        watch = ServerWatch(server, interval_s=0.1)
        loop = asyncio.create_task(watch.run(on_restart=restarted.set))
        os.killpg(server.pid, signal.SIGKILL)
        await asyncio.wait_for(restarted.wait(), timeout=20)
        loop.cancel()
        return watch.restarts

    assert asyncio.run(scenario()) == 1
    assert server.healthy()
