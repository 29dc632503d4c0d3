"""Ray: started in this process with no cluster by default, or a cluster at
``MARQUEE_RAY_ADDRESS``. The one place that calls ``ray.init``."""

from __future__ import annotations

import os
import threading
from typing import Any

from app.config import Settings
from app.logs import get_logger

log = get_logger(__name__)

_lock = threading.Lock()

# What every worker process needs whatever machine it lands on: no model hub is reachable,
# and tokenizers must not fork thread pools inside Ray's worker processes.
WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TORCHDYNAMO_DISABLE": "1",
}


def connect(settings: Settings) -> None:
    """Join the cluster at ``settings.ray_address``, or start a local Ray in this process
    (once; later calls return at once). Blocking: seconds for a local start."""
    import ray

    with _lock:
        if ray.is_initialized():
            return
        # Ray's core worker would install a handler for fatal signals in this process that
        # also takes SIGTERM: it dumps a stack and kills the process in the middle of the
        # service's own graceful shutdown. The service and the command handle their signals.
        # (Ray reads the variable when it is first imported: the constant is set as well.)
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        from ray._private import ray_constants

        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
        env = {**WORKER_ENV, **{k: v for k, v in os.environ.items() if k.startswith("MARQUEE_")}}
        options: dict[str, Any] = {
            "runtime_env": {"env_vars": env},
            "include_dashboard": False,
            "log_to_driver": settings.ray_log_to_driver,
            "logging_level": "WARNING",
        }
        if settings.ray_address:
            log.info("ray_connect", address=settings.ray_address)
            ray.init(address=settings.ray_address, **options)
        else:
            cpus = settings.ray_num_cpus or os.cpu_count() or 1
            log.info("ray_local_start", cpus=cpus)
            ray.init(num_cpus=cpus, **options)


SHUTDOWN_TIMEOUT_S = 15.0


def shutdown() -> None:
    """Leave Ray (a local one stops). Never hangs its caller: Ctrl-C in a terminal or a
    SIGTERM to a process group reaches Ray's own processes too, and ``ray.shutdown`` then
    waits on processes that are gone; past SHUTDOWN_TIMEOUT_S it is left to finish alone."""
    import ray

    with _lock:
        if not ray.is_initialized():
            return
        leaving = threading.Thread(target=ray.shutdown, name="ray-shutdown", daemon=True)
        leaving.start()
        leaving.join(SHUTDOWN_TIMEOUT_S)
        if leaving.is_alive():
            log.warning("ray_shutdown_timed_out", waited_s=SHUTDOWN_TIMEOUT_S)
