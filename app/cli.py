"""The ``marquee`` command. Errors are one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from app.catalog.loader import CatalogError
from app.config import Settings, get_settings
from app.domain import Banner
from app.generation.engine import EngineError
from app.models import ModelError
from app.prompting.sandbox import TemplateError
from app.store.sealing import SecretUnavailable

if TYPE_CHECKING:
    from app.hardware import Choice, Component
    from app.pipeline import Pipeline

F = TypeVar("F", bound=Callable[..., Any])
EXPECTED_ERRORS = (
    CatalogError,
    TemplateError,
    ModelError,
    EngineError,
    KeyError,
    ValueError,
    OSError,
    SecretUnavailable,
)


def clear_errors(command: F) -> F:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EXPECTED_ERRORS as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            click.echo(f"error: {message}", err=True)
            sys.exit(2 if isinstance(error, KeyError | ValueError) else 1)

    return wrapper  # type: ignore[return-value]


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log what each stage does.")
def cli(verbose: bool) -> None:
    """Marquee: personalized homepage banners, grounded in the catalog."""
    from app.logs import configure_logging

    # Readable lines on stderr for commands run by hand (`serve` switches to JSON lines).
    configure_logging(json_lines=False, level=logging.INFO if verbose else logging.WARNING)


@cli.group()
def model() -> None:
    """Prepare the models (once, into the cache folder)."""


@model.command("prepare")
@click.option("--force", is_flag=True, help="Convert again even if the folder is ready.")
@clear_errors
def model_prepare(force: bool) -> None:
    """Convert the packaged GGUF to a model folder, merge the house-style adapter into it
    (MARQUEE_LLM_ADAPTER), and check the embedding model loads."""
    from app.models import prepare_served, resolve_embedding_model

    settings = get_settings()
    folder = prepare_served(settings, force)
    merged = settings.llm_adapter if settings.llm_dir is None else None  # what prepare merged
    adapter = f" + {merged.name}" if merged is not None else ""
    click.echo(f"generation model: {settings.llm_name}{adapter} -> {folder}")
    click.echo(f"embedding model: {resolve_embedding_model(settings.embedding_model)}")


@model.command("data")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Folder for train.jsonl, held_out.jsonl and summary.json.",
)
@click.option(
    "--with-examples",
    is_flag=True,
    help="Keep the templates' few-shot examples in the prompts (as served to the packaged "
    "model); by default a trained model's prompts go without them.",
)
@clear_errors
def model_data(out_dir: Path, with_examples: bool) -> None:
    """Write the house-style training set (data/house_style) as chat rows, its prompts
    rendered by the templates, after checking every example against the grammar and the
    rubric."""
    from app.training.dataset import build

    settings = get_settings()
    tokenizer = None
    if settings.llm_folder.exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(settings.llm_folder)
    summary = build(settings, out_dir, with_examples=with_examples, tokenizer=tokenizer)
    for split, count in summary.rows.items():
        click.echo(f"{split}: {count} rows, {summary.categories[split]} categories")
    if tokenizer is not None:
        click.echo(
            f"prompt tokens: {summary.prompt_tokens_with_examples:.0f} with the templates' "
            f"examples, {summary.prompt_tokens_without_examples:.0f} without; answer "
            f"{summary.answer_tokens:.0f}"
        )
    click.echo(f"written to {out_dir}")


@model.command("train")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="What `marquee model data` wrote.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Folder for the merged model (model/), the adapter and training.json.",
)
@click.option("--epochs", type=click.FloatRange(0.01, 20), default=2.0, show_default=True)
@click.option("--learning-rate", type=click.FloatRange(1e-6, 1e-2), default=2e-4, show_default=True)
@click.option("--rank", type=click.IntRange(1, 256), default=16, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option(
    "--max-steps", type=click.IntRange(min=1), default=None, help="Stop after these steps."
)
@click.option(
    "--limit-rows", type=click.IntRange(min=1), default=None, help="Learn from these rows only."
)
@clear_errors
def model_train(
    data_dir: Path,
    out_dir: Path,
    epochs: float,
    learning_rate: float,
    rank: int,
    batch_size: int,
    max_steps: int | None,
    limit_rows: int | None,
) -> None:
    """Train a LoRA adapter on the served model from `marquee model data`'s rows and merge
    it into a model folder. It serves nobody until the gate passes it."""
    from app.hardware import detect
    from app.training.train import TrainConfig, train

    settings = get_settings()
    dtype = detect().choose("llm", settings.llm_dtype).dtype
    report = train(
        TrainConfig(
            data_dir=data_dir,
            # The packaged model (or MARQUEE_LLM_DIR's): an adapter learns from the base, so
            # a retrained one replaces the shipped one rather than stacking on it.
            base_model=settings.llm_dir or settings.llm_base_folder,
            out_dir=out_dir,
            epochs=epochs,
            learning_rate=learning_rate,
            rank=rank,
            batch_size=batch_size,
            max_steps=max_steps or -1,
            limit_rows=limit_rows or 0,
            dtype=dtype,
        )
    )
    click.echo(
        f"{report.steps} steps on {report.rows} rows in {report.seconds:.0f} s ({dtype}); "
        f"held-out loss {report.held_out_loss_before:.3f} -> {report.held_out_loss_after:.3f}"
    )
    click.echo(f"model: {out_dir / 'model'}")


@model.command("gate")
@click.option(
    "--candidate",
    "candidate_dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="A trained model folder (what `marquee model train` wrote under model/).",
)
@click.option("--prompts", type=click.IntRange(1, 1000), default=60, show_default=True)
@click.option("--samples", type=click.IntRange(1, 8), default=4, show_default=True)
@clear_errors
def model_gate(candidate_dir: Path, prompts: int, samples: int) -> None:
    """Judge a trained model against the served one on held-out categories; only a model
    that passes may be served (MARQUEE_LLM_DIR)."""
    from app.generation.transformers_engine import TransformersEngine
    from app.runtime import hardware_choices
    from app.training.gate import run_gate

    settings = get_settings()
    choice = hardware_choices(settings)["llm"]

    def engine_on(folder: Path) -> TransformersEngine:
        # Straight to the engine: the candidate has no verdict yet, which is the point.
        return TransformersEngine(folder, folder.name, choice.dtype, choice.device)

    report = run_gate(settings, candidate_dir, engine_on, prompts=prompts, samples=samples)
    for name, scored in report.scores.items():
        low, high = scored.as_json()["publishable_banner_interval"]
        click.echo(
            f"{name}: publishable banners {scored.publishable_banner_share:.1%} "
            f"[{low:.1%}, {high:.1%}], hard findings {scored.hard_share:.1%} of "
            f"{scored.answers} answers, {scored.invalid} not the schema"
        )
    click.echo(f"{'passed' if report.passed else 'refused'}: {report.why}")
    if not report.passed:
        sys.exit(1)


@model.command("promote")
@click.option(
    "--candidate",
    "candidate_dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="A trained model folder the gate passed (OUT/model; its adapter is OUT/adapter).",
)
@click.option(
    "--to",
    "target",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="The adapter folder to write (default: the project's, models/house-style).",
)
@clear_errors
def model_promote(candidate_dir: Path, target: Path | None) -> None:
    """Make a gated trained model the adapter `marquee model prepare` merges and every
    engine serves: refused unless its gate passed against the model served now."""
    from app.config import HOUSE_STYLE_ADAPTER
    from app.training.promote import promote

    settings = get_settings()
    written = promote(
        candidate_dir,
        settings.llm_folder,
        settings.llm_source,
        settings.llm_name,
        target or HOUSE_STYLE_ADAPTER,
    )
    click.echo(f"adapter: {written} (run `marquee model prepare` to serve it)")


@cli.command()
@click.option("--probe/--no-probe", default=True, help="Measure speeds for ~3 s (default on).")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
@clear_errors
def doctor(probe: bool, as_json: bool) -> None:
    """What this machine offers and what each component runs with (dtype, threads), and why."""
    from app.hardware import detect
    from app.models import describe
    from app.runtime import hardware_choices, vllm_kv_cache_gb

    settings = get_settings()
    served = describe(settings.llm_folder)
    profile = detect()
    choices = hardware_choices(settings, profile)
    kv_cache_gb = vllm_kv_cache_gb(settings, profile)
    speeds: dict[str, str] = {}
    if probe:
        speeds = _probe_speeds(settings, choices)
    if as_json:
        report = {
            **profile.to_dict(),
            "choices": {name: dataclasses.asdict(choice) for name, choice in choices.items()},
            "vllm_kv_cache_gb": kv_cache_gb,
            "model": served,
            "probe": speeds,
        }
        click.echo(json.dumps(report, indent=2))
        return
    cpu = profile.cpu
    click.echo(f"cpu: {cpu.model} ({cpu.arch}), {cpu.cores} cores, {cpu.memory_gb} GB")
    click.echo(
        f"     widest vector isa {cpu.vector_isa}; torch kernels {cpu.torch_capability}; "
        f"native bf16: {'yes' if cpu.native_bf16 else 'no'}"
        + (f"; ONEDNN_MAX_CPU_ISA={cpu.onednn_max_isa}" if cpu.onednn_max_isa else "")
    )
    for gpu in profile.gpus:
        major, minor = gpu.capability
        click.echo(f"gpu: {gpu.name}, compute {major}.{minor}, {gpu.memory_gb} GB")
    if not profile.gpus:
        click.echo("gpu: none")
    for name, choice in choices.items():
        click.echo(
            f"{name + ':':<9} {choice.device} {choice.dtype}, {choice.threads} threads  "
            f"({choice.reason})"
        )
    if profile.device == "cpu":
        click.echo(f"          vLLM KV cache {kv_cache_gb} GB")
    click.echo(f"model:    {served}")
    for component, speed in speeds.items():
        click.echo(f"probe {component}: {speed}")


def _probe_speeds(settings: Settings, choices: dict[Component, Choice]) -> dict[str, str]:
    """~1.5 s of embedding and ~1.5 s of decoding, each in the dtype chosen for it."""
    from app.catalog.store import Catalog
    from app.models import is_prepared
    from app.probe import probe_decode, probe_embedder
    from app.retrieval.embedder import product_text
    from app.runtime import load_embedder

    speeds: dict[str, str] = {}
    texts = [product_text(p) for p in Catalog.from_file(settings.products_file).products[:32]]
    result = probe_embedder(load_embedder(settings), texts, seconds=1.5)
    dtype = choices["embedder"].dtype
    speeds["embedder"] = f"{result.rate:.1f} {result.unit} ({dtype})"
    if is_prepared(settings.llm_folder):
        llm = choices["llm"]
        result = probe_decode(settings.llm_folder, llm.dtype, llm.device, seconds=1.5)
        speeds["llm"] = f"{result.rate:.1f} {result.unit} ({llm.dtype}, in-process decode)"
    else:
        speeds["llm"] = "skipped: model not prepared (run `marquee model prepare`)"
    return speeds


@cli.group()
def index() -> None:
    """The catalog's vector index."""


@index.command("build")
@click.option("--force", is_flag=True, help="Rebuild even if the stored index is fresh.")
@clear_errors
def index_build(force: bool) -> None:
    """Embed the catalog (with a progress bar) and store the index, then fit the collaborative
    model on the shoppers' histories and store it beside the index."""
    import time

    from app.retrieval.collaborative import SavedModel
    from app.retrieval.signals import InteractionSignals
    from app.runtime import load_data, load_embedder, load_index

    settings = get_settings()
    catalog, shoppers = load_data(settings)
    embedder = load_embedder(settings)
    built, rebuilt = load_index(settings, catalog, embedder, force=force, progress=True)
    state = "built" if rebuilt else "fresh, reused"
    click.echo(
        f"index {state}: {built.vectors.shape[0]} products x {built.vectors.shape[1]} dims "
        f"({built.kind}) -> {settings.index_dir}"
    )
    saved = SavedModel(settings.index_dir)
    if force:
        saved.path.unlink(missing_ok=True)
    started = time.perf_counter()
    signals = InteractionSignals.from_settings(catalog, shoppers, settings, saved)
    state = "fresh, reused" if saved.reused else "fitted"
    click.echo(
        f"collaborative model {state}: {signals.model.name} on {len(shoppers)} shoppers' "
        f"histories ({time.perf_counter() - started:.1f} s) -> {saved.path}"
    )


def _filters(
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    min_price: float | None,
    max_price: float | None,
) -> Any:
    from app.retrieval.selector import CandidateFilters

    return CandidateFilters(
        include_categories=include,
        exclude_categories=exclude,
        min_price=min_price,
        max_price=max_price,
    )


filter_options = [
    click.option("--include-category", "include", multiple=True, help="Only these categories."),
    click.option("--exclude-category", "exclude", multiple=True, help="Never these categories."),
    click.option("--min-price", type=float, default=None),
    click.option("--max-price", type=float, default=None),
]


def with_filters(command: F) -> F:
    for option in reversed(filter_options):
        command = option(command)
    return command


@cli.command()
@click.option("--user", "user", required=True, help="Shopper id (unknown ids are cold start).")
@click.option("--template", default="hero_banner", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_filters
@clear_errors
def candidates(
    user: str,
    template: str,
    as_json: bool,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    min_price: float | None,
    max_price: float | None,
) -> None:
    """Show what retrieval picks for a shopper, and why."""
    from app.runtime import build_pipeline

    settings = get_settings()
    pipeline = build_pipeline(settings, with_engine=False, progress=True)
    shopper = pipeline.shoppers.get(user)
    selection = pipeline.candidates(
        shopper, pipeline.templates.get(template), _filters(include, exclude, min_price, max_price)
    )
    shoppers = pipeline.shoppers
    trace = selection.trace
    if as_json:
        click.echo(
            json.dumps(
                {
                    "shopper": user,
                    "known": shoppers.known(user),
                    "cold_start": trace.cold_start,
                    "signals": trace.signals,
                    "pool_size": trace.pool_size,
                    "removed": trace.removed,
                    "candidates": [c.model_dump(mode="json") for c in selection.candidates],
                },
                indent=2,
            )
        )
        return
    click.echo(
        f"shopper {user} ({'known' if shoppers.known(user) else 'unknown'}, "
        f"segment {shopper.segment}, {len(shopper.history)} events, "
        f"interests: {', '.join(shopper.interests) or '-'})"
    )
    click.echo(
        f"cold start: {trace.cold_start}; blend: "
        + ", ".join(f"{k} {v:.2f}" for k, v in trace.signals.items())
    )
    click.echo(
        "filters removed: "
        + (", ".join(f"{k} {v}" for k, v in trace.removed.items()) or "nothing")
        + f"; {trace.allowed} allowed; pool {trace.pool_size}; "
        f"MMR lambda {settings.mmr_lambda}"
    )
    click.echo(
        f"{'#':>2}  {'id':<8} {'sem':>5} {'cf':>5} {'pop':>5} {'rel':>5} {'mmr':>6}  "
        f"{'source':<13} title"
    )
    for c in selection.candidates:
        s = c.scores
        click.echo(
            f"{c.number:>2}  {c.product.id:<8} {s.semantic:5.2f} {s.collaborative:5.2f} "
            f"{s.popularity:5.2f} {s.relevance:5.2f} {s.mmr:6.3f}  {c.source:<13} "
            f"{c.product.title} ({c.product.category}, ${c.product.price:.2f})"
        )


engine_option = click.option(
    "--engine",
    type=click.Choice(["transformers", "vllm"]),
    default=None,
    help="Generation engine (default: MARQUEE_ENGINE; vllm starts a managed server unless "
    "MARQUEE_VLLM_MODE=external).",
)


def print_banner(banner: Banner) -> None:
    flag = "  [FALLBACK]" if banner.fallback else ""
    click.echo(
        f"── {banner.id}  {banner.template} v{banner.template_version}  "
        f"shopper {banner.shopper_id}  variant {banner.variant}{flag}"
    )
    click.echo(f"   {banner.headline}")
    click.echo(f"   {banner.subheadline}")
    badge = f"  badge: {banner.badge}" if banner.badge else ""
    click.echo(f"   [{banner.cta}]  layout: {banner.layout}  tone: {banner.tone}{badge}")
    if banner.theme is not None:
        instead = f", instead of {banner.theme.instead_of}" if banner.theme.instead_of else ""
        click.echo(f"   theme: {banner.theme.name} ({banner.theme.why}{instead})")
    for product in banner.products:
        click.echo(f"   • {product.title}  {product.currency} {product.price:.2f}  ({product.id})")
    t = banner.timings
    click.echo(
        f"   retries {banner.retries}, {banner.output_tokens} tokens, "
        f"retrieval {t.retrieval_ms:.0f} ms, generation {t.generation_ms:.0f} ms, "
        f"total {t.total_ms:.0f} ms"
    )
    for flag_text in banner.flags[:4]:
        click.echo(f"   ! {flag_text}")


def run_with_pipeline(
    settings: Settings, engine: str | None, work: Callable[[Pipeline], Awaitable[None]]
) -> None:
    """Build the pipeline, then run ``work`` on it and close its engine in one event loop.

    The pipeline is built before any loop runs: its loaders read the database with
    ``asyncio.run`` of their own, which cannot run inside another loop. The engine's HTTP
    client belongs to the loop that first uses it, so the work and the close share one.
    """
    from app.runtime import build_pipeline, make_engine

    pipeline = build_pipeline(settings, engine=make_engine(settings, engine), progress=True)

    async def run() -> None:
        try:
            await work(pipeline)
        finally:
            await pipeline.close()

    asyncio.run(run())


@cli.command()
@click.option("--user", "users", required=True, multiple=True, help="Shopper id (repeatable).")
@click.option("--template", default=None, help="Template name (default: the placement's).")
@click.option(
    "--count", default=1, show_default=True, type=click.IntRange(1, 8), help="Variants per shopper."
)
@engine_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print banners as JSON Lines (one object a line)."
)
@with_filters
@clear_errors
def generate(
    users: tuple[str, ...],
    template: str | None,
    count: int,
    engine: str | None,
    as_json: bool,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    min_price: float | None,
    max_price: float | None,
) -> None:
    """Generate banners for shoppers."""
    from app.pipeline import BannerRequest

    filters = _filters(include, exclude, min_price, max_price)

    async def work(pipeline: Pipeline) -> None:
        for user in users:
            banners = await pipeline.generate(
                BannerRequest(shopper_id=user, template=template, count=count, filters=filters)
            )
            for banner in banners:
                if as_json:  # JSON Lines: one banner per line, printed as it is made
                    click.echo(banner.model_dump_json())
                else:
                    print_banner(banner)

    run_with_pipeline(get_settings(), engine, work)


@cli.command()
@click.option(
    "--shoppers",
    default=2,
    show_default=True,
    type=click.IntRange(1, 100),
    help="How many demo shoppers: one without history, the rest with one.",
)
@engine_option
@clear_errors
def demo(shoppers: int, engine: str | None) -> None:
    """Banners from every template for a few demo shoppers (a warm one, a cold one...)."""
    from app.runtime import load_data

    settings = get_settings()
    _, store = load_data(settings)
    everyone = store.all()
    warm = [s.id for s in everyone if s.history][: max(1, shoppers - 1)]
    cold = [s.id for s in everyone if not s.history][:1]
    users = (warm + cold)[:shoppers]

    async def work(pipeline: Pipeline) -> None:
        from app.pipeline import BannerRequest

        for user in users:
            for name in pipeline.templates.names:
                prepared = pipeline.prepare(BannerRequest(shopper_id=user, template=name))
                if prepared.empty:  # nothing back in stock for them: no banner, as a page
                    focus = prepared.template.header.retrieval.focus
                    click.echo(f"·· {name}  shopper {user}  nothing to show ({focus})")
                    continue
                for banner in await pipeline.complete(prepared):
                    print_banner(banner)

    run_with_pipeline(settings, engine, work)


@cli.command()
@click.option("--placement", required=True, help="The placement to fill (home_hero, ...).")
@click.option(
    "--shoppers",
    "selection",
    default="all",
    show_default=True,
    help="Whom for: all, segment:NAME, or ids:FILE (one shopper id a line).",
)
@click.option("--stale-only", is_flag=True, help="Only what is missing or stale.")
@engine_option
@click.option("--json", "as_json", is_flag=True, help="Print the finished job as JSON.")
@clear_errors
def pregenerate(
    placement: str, selection: str, stale_only: bool, engine: str | None, as_json: bool
) -> None:
    """Generate a placement's banners ahead of time, for every selected shopper, their
    segments and everyone else, sharded over Ray workers. Run it again after an interruption:
    it resumes, and what was finished is not made again."""
    from app.pregeneration.jobs import run_job

    job = run_job(get_settings(), placement, selection, stale_only, engine, progress=not as_json)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(job), default=str))
    else:
        rate = f", {job.banners_per_s:.2f} banners/s" if job.banners_per_s else ""
        click.echo(
            f"job {job.id} {job.state}: {job.done}/{job.total} made, {job.failures} failed, "
            f"{job.fallbacks} fallback{rate}"
        )
        if job.error:
            click.echo(f"error: {job.error}", err=True)
    if job.state != "succeeded":
        sys.exit(1)


@cli.command()
@engine_option
@click.option("--host", default=None, help="Bind address (default: MARQUEE_HOST, 127.0.0.1).")
@click.option("--port", default=None, type=click.IntRange(1, 65535), help="Default 8000.")
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(1, 64),
    help="Processes serving the API on the port, each a whole replica "
    "(default: MARQUEE_WORKERS, 1).",
)
@clear_errors
def serve(engine: str | None, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the HTTP API (and, with --engine vllm in managed mode, the vLLM server)."""
    from app.logs import configure_logging
    from app.runtime import share_cores_with_model_server
    from app.server.workers import serve as run_service
    from app.tracing import configure_tracing, trace_mode

    updates: dict[str, Any] = {"engine": engine} if engine else {}
    if host:
        updates["host"] = host
    if port:
        updates["port"] = port
    if workers:
        updates["workers"] = workers
    settings = get_settings().model_copy(update=updates)
    if settings.engine == "vllm" and settings.vllm_mode == "managed":
        share_cores_with_model_server(settings.torch_threads_beside_vllm)
    # stdout carries only the JSON log stream (every logger, one event per line); what is
    # meant for the person at the terminal goes to stderr.
    configure_logging(json_lines=True)
    traces = trace_mode(settings.traces)
    configure_tracing(traces)
    base = f"http://{settings.host}:{settings.port}"
    click.echo(
        f"Marquee on {base} (engine: {settings.engine}, traces: {traces}); docs at {base}/docs",
        err=True,
    )
    click.echo(f"  ready when: curl -s {base}/readyz", err=True)
    click.echo(
        f"  a banner:   curl -s -X POST {base}/v1/banners -H 'X-API-Key: <key>' "
        "-H 'Content-Type: application/json' -d '{\"shopper_id\": \"u004\"}'",
        err=True,
    )
    run_service(settings)


@cli.group()
def vllm() -> None:
    """A vLLM server for the prepared model, outside the service (containers, other hosts)."""


@vllm.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@clear_errors
def vllm_serve(host: str, port: int) -> None:
    """Run vLLM's OpenAI server in the foreground with the managed server's flags, the dtype
    and KV cache chosen for this machine (`marquee doctor` shows them)."""
    import os

    from app.generation.vllm_server import ManagedVLLM
    from app.runtime import vllm_server_config

    config = vllm_server_config(get_settings(), host=host, port=port)
    command = ManagedVLLM(config).command()
    click.echo(f"vLLM on {host}:{port}: {config.device} {config.dtype}", err=True)
    sys.stdout.flush()
    os.execve(command[0], command, {**os.environ, **config.environment()})


class OneLineUsageErrors(click.Group):
    """Usage errors (an unknown scope, days out of range, a missing id) as one ``error:`` line
    and exit 2, like every other error here, instead of click's usage block."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as error:
            _fail(error.format_message())


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@cli.group(cls=OneLineUsageErrors)
def keys() -> None:
    """API keys (stored hashed; a key is shown once, when created or rotated)."""


# 100 years: beyond any sensible lifetime, and far from where datetime overflows.
expires_days_option = click.option(
    "--expires-days",
    type=click.IntRange(1, 36500),
    default=None,
    help="Days until the key stops working (default: never).",
)


def _expiry(days: int | None) -> datetime | None:
    return None if days is None else datetime.now(UTC) + timedelta(days=days)


@keys.command("create")
@click.option("--name", required=True)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(["cms", "marketer", "admin"]),
)
@expires_days_option
@clear_errors
def keys_create(name: str, scopes: tuple[str, ...], expires_days: int | None) -> None:
    """Create a key and print it."""
    from app.store.repositories import ApiKeyStore

    expires_at = _expiry(expires_days)
    key = asyncio.run(
        ApiKeyStore.using(
            _database_url(), lambda store: store.create(name, scopes, expires_at=expires_at)
        )
    )
    click.echo(key)


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else moment.strftime("%Y-%m-%d %H:%M")


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@clear_errors
def keys_list(as_json: bool) -> None:
    """Every key (never the key itself): revoked and expired ones too. Times are UTC."""
    from app.store.repositories import ApiKeyStore

    infos = asyncio.run(ApiKeyStore.using(_database_url(), lambda store: store.list()))
    now = datetime.now(UTC)
    if as_json:
        rows = [{**dataclasses.asdict(info), "status": info.status(now)} for info in infos]
        click.echo(json.dumps(rows, indent=2, default=lambda moment: moment.isoformat()))
        return
    if not infos:
        click.echo("no API keys", err=True)
        return
    table = [("ID", "NAME", "SCOPES", "CREATED", "EXPIRES", "LAST USED", "STATUS")] + [
        (
            info.id,
            info.name,
            ",".join(info.scopes),
            _when(info.created_at),
            _when(info.expires_at),
            _when(info.last_used_at),
            info.status(now),
        )
        for info in infos
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@keys.command("revoke")
@click.argument("key_id")
@clear_errors
def keys_revoke(key_id: str) -> None:
    """Revoke a key for good (revoking it again is harmless)."""
    from app.store.repositories import ApiKeyStore

    if not asyncio.run(ApiKeyStore.using(_database_url(), lambda store: store.revoke(key_id))):
        _fail(f"no API key with id '{key_id}'")
    click.echo(f"revoked {key_id}", err=True)


@keys.command("rotate")
@click.argument("key_id")
@expires_days_option
@clear_errors
def keys_rotate(key_id: str, expires_days: int | None) -> None:
    """Replace a key: print a new one with the same name and scopes; the old one is revoked."""
    from app.store.repositories import ApiKeyStore

    expires_at = _expiry(expires_days)
    try:
        key = asyncio.run(
            ApiKeyStore.using(
                _database_url(), lambda store: store.rotate(key_id, expires_at=expires_at)
            )
        )
    except LookupError as error:
        _fail(str(error))
    click.echo(key)
    click.echo(f"revoked {key_id}; the new key is shown once", err=True)


@cli.group("db")
def database() -> None:
    """The database schema. The service and every command bring it to the newest migration
    themselves; `upgrade` does it as a separate release step."""


def _database_url() -> str:
    settings = get_settings()
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    return settings.database


@database.command("upgrade")
@clear_errors
def db_upgrade() -> None:
    """Apply the migrations the database lacks."""
    from app.store.db import Database

    async def upgrade() -> str | None:
        async with Database.upgraded(_database_url()) as db:
            return await db.revision()

    click.echo(f"database at revision {asyncio.run(upgrade())}")


@database.command("status")
@clear_errors
def db_status() -> None:
    """The database's revision and the newest one; exits 1 when migrations are pending."""
    from app.store.db import Database, head_revision

    async def revision() -> str | None:
        db = Database(_database_url())  # read only: not upgraded
        try:
            return await db.revision()
        finally:
            await db.dispose()

    current, head = asyncio.run(revision()), head_revision()
    click.echo(f"database: {current or 'no migration applied'}; newest migration: {head}")
    if current != head:
        sys.exit(1)


@database.command("revision")
@click.option("--message", "-m", required=True, help="What the schema change is.")
@clear_errors
def db_revision(message: str) -> None:
    """Write a migration for what the models changed (compared with the database, brought to
    the newest migration first). Review it before committing: renames look like drop + add."""
    from alembic import command

    from app.store.db import Database, alembic_config, head_revision

    # Numbered in order (0002, 0003, ...): the folder reads as the schema's history.
    number = f"{int(head_revision() or 0) + 1:04d}"

    async def write() -> None:
        async with Database.upgraded(_database_url()) as db, db.engine.begin() as connection:
            await connection.run_sync(
                lambda sync: command.revision(
                    alembic_config(sync), message=message, autogenerate=True, rev_id=number
                )
            )

    asyncio.run(write())


@cli.group("webhooks")
def webhooks() -> None:
    """Webhook endpoints' signing secrets, sealed in the database (MARQUEE_WEBHOOK_SECRET_KEYS)."""


@webhooks.command("new-key")
def webhooks_new_key() -> None:
    """Print a new key for MARQUEE_WEBHOOK_SECRET_KEYS (put it first to rotate)."""
    from app.store.sealing import new_key

    click.echo(new_key())


@webhooks.command("seal-secrets")
@clear_errors
def webhooks_seal_secrets() -> None:
    """Seal every stored secret under the first key: plain ones (stored before a key was set)
    and ones sealed under an older key. All or nothing; run it again after a key rotation."""
    from app.store.db import Database
    from app.store.webhooks import WebhookStore

    async def seal() -> tuple[int, int]:
        async with Database.upgraded(_database_url()) as db:
            return await WebhookStore(db, get_settings().webhook_sealer()).seal_secrets()

    count, plain = asyncio.run(seal())
    click.echo(f"{count} webhook secrets sealed under the first key ({plain} were plain)")


@cli.group("eval", invoke_without_command=True)
@click.option(
    "--suite",
    type=click.Choice(["smoke", "full"]),
    default="smoke",
    show_default=True,
    help="smoke: the demo data, a few banners (CI); full: MovieLens, clothing reviews, more.",
)
@engine_option
@click.option(
    "--compare",
    nargs=2,
    default=None,
    metavar="A B",
    help="A/B two arms on the same shoppers: hero_banner@2, hero_banner:staging, engine:vllm.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where summary.json and report.html go (default .cache/eval/<suite>).",
)
@click.option(
    "--baseline",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="An earlier run's summary.json: print each copy metric's change with its interval.",
)
@click.pass_context
@clear_errors
def evaluate(
    context: click.Context,
    suite: str,
    engine: str | None,
    compare: tuple[str, str] | None,
    out_dir: Path | None,
    baseline: Path | None,
) -> None:
    """Measure retrieval and copy quality; write a JSON summary and an HTML report.

    Exits 1 when a threshold in eval/thresholds.yaml is not met. `marquee eval tune` chooses
    the retrieval settings instead.
    """
    if context.invoked_subcommand is not None:
        return
    from eval.runner import run

    outcome = run(
        get_settings(), suite, engine=engine, compare=compare, out_dir=out_dir, baseline=baseline
    )
    for check in outcome.checks:
        mark = "pass" if check["passed"] else "FAIL"
        against = f" ({check['against']})" if check["against"] else ""
        click.echo(
            f"{mark}  {check['metric']} {check['op']} {check['bound']}{against}: {check['value']}"
        )
    folder = out_dir or get_settings().cache_dir / "eval" / suite
    click.echo(f"report: {folder / 'report.html'}")
    if not outcome.passed:
        sys.exit(1)


@evaluate.command("tune")
@click.option(
    "--dataset",
    type=click.Choice(["movielens", "demo"]),
    default="movielens",
    show_default=True,
    help="Where to tune: MovieLens-100k, or the configured catalog and shoppers (demo).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where tuned.env and tune.json go (default .cache/eval/tune/<dataset>).",
)
@clear_errors
def evaluate_tune(dataset: str, out_dir: Path | None) -> None:
    """Choose the retrieval blend (weights, collaborative model, session share, MMR) on a
    validation split, never the test split; report it on the test split beside the defaults;
    write it as a settings file the service reads with MARQUEE_SETTINGS_FILE."""
    from tqdm import tqdm

    from app.runtime import load_embedder
    from eval import datasets, tuning

    settings = get_settings()
    loaded = datasets.movielens(settings) if dataset == "movielens" else datasets.demo(settings)
    embedder = load_embedder(settings)
    with tqdm(unit="setting", desc="validation", file=sys.stderr) as bar:

        def advance(done: int, total: int, ndcg: float) -> None:
            bar.total = total
            bar.update(1)
            bar.set_postfix(ndcg10=f"{ndcg:.4f}", refresh=False)

        tuned = tuning.tune(loaded, embedder, settings, on_point=advance)
    settings_file, report = tuning.write(
        tuned, out_dir or settings.cache_dir / "eval" / "tune" / dataset
    )
    points = len(tuned.validation)
    click.echo(f"validation NDCG@10, best {min(5, points)} of {points}:")
    for point, ndcg in tuned.validation[:5]:
        shown = ", ".join(f"{name}={value}" for name, value in point.items())
        click.echo(f"  {ndcg:.4f}  {shown}")
    click.echo("test split:")
    for name, row in tuned.test.items():
        click.echo(
            f"  {name:8} NDCG@10 {row['ndcg@10']:.4f} "
            f"[{row['ndcg@10_ci'][0]:.4f}, {row['ndcg@10_ci'][1]:.4f}]  "
            f"Recall@10 {row['recall@10']:.4f}"
        )
    click.echo(f"settings: {settings_file}  (MARQUEE_SETTINGS_FILE={settings_file})")
    click.echo(f"report: {report}")


def main() -> None:
    cli(prog_name="marquee")
