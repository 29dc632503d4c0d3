"""A load test with locust: the real service with the real engine, a realistic mix of reads and
writes at 32 users for 10 minutes, memory watched throughout.

    .venv/bin/python -m bench.load [--minutes 10] [--users 32]

Starts `python -m app serve --engine vllm` (managed vLLM) on a temporary SQLite database and
a temporary copy of the vector index, with a `cms` and an `admin` key, then runs the users
of bench/locustfile.py through locust's library API (Environment, a local runner, gevent).
Every 5 s it samples the service's RSS, its vLLM children's RSS (server and engine core,
summed), requests/s, failures and p50/p95 per request kind. At the end it checks:

- no errors: every response 2xx (or the documented 304 of a conditional banner fetch), no
  client-side timeout or connection error;
- revalidation honest: no 304 to If-None-Match for a banner whose copy had changed since that
  ETag was issued (every 304 is checked by fetching the banner again);
- memory flat: after warm-up (the first fifth of the run, at most 2 minutes), the median RSS of
  the last third is at most GROWTH_LIMIT_PCT above the median of the first third, for the
  service and for vLLM separately;
- the run completed with the service alive, and SIGTERM stopped it cleanly (vLLM too);

writes bench/results/load.md and .json (per request kind: requests, failures, rps, p50, p95,
p99; the memory figures; the machine) and bench/results/load.png, and exits 1 if a check
failed. The service is stopped (its process group, then vLLM's) on every way out, Ctrl-C too.
"""

from __future__ import annotations

# isort: off
# locust patches the standard library for gevent when imported: before anything else.
import locust  # noqa: F401

# isort: on
import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import psutil
from locust.env import Environment

from bench.common import describe_machine, pct, write_results
from bench.locustfile import CatalogAdmin, Config, Observed, Storefront

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_S = 5.0
# Memory may grow at most this much from the first third to the last third after warm-up.
# Why 5 %: the service's ~650 MB (torch, the embedding model, the index, the catalog) do not
# change with traffic; what traffic legitimately adds in 10 minutes is ~10 MB, under 2 %
# (~2,500 events appended to in-memory histories, SQLAlchemy's statement cache, allocator
# slack). 5 % of 650 MB is ~33 MB: a leak of ~10 KB per request over the ~3,000 requests
# between the two thirds' medians crosses it (a response body, a task or a session never
# freed), and so does anything growing steadily with time. vLLM (~5 GB: its KV cache is
# allocated and touched at start) is held to the same 5 %: its worker's heap does grow under
# this load (~25 MB/min measured, ~4 % over the run), and the check is meant to catch it if it
# grows faster.
GROWTH_LIMIT_PCT = 5.0
KEY_SCRIPT = (
    "import asyncio, sys\n"
    "from app.store.repositories import ApiKeyStore\n"
    "print(asyncio.run(ApiKeyStore.create_in(sys.argv[1], sys.argv[2], sys.argv[3:])))\n"
)


@dataclass
class Window:
    """Requests finished within one sampling interval."""

    times: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)


@dataclass
class Sample:
    t: float  # seconds since the load started
    service_rss_mb: float
    vllm_rss_mb: float
    vllm_processes: int
    rps: float
    failures: int
    users: int
    load_avg_1m: float  # the machine's, all processes (the machine is shared)
    p50_ms: float
    p95_ms: float
    kinds: dict[str, dict[str, float]]  # kind -> requests, failures, p50, p95

    def row(self) -> dict[str, Any]:
        return self.__dict__


class Recorder:
    """Collects every request into the current window; `sample()` closes it every 5 s."""

    def __init__(self, env: Environment, service: psutil.Process, start: float) -> None:
        self.env = env
        self.service = service
        self.start = start
        self.window = Window()
        self.samples: list[Sample] = []
        env.events.request.add_listener(self.on_request)  # type: ignore[no-untyped-call]

    def on_request(self, name: str, response_time: float, exception: Any = None, **_: Any) -> None:
        self.window.times.setdefault(name, []).append(response_time)
        if exception is not None:
            self.window.failures[name] = self.window.failures.get(name, 0) + 1

    def memory(self) -> tuple[float, float, int]:
        """The service's RSS, and its descendants' (vLLM's server and engine core) summed."""
        try:
            own = self.service.memory_info().rss
            children = self.service.children(recursive=True)
        except psutil.Error:
            return float("nan"), float("nan"), 0
        total = 0
        for child in children:
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return own / 2**20, total / 2**20, len(children)

    def sample(self, elapsed: float) -> Sample:
        window, self.window = self.window, Window()
        service_mb, vllm_mb, processes = self.memory()
        every = [t for times in window.times.values() for t in times]
        kinds = {
            name: {
                "requests": len(times),
                "failures": window.failures.get(name, 0),
                "p50_ms": pct(times, 50),
                "p95_ms": pct(times, 95),
            }
            for name, times in sorted(window.times.items())
        }
        sample = Sample(
            t=round(time.monotonic() - self.start, 1),
            service_rss_mb=round(service_mb, 1),
            vllm_rss_mb=round(vllm_mb, 1),
            vllm_processes=processes,
            rps=len(every) / elapsed,
            failures=sum(window.failures.values()),
            users=self.env.runner.user_count if self.env.runner else 0,
            load_avg_1m=os.getloadavg()[0],
            p50_ms=pct(every, 50),
            p95_ms=pct(every, 95),
            kinds=kinds,
        )
        self.samples.append(sample)
        return sample


# The service ---------------------------------------------------------------------------------


def make_key(database: str, name: str, scopes: list[str]) -> str:
    """A key through ApiKeyStore.create_in, in a child process: this one runs under gevent."""
    done = subprocess.run(
        [sys.executable, "-c", KEY_SCRIPT, database, name, *scopes],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except OSError as error:
        return 0, str(error)


class Service:
    """`python -m app serve --engine vllm` in its own process group, on a temporary database."""

    def __init__(self, folder: Path, workers: int = 1) -> None:
        self.folder = folder
        self.workers = workers  # `serve --workers`
        self.database = f"sqlite+aiosqlite:///{folder / 'load.db'}"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "service.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.vllm_groups: set[int] = set()  # vLLM leads a process group of its own
        self.exit_code: int | None = None
        self.leftovers: list[str] = []

    def start(self) -> tuple[str, str]:
        cms = make_key(self.database, "load-cms", ["cms"])
        admin = make_key(self.database, "load-admin", ["admin"])
        index = self.folder / "index"
        shipped = PROJECT_ROOT / ".cache" / "index"
        if shipped.is_dir() and not index.exists():  # a copy: upserts re-save the index
            shutil.copytree(shipped, index)
        env = {
            **os.environ,
            "MARQUEE_DATABASE_URL": self.database,
            "MARQUEE_INDEX_PATH": str(index),
            "MARQUEE_VLLM_PORT": str(free_port()),
            "MARQUEE_ENV": "dev",
        }
        for name, value in (
            ("HF_HUB_OFFLINE", "1"),
            ("TRANSFORMERS_OFFLINE", "1"),
            ("TOKENIZERS_PARALLELISM", "false"),
            ("TORCHDYNAMO_DISABLE", "1"),
        ):
            env.setdefault(name, value)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "app",
                    "serve",
                    "--engine",
                    "vllm",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                ],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return cms, admin

    def wait_ready(self, timeout_s: float = 600) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the service exited during start-up; see {self.log_path}")
            status, _ = get(f"{self.base}/readyz", timeout=2)
            if status == 200:
                self.note_vllm()
                return
            gevent.sleep(1)
        raise SystemExit(f"the service was not ready after {timeout_s:.0f} s; see {self.log_path}")

    def processes(self) -> list[psutil.Process]:
        """The processes serving HTTP: the command, and with --workers its worker processes
        (not vLLM, not Ray: those are other programs' memory)."""
        assert self.process is not None
        parent = psutil.Process(self.process.pid)
        workers = [
            child
            for child in parent.children()
            if "spawn_main" in " ".join(child.cmdline())  # uvicorn's spawned workers
        ]
        return [parent, *workers]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def note_vllm(self) -> None:
        """Remember vLLM's process groups, to stop them should the service not."""
        if not self.alive():
            return
        assert self.process is not None
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error, ProcessLookupError):
                    self.vllm_groups.add(os.getpgid(child.pid))
        self.vllm_groups.discard(self.process.pid)

    def stop(self) -> None:
        """SIGTERM to the service's process, as Docker and Kubernetes stop a container (it stops
        vLLM, its workers and its local Ray itself); SIGKILL to whatever is left after."""
        if self.process is None:
            return
        self.note_vllm()
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(group, signal.SIGTERM)
        try:
            # uvicorn gives requests 30 s, then the service gives vLLM 20 s + 10 s.
            self.exit_code = self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.leftovers.append(f"service pid {group} ignored SIGTERM for 120 s: killed")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
            self.exit_code = self.process.wait()
        for pgid in sorted({group, *self.vllm_groups}):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _group_alive(pgid):
                time.sleep(0.5)
            if _group_alive(pgid):
                self.leftovers.append(f"process group {pgid} still alive after the service: killed")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
        self.process = None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Reading what happened -----------------------------------------------------------------------


def scrape_metrics(base: str) -> dict[str, float]:
    """A few counters from /metrics: responses by status class and the service's own counts."""
    status, text = get(f"{base}/metrics", timeout=10)
    if status != 200:
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r'^marquee_requests_total\{route="([^"]*)",status="(\d+)"\} (\S+)$', line)
        if match:
            route, code, value = match.groups()
            if route in {"/metrics", "/readyz"}:
                continue
            key = f"server responses {code[0]}xx"
            found[key] = found.get(key, 0) + float(value)
            if code[0] == "5":
                found[f"server {code} on {route}"] = float(value)
            continue
        for name in (
            "cache_hits",
            "coalesced",
            "fallbacks",
            "retries",
            "rejected",
            "store_errors",
            "engine_restarts",
            "output_tokens",
        ):
            if line.startswith(f"marquee_{name}_total "):
                found[f"server {name.replace('_', ' ')}"] = float(line.split()[-1])
    return found


def log_findings(path: Path, limit: int = 12) -> tuple[dict[str, int], list[str]]:
    """Counts of the service log's levels, and its warnings, errors and 5xx request lines."""
    levels: dict[str, int] = {}
    lines: list[str] = []
    if not path.exists():
        return levels, lines
    for raw in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            level = str(entry.get("level", "?"))
            levels[level] = levels.get(level, 0) + 1
            bad_status = (
                entry.get("event") == "request"
                and entry.get("route") != "/readyz"  # 503 until ready: by design
                and int(entry.get("status", 0)) >= 500
            )
            if level in {"warning", "error", "critical"} or bad_status:
                lines.append(raw[:600])
        elif re.search(r"Traceback|Error|Exception", raw):
            levels["plain text error"] = levels.get("plain text error", 0) + 1
            lines.append(raw[:600])
    return levels, lines[:limit]


def clean_stop(service: Service) -> bool:
    """Stopped by SIGTERM after a graceful shutdown: uvicorn finishes the application's
    shutdown (vLLM stopped) and then raises the signal again, so -15 is its clean exit."""
    if service.exit_code not in (0, -signal.SIGTERM) or service.leftovers:
        return False
    return "Application shutdown complete" in service.log_path.read_text(errors="replace")


def thirds(samples: list[Sample], warmup_s: float, attr: str) -> tuple[float, float, float]:
    """Median of the first and the last third after warm-up, and the growth between, in %."""
    values = [getattr(s, attr) for s in samples if s.t >= warmup_s]
    values = [v for v in values if v == v]  # no NaN
    if len(values) < 6:
        return float("nan"), float("nan"), float("nan")
    third = len(values) // 3
    first, last = statistics.median(values[:third]), statistics.median(values[-third:])
    return first, last, (last / first - 1) * 100


def plot(samples: list[Sample], path: Path, warmup_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t / 60 for s in samples]
    fig, (top, middle, service, vllm) = plt.subplots(
        4, 1, figsize=(10, 11), sharex=True, gridspec_kw={"height_ratios": [2, 3, 1.5, 1.5]}
    )
    top.plot(t, [s.rps for s in samples], label="requests/s")
    top.plot(t, [s.failures / SAMPLE_S for s in samples], label="failures/s", color="red")
    top.set_ylabel("per second")
    top.legend(loc="upper left", fontsize=8)
    top.set_title("Marquee under load (5 s windows)")
    middle.plot(t, [s.p95_ms / 1000 for s in samples], label="all requests", color="black")
    for kind in ("banner: known shopper (cache hit)", "product lookup", "events batch"):
        middle.plot(t, [s.kinds.get(kind, {}).get("p95_ms", float("nan")) / 1000 for s in samples],
                    label=kind, linewidth=0.8)  # fmt: skip
    generated = [
        max(
            [
                s.kinds[k]["p95_ms"]
                for k in ("banner: known shopper (generated)", "banner: fresh profile")
                if k in s.kinds
            ],
            default=float("nan"),
        )
        / 1000
        for s in samples
    ]
    middle.plot(t, generated, ".", label="banner generated", markersize=4, color="purple")
    middle.set_yscale("log")
    middle.set_ylabel("p95 latency (s)")
    middle.legend(loc="lower left", fontsize=7, ncol=3)
    for axis, attr, label, color in (
        (service, "service_rss_mb", "service RSS (MB)", "tab:blue"),
        (vllm, "vllm_rss_mb", "vLLM RSS (MB)\nserver + engine core", "tab:orange"),
    ):
        values = [getattr(s, attr) for s in samples]
        axis.plot(t, values, color=color)
        middle_mb = statistics.median(values)  # a scale of at least +-8 %: drift, not noise
        axis.set_ylim(min(min(values), middle_mb * 0.92), max(max(values), middle_mb * 1.08))
        axis.axvline(warmup_s / 60, color="grey", linestyle="--", linewidth=0.8)
        axis.set_ylabel(label, fontsize=8)
    service.text(warmup_s / 60, 0.05, " end of warm-up", transform=service.get_xaxis_transform(),
                 fontsize=7, color="grey")  # fmt: skip
    vllm.set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# The run -------------------------------------------------------------------------------------


def run_load(service: Service, users: int, spawn_rate: float, seconds: float) -> Environment:
    assert service.process is not None
    env = Environment(user_classes=[Storefront, CatalogAdmin], host=service.base, stop_timeout=0)
    runner = env.create_local_runner()
    start = time.monotonic()
    recorder = Recorder(env, psutil.Process(service.process.pid), start)
    env.recorder = recorder  # type: ignore[attr-defined]
    runner.start(users, spawn_rate=spawn_rate)
    print(f"load: {users} users for {seconds / 60:.1f} min against {service.base}", flush=True)
    last = start
    try:
        while (now := time.monotonic()) - start < seconds:
            gevent.sleep(max(0.0, last + SAMPLE_S - now))
            now = time.monotonic()
            sample = recorder.sample(now - last)
            last = now
            if int(sample.t) % 30 < SAMPLE_S:
                print(
                    f"  t={sample.t:5.0f}s users={sample.users} rps={sample.rps:5.1f} "
                    f"fail={env.stats.total.num_failures} p50={sample.p50_ms:7.0f}ms "
                    f"p95={sample.p95_ms:7.0f}ms service={sample.service_rss_mb:.0f}MB "
                    f"vllm={sample.vllm_rss_mb:.0f}MB",
                    flush=True,
                )
            if not service.alive():
                print("the service died during the load", flush=True)
                break
    finally:
        runner.quit()
    return env


def report(env: Environment, service: Service, args: argparse.Namespace, warmup_s: float) -> bool:
    recorder: Recorder = env.recorder  # type: ignore[attr-defined]
    samples = recorder.samples
    stats = env.stats
    rows: list[list[object]] = []
    entries = sorted(stats.entries.values(), key=lambda e: -e.num_requests)
    for entry in [*entries, stats.total]:
        rows.append(
            [
                entry.name,
                entry.num_requests,
                entry.num_failures,
                entry.total_rps,
                entry.get_response_time_percentile(0.5),
                entry.get_response_time_percentile(0.95),
                entry.get_response_time_percentile(0.99),
                entry.max_response_time,
            ]
        )
    failures = stats.total.num_failures
    svc_first, svc_last, svc_growth = thirds(samples, warmup_s, "service_rss_mb")
    vl_first, vl_last, vl_growth = thirds(samples, warmup_s, "vllm_rss_mb")
    memory_ok = all(g == g and g <= GROWTH_LIMIT_PCT for g in (svc_growth, vl_growth))
    completed = bool(samples) and samples[-1].t >= args.minutes * 60 - 2 * SAMPLE_S
    levels, log_lines = log_findings(service.log_path)
    server = env.server_metrics  # type: ignore[attr-defined]
    errors = stats.serialize_errors()
    stopped_cleanly = clean_stop(service)
    overlapping = Observed.overlapping_generations()
    counts = dict(Observed.counts)
    stale = counts.get("304 although the copy had changed", 0)
    ok = failures == 0 and stale == 0 and memory_ok and completed and stopped_cleanly

    def mb(value: float) -> str:
        return f"{value:,.0f} MB"

    hits = counts.get("known-shopper banners cached", 0)
    made = counts.get("known-shopper banners generated", 0)
    generated = counts.get("banners generated", 0)
    after = [s for s in samples if s.t >= warmup_s]
    kinds_after = {
        k: sum(s.kinds.get(k, {}).get("requests", 0) for s in after)
        for k in ("banner: known shopper (cache hit)", "banner: known shopper (generated)")
    }
    known_after = sum(kinds_after.values()) or 1
    notes = [
        f"load: {args.users} users ({args.users - 1} storefront, 1 catalog admin) for "
        f"{args.minutes:g} min, spawned at {args.spawn_rate:g}/s; the mix and why: "
        "bench/locustfile.py; client timeout 300 s; the service at its defaults (32 generations "
        "in flight, 300 s banner cache) with the managed vLLM, SQLite; locust runs on the same "
        "2 cores",
        f"CHECK no errors: {'PASS' if failures == 0 else 'FAIL'}: {failures} failed requests "
        f"of {stats.total.num_requests} (non-2xx other than the conditional fetch's 304, or "
        "no answer)"
        + "".join(
            f"; {e['occurrences']}x {e['name']}: {e['error'][:160]}" for e in errors.values()
        ),
        f"CHECK revalidation honest: {'PASS' if stale == 0 else 'FAIL'}: {stale} of "
        f"{counts.get('304 not modified', 0)} answers 304 to If-None-Match were for copy that had "
        "changed since that ETag was issued (each 304 is checked by fetching the banner again)",
        f"CHECK memory flat (median of the last third vs the first third after the "
        f"{warmup_s:.0f} s warm-up, limit +{GROWTH_LIMIT_PCT:g} %): "
        f"{'PASS' if memory_ok else 'FAIL'}: service {mb(svc_first)} -> {mb(svc_last)} "
        f"({svc_growth:+.1f} %), vLLM server + engine core {mb(vl_first)} -> {mb(vl_last)} "
        f"({vl_growth:+.1f} %)",
        f"RSS over the whole run: service {mb(samples[0].service_rss_mb)} at the first sample, "
        f"{mb(max(s.service_rss_mb for s in samples))} at most, "
        f"{mb(samples[-1].service_rss_mb)} at the end; vLLM {mb(samples[0].vllm_rss_mb)} -> "
        f"{mb(samples[-1].vllm_rss_mb)} ({samples[-1].vllm_processes} processes)"
        if samples
        else "no samples",
        f"CHECK ran the full {args.minutes:g} min with the service alive: "
        f"{'PASS' if completed else 'FAIL'}",
        f"CHECK stopped cleanly (SIGTERM to its process; graceful shutdown, vLLM gone): "
        f"{'PASS' if stopped_cleanly else 'FAIL'}: exit code {service.exit_code} (uvicorn "
        "raises SIGTERM again once shut down)"
        + (f"; {'; '.join(service.leftovers)}" if service.leftovers else "; nothing left behind"),
        f"banner answers for known shoppers: {hits} from the cache, {made} generated; after "
        f"warm-up {kinds_after['banner: known shopper (cache hit)'] / known_after:.0%} cache hits"
        f"; {overlapping} of the generated ones started while a request for the same shopper "
        "was being generated (identical requests in flight share one generation since the "
        "service coalesces them: what is left are different request keys for one shopper)",
        f"banners generated (banner and homepage requests): {generated}, of them "
        f"{counts.get('fallback banners (of generated)', 0)} fallback copy (guards refused every "
        f"attempt, or the engine failed: {counts.get('engine_error banners (of generated)', 0)} "
        "engine errors)",
        "client-side counts: "
        + ", ".join(
            f"{k} {v}"
            for k, v in sorted(counts.items())
            if not k.startswith(("known-shopper", "banners generated", "fallback", "engine_"))
        ),
        "server-side (/metrics at the end): "
        + (
            ", ".join(f"{k.removeprefix('server ')} {v:,.0f}" for k, v in sorted(server.items()))
            or "unavailable"
        ),
        "service log: "
        + (", ".join(f"{n} {level}" for level, n in sorted(levels.items())) or "empty")
        + (f"; first warnings/errors: {' | '.join(log_lines)}" if log_lines else ""),
        f"the machine's 1-minute load average during the run: median "
        f"{statistics.median([s.load_avg_1m for s in samples]) if samples else float('nan'):.1f}"
        f", max {max((s.load_avg_1m for s in samples), default=float('nan')):.1f} on 2 cores "
        "(service, vLLM and locust; other processes too where the machine is shared)",
        "rps = requests / the run's wall time; latencies in ms, client side (locust rounds "
        "them above 100 ms to 2 significant digits); load.json holds the 5 s samples, load.png "
        "plots them",
    ]
    path = write_results(
        args.name,
        f"Load test: {args.users} users, {args.minutes:g} min (service + managed vLLM, SQLite)",
        ["request kind", "requests", "failures", "rps", "p50 ms", "p95 ms", "p99 ms", "max ms"],
        rows,
        notes,
        machine=describe_machine(),
    )
    data_path = path.with_suffix(".json")
    data = json.loads(data_path.read_text())
    data["checks"] = {
        "errors": failures,
        "stale_304": stale,
        "memory_growth_limit_pct": GROWTH_LIMIT_PCT,
        "warmup_s": warmup_s,
        "service_rss_mb": {
            "first_third": svc_first,
            "last_third": svc_last,
            "growth_pct": svc_growth,
        },
        "vllm_rss_mb": {"first_third": vl_first, "last_third": vl_last, "growth_pct": vl_growth},
        "completed": completed,
        "stopped_cleanly": stopped_cleanly,
        "service_exit_code": service.exit_code,
        "overlapping_generations": overlapping,
        "leftovers": service.leftovers,
        "passed": ok,
    }
    data["client_counts"] = counts
    data["server_metrics"] = server
    data["log_levels"] = levels
    data["log_lines"] = log_lines
    data["samples"] = [s.row() for s in samples]
    data_path.write_text(json.dumps(data, indent=2, default=str))
    if samples:
        plot(samples, path.with_suffix(".png"), warmup_s)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--spawn-rate", type=float, default=4.0, help="users started per second")
    parser.add_argument("--name", default="load", help="results file name (bench/results/NAME.*)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (kept anyway on failure)"
    )
    args = parser.parse_args()
    if args.users < 2:
        parser.error("--users: at least 2 (one is the catalog admin)")
    seconds = args.minutes * 60
    warmup_s = min(120.0, seconds / 5)
    folder = Path(tempfile.mkdtemp(prefix="marquee-load-"))
    service = Service(folder)
    env: Environment | None = None
    # SIGTERM (a CI's timeout, kill) takes the same way out as Ctrl-C: stop the service.
    gevent.signal_handler(signal.SIGTERM, gevent.kill, gevent.getcurrent(), KeyboardInterrupt)
    ok = False
    interrupted = False
    try:
        Config.cms_key, Config.admin_key = service.start()
        print(f"service starting (log: {service.log_path})", flush=True)
        service.wait_ready()
        Observed.reset()
        env = run_load(service, args.users, args.spawn_rate, seconds)
        env.server_metrics = scrape_metrics(service.base)  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping the service", flush=True)
    finally:
        service.stop()
        print(f"service stopped (exit code {service.exit_code})", flush=True)
    if interrupted:
        print(f"nothing written; the service's log is in {folder}")
        sys.exit(130)
    assert env is not None
    ok = report(env, service, args, warmup_s)
    if ok and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"the service's log and database are in {folder}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
