"""The read path under load: what a CMS does on every page view, against the real service.

    .venv/bin/python -m bench.reads [--minutes 10] [--users 32] [--workers 1,2]

Starts `python -m app serve --engine vllm` (managed vLLM) on a temporary SQLite database,
fills the `home_hero` placement with a real pre-generation job (every demo shopper, their
segments, everyone else), then runs locust (library API, one local runner, fast HTTP client) on
the same machine, in two phases: a minute with ``--users`` clients reading as fast as they can
(the capacity: reads/s at saturation), then ``--minutes`` with the same clients together
sending ``--rate`` reads/s (each paced at rate/users a second), where latency is measured:

- 9 reads in 10 for a demo shopper, 1 for a visitor the service has never seen (everyone's
  banner), GET /v1/placements/home_hero/banners/{id};
- 1 read in 4 revalidates the ETag it got before for that id (If-None-Match: 304 expected).

Every 5 s it samples the service's RSS, its CPU and the load generator's, requests/s and
latency. Checks on the paced phase: no errors (200, or 304 to a matching If-None-Match); at
least 1,000 reads/s served with p50 at most 5 ms and p99 at most 25 ms; the service's memory
flat (last third vs first third after warm-up, within 5 %). Writes bench/results/reads.md,
.json and .png; exits 1 if a check failed.
"""

from __future__ import annotations

# isort: off
import locust  # noqa: F401  (patches the standard library for gevent: before anything else)

# isort: on
import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import gevent
import psutil
from locust import FastHttpUser, constant, constant_throughput, task
from locust.env import Environment

from bench.common import describe_machine, pct, write_results
from bench.load import GROWTH_LIMIT_PCT, SAMPLE_S, Service, clean_stop

DATA = Path(__file__).resolve().parent.parent / "data"
SHOPPER_IDS = [
    json.loads(line)["id"] for line in (DATA / "shoppers.jsonl").read_text().splitlines()
]
PLACEMENT = "home_hero"
TARGET_RPS = 1000.0
TARGET_P50_MS = 5.0
TARGET_P99_MS = 25.0


class Reader(FastHttpUser):
    """A CMS rendering pages: one banner read per page view, no think time."""

    wait_time = constant(0)
    key = ""
    etags: dict[str, str] = {}  # shared by every user: what the CMS's cache holds

    @task
    def read(self) -> None:
        shopper = (
            random.choice(SHOPPER_IDS)
            if random.random() < 0.9
            else f"visitor-{random.randrange(10_000)}"
        )
        headers = {"X-API-Key": self.key}
        held = self.etags.get(shopper)
        revalidate = held is not None and random.random() < 0.25
        if revalidate:
            headers["If-None-Match"] = held  # type: ignore[assignment]
        name = "read (revalidate)" if revalidate else "read"
        with self.client.get(
            f"/v1/placements/{PLACEMENT}/banners/{shopper}",
            headers=headers,
            name=name,
            catch_response=True,
        ) as response:
            if response.status_code == 200:
                self.etags[shopper] = response.headers["ETag"]
                response.success()
            elif response.status_code == 304 and revalidate:
                response.success()
            else:
                response.failure(f"{response.status_code}: {(response.text or '')[:200]}")


def call(base: str, method: str, path: str, key: str, body: Any = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{base}{path}",
        data=data,
        method=method,
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def fill(service: Service, admin: str) -> dict[str, Any]:
    """A real job: every demo shopper's banner, their segments', everyone else's."""
    job = call(service.base, "POST", "/v1/jobs", admin, {"placement": PLACEMENT})
    while job["state"] not in ("succeeded", "failed", "cancelled"):
        gevent.sleep(2)
        job = call(service.base, "GET", f"/v1/jobs/{job['id']}", admin)
    if job["state"] != "succeeded":
        raise SystemExit(f"the job did not succeed: {job}")
    return job


def run(
    service: Service, key: str, users: int, seconds: float, rate: float | None
) -> tuple[Environment, list[dict[str, Any]]]:
    """``users`` readers for ``seconds``: as fast as they can (``rate`` None), or together
    ``rate`` reads a second."""
    assert service.process is not None
    Reader.key = key
    Reader.wait_time = constant(0) if rate is None else constant_throughput(rate / users)
    env = Environment(user_classes=[Reader], host=service.base, stop_timeout=0)
    runner = env.create_local_runner()
    processes = service.processes()
    generator = psutil.Process()
    for process in [*processes, generator]:
        process.cpu_percent()  # start the CPU counters
    times: list[float] = []
    env.events.request.add_listener(  # type: ignore[no-untyped-call]
        lambda response_time, **_: times.append(response_time)
    )
    runner.start(users, spawn_rate=users)
    samples: list[dict[str, Any]] = []
    start = last = time.monotonic()
    try:
        while (now := time.monotonic()) - start < seconds:
            gevent.sleep(max(0.0, last + SAMPLE_S - now))
            now = time.monotonic()
            window, times[:] = list(times), []
            samples.append(
                {
                    "t": round(now - start, 1),
                    "rps": len(window) / (now - last),
                    "p50_ms": pct(window, 50),
                    "p99_ms": pct(window, 99),
                    "service_rss_mb": sum(p.memory_info().rss for p in processes) / 2**20,
                    "service_cpu_pct": sum(p.cpu_percent() for p in processes),
                    "generator_cpu_pct": generator.cpu_percent(),
                    "failures": env.stats.total.num_failures,
                }
            )
            last = now
            if len(samples) % 6 == 0:
                s = samples[-1]
                print(
                    f"  t={s['t']:5.0f}s rps={s['rps']:6.0f} p50={s['p50_ms']:5.1f}ms "
                    f"p99={s['p99_ms']:5.1f}ms rss={s['service_rss_mb']:.0f}MB "
                    f"cpu service={s['service_cpu_pct']:.0f}% locust={s['generator_cpu_pct']:.0f}% "
                    f"fail={s['failures']}",
                    flush=True,
                )
    finally:
        runner.quit()
    return env, samples


def memory_growth(values: list[float]) -> tuple[float, float, float]:
    """Median of the first and the last third, and the growth between, in %."""
    if len(values) < 6:
        return float("nan"), float("nan"), float("nan")
    third = len(values) // 3
    first, last = statistics.median(values[:third]), statistics.median(values[-third:])
    return first, last, (last / first - 1) * 100


def plot(samples: list[dict[str, Any]], path: Path, warmup_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, (rate, latency, memory) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    rate.plot(t, [s["rps"] for s in samples], label="reads/s")
    rate.axhline(TARGET_RPS, color="grey", linestyle="--", linewidth=0.8, label="target")
    rate.set_ylabel("reads/s")
    rate.legend(fontsize=8)
    rate.set_title("The read path under load (5 s windows)")
    latency.plot(t, [s["p50_ms"] for s in samples], label="p50")
    latency.plot(t, [s["p99_ms"] for s in samples], label="p99")
    latency.set_ylabel("ms")
    latency.legend(fontsize=8)
    memory.plot(t, [s["service_rss_mb"] for s in samples], color="tab:blue")
    memory.axvline(warmup_s / 60, color="grey", linestyle="--", linewidth=0.8)
    memory.set_ylabel("service RSS (MB)")
    memory.set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=32)
    # A little above the target: what is served must reach it, whatever the pacing's jitter.
    parser.add_argument("--rate", type=float, default=1.05 * TARGET_RPS, help="reads/s offered")
    parser.add_argument(
        "--workers",
        default="1,2",
        help="`serve --workers` counts to compare at capacity, comma-separated; the paced "
        "phase runs with the last",
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    # SIGTERM ends the run through the finally below: the service is stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    folder = Path(tempfile.mkdtemp(prefix="bench-reads-"))
    job: dict[str, Any] | None = None
    scaling: list[tuple[int, Any, float, float]] = []  # workers, stats, CPU service, locust
    stopped = True
    for workers in counts:
        service = Service(folder, workers)  # the same database: filled once
        try:
            cms, admin = service.start()
            service.wait_ready()
            if job is None:
                job = fill(service, admin)
                print(f"filled {PLACEMENT}: {job['done']} banners in {job['id']}", flush=True)
            print(f"capacity, {workers} worker(s): {args.users} readers without pause for 60 s")
            capacity_env, capacity_samples = run(service, cms, args.users, 60, None)
            scaling.append(
                (
                    workers,
                    capacity_env.stats.total,
                    statistics.mean(s["service_cpu_pct"] for s in capacity_samples),
                    statistics.mean(s["generator_cpu_pct"] for s in capacity_samples),
                )
            )
            if workers == counts[-1]:
                print(f"paced: {args.users} readers, {args.rate:g} reads/s together", flush=True)
                env, samples = run(service, cms, args.users, args.minutes * 60, args.rate)
        finally:
            service.stop()
        stopped = stopped and clean_stop(service)
    assert job is not None
    warmup_s = min(120.0, args.minutes * 60 / 5)
    stats = env.stats.total
    after = [s for s in samples if s["t"] >= warmup_s]
    rps = statistics.mean(s["rps"] for s in after) if after else float("nan")
    p50 = stats.get_response_time_percentile(0.5)
    p99 = stats.get_response_time_percentile(0.99)
    first, last, growth = memory_growth([s["service_rss_mb"] for s in after])
    speed_ok = rps >= TARGET_RPS and p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS
    memory_ok = growth == growth and growth <= GROWTH_LIMIT_PCT
    ok = stats.num_failures == 0 and speed_ok and memory_ok and stopped
    rows: list[list[object]] = [
        [
            entry.name,
            entry.num_requests,
            entry.num_failures,
            entry.total_rps,
            entry.get_response_time_percentile(0.5),
            entry.get_response_time_percentile(0.95),
            entry.get_response_time_percentile(0.99),
        ]
        for entry in [*env.stats.entries.values(), stats]
    ]
    cpu_service = statistics.mean(s["service_cpu_pct"] for s in after) if after else float("nan")
    cpu_locust = statistics.mean(s["generator_cpu_pct"] for s in after) if after else float("nan")
    one = scaling[0][1].total_rps
    notes = [
        *(
            f"capacity with {workers} worker(s) (60 s, {args.users} clients without pause): "
            f"{capacity.total_rps:,.0f} reads/s (x{capacity.total_rps / one:.2f}), p50 "
            f"{capacity.get_response_time_percentile(0.5):.1f} ms, p99 "
            f"{capacity.get_response_time_percentile(0.99):.1f} ms, "
            f"{capacity.num_failures} errors; CPU service {cpu_service:.0f} %, locust "
            f"{cpu_locust:.0f} %"
            for workers, capacity, cpu_service, cpu_locust in scaling
        ),
        f"paced: {args.users} clients sending {args.rate:g} reads/s together for "
        f"{args.minutes:g} min to `serve --workers {counts[-1]}`; locust (one process, "
        f"FastHttpUser) on the same {os.cpu_count()} cores as the service; the service with its "
        "defaults otherwise, the managed vLLM idle (reads never generate), SQLite",
        f"CHECK no errors: {'PASS' if stats.num_failures == 0 else 'FAIL'}: "
        f"{stats.num_failures} of {stats.num_requests}",
        f"CHECK speed (after {warmup_s:.0f} s warm-up): {'PASS' if speed_ok else 'FAIL'}: "
        f"{rps:,.0f} reads/s (target {TARGET_RPS:,.0f}), p50 {p50:.1f} ms (target "
        f"{TARGET_P50_MS:g}), p99 {p99:.1f} ms (target {TARGET_P99_MS:g})",
        f"CHECK memory flat: {'PASS' if memory_ok else 'FAIL'}: service {first:,.0f} MB -> "
        f"{last:,.0f} MB ({growth:+.1f} %, limit +{GROWTH_LIMIT_PCT:g} %)",
        f"CHECK stopped cleanly: {'PASS' if stopped else 'FAIL'}",
        f"CPU (100 % = one core): service {cpu_service:.0f} %, load generator {cpu_locust:.0f} %",
        f"filled by {job['id']}: {job['done']} banners",
    ]
    write_results(
        "reads",
        "The read path under load",
        ["request", "requests", "failures", "req/s", "p50 ms", "p95 ms", "p99 ms"],
        rows,
        notes,
        describe_machine(),
    )
    plot(samples, Path(__file__).resolve().parent / "results" / "reads.png", warmup_s)
    (Path(__file__).resolve().parent / "results" / "reads-samples.json").write_text(
        json.dumps(samples, indent=1)
    )
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
