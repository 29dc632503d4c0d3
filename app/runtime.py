"""Building the pipeline from settings: the one place that loads data, models and the index."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from app.campaigns import CampaignBook
from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.generation.engine import Engine, EngineError
from app.hardware import Choice, Component, HardwareProfile, detect
from app.models import is_prepared, model_label, require_gate
from app.pipeline import Pipeline
from app.prompting.templates import TemplateRegistry, load_brand
from app.retrieval.embedder import SentenceEmbedder
from app.retrieval.index import HNSWParams, VectorIndex, build_or_load_index
from app.store.campaigns import CampaignStore
from app.store.db import Database
from app.store.repositories import CatalogChanges
from app.store.templates import TemplateStore

if TYPE_CHECKING:
    from app.generation.vllm_server import VLLMServerConfig

ENGINES = ("transformers", "vllm")
T = TypeVar("T")


def load_data(settings: Settings, *, with_changes: bool = True) -> tuple[Catalog, ShopperStore]:
    """The seed files, with the products, profiles and events written through the API on top
    (``with_changes``). Like ``load_templates``, called where no event loop runs (the CLI, or
    the service's loader thread)."""
    catalog = Catalog.from_file(settings.products_file)
    shoppers = ShopperStore.from_file(settings.shoppers_file, catalog)
    if with_changes:
        changes = asyncio.run(CatalogChanges.load_from(settings.database))
        catalog, _ = catalog.upserted(changes.products)
        catalog = catalog.withdrawing(changes.withdrawn)
        for profile in changes.profiles:
            shoppers.put_profile(profile)
        for shopper_id, events in changes.events.items():
            shoppers.add_events(shopper_id, events)
        shoppers.events_through_row = changes.last_event_row
    return catalog, shoppers


def read_templates(settings: Settings, read: Callable[[TemplateStore], Awaitable[T]]) -> T:
    """Run ``read`` on the template store (templates new in the prompts folder are seeded into
    it first). For callers with no event loop running: the CLI, loader threads, the eval."""

    async def opened() -> T:
        async with Database.upgraded(settings.database) as db:
            store = TemplateStore(db)
            await store.seed(
                settings.prompts_dir, settings.banned_terms, settings.banned_terms_by_language
            )
            return await read(store)

    return asyncio.run(opened())


def load_templates(settings: Settings, *, with_changes: bool = True) -> TemplateRegistry:
    """The templates to serve: the database's labelled versions, or the prompts folder alone
    without ``with_changes``."""
    if not with_changes:
        return TemplateRegistry.from_folder(settings.prompts_dir)
    brand = load_brand(settings.prompts_dir)
    return read_templates(settings, lambda store: store.registry(brand))


def load_campaigns(settings: Settings) -> CampaignBook:
    """The campaigns in the database, for a pipeline built outside the service (the CLI, a
    job's workers); the service follows changes itself (app/server/campaigns)."""

    async def read() -> CampaignBook:
        async with Database.upgraded(settings.database) as db:
            return await CampaignStore(db).book()

    return asyncio.run(read())


def hardware_choices(
    settings: Settings, profile: HardwareProfile | None = None
) -> dict[Component, Choice]:
    """Each component's device, dtype and threads: the settings' explicit values, else what
    this machine runs fastest (``auto``)."""
    profile = profile or detect()
    # Beside a managed vLLM on the same CPU, or beside the other `serve --workers`, this
    # process's torch work shrinks to a few threads (share_cores_with_model_server); the
    # profile reports what will run.
    shares_cores = profile.device == "cpu" and (
        settings.workers > 1 or (settings.engine == "vllm" and settings.vllm_mode == "managed")
    )
    torch_threads = settings.torch_threads_beside_vllm if shares_cores else 0
    return {
        "embedder": profile.choose("embedder", settings.embedding_dtype, torch_threads),
        "llm": profile.choose("llm", settings.llm_dtype, torch_threads),
        "vllm": profile.choose("vllm", settings.vllm_dtype),
    }


def vllm_kv_cache_gb(settings: Settings, profile: HardwareProfile) -> int:
    """The managed server's CPU KV cache: the setting, or the profile's size for 0."""
    return settings.vllm_kv_cache_gb or profile.cpu_kv_cache_gb()


def load_embedder(settings: Settings) -> SentenceEmbedder:
    choice = hardware_choices(settings)["embedder"]
    return SentenceEmbedder(
        settings.embedding_model, settings.embedding_batch_size, choice.dtype, choice.device
    )


def load_index(
    settings: Settings,
    catalog: Catalog,
    embedder: SentenceEmbedder,
    *,
    force: bool = False,
    progress: bool = False,
) -> tuple[VectorIndex, bool]:
    """The catalog's vector index, of the kind the settings choose for its size."""
    return build_or_load_index(
        catalog,
        embedder,
        settings.index_dir,
        kind=settings.index_kind(len(catalog.products)),
        hnsw=HNSWParams(settings.hnsw_m, settings.hnsw_ef_construction, settings.hnsw_ef_search),
        force=force,
        progress=progress,
    )


def make_engine(settings: Settings, name: str | None = None) -> Engine:
    name = name or settings.engine
    if name == "transformers":
        if not is_prepared(settings.llm_folder):
            raise EngineError(
                f"model not prepared in {settings.llm_folder}: run `marquee model prepare`"
            )
        from app.generation.transformers_engine import TransformersEngine

        require_gate(settings.llm_folder)
        choice = hardware_choices(settings)["llm"]
        label = model_label(settings.llm_folder, settings.llm_name)
        return TransformersEngine(settings.llm_folder, label, choice.dtype, choice.device)
    if name == "vllm":
        return make_vllm_engine(settings)
    raise EngineError(f"unknown engine '{name}' (known: {', '.join(ENGINES)})")


def share_cores_with_model_server(torch_threads: int) -> None:
    """Shrink this process's torch thread pool (0: leave it): a model server on the same host
    needs the cores, and a pool wider than the cores it gets stalls at every barrier."""
    if torch_threads > 0:
        import torch

        torch.set_num_threads(torch_threads)


def vllm_server_config(
    settings: Settings, *, host: str = "127.0.0.1", port: int = 0
) -> VLLMServerConfig:
    """How a vLLM server on this machine serves the prepared model: the one recipe for the
    managed server and for `marquee vllm serve` (the CPU image's entry point)."""
    from app.generation.vllm_server import VLLMServerConfig, free_port

    if not is_prepared(settings.llm_folder):
        raise EngineError(
            f"model not prepared in {settings.llm_folder}: run `marquee model prepare`"
        )
    require_gate(settings.llm_folder)
    profile = detect()
    choice = hardware_choices(settings, profile)["vllm"]
    port = port or settings.vllm_port or free_port()
    return VLLMServerConfig(
        model_dir=settings.llm_folder,
        served_name=settings.vllm_served_model or settings.llm_name,
        port=port,
        host=host,
        log_path=settings.vllm_log(port),
        dtype=choice.dtype,
        device=choice.device,
        kv_cache_gb=vllm_kv_cache_gb(settings, profile),
        gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
        max_model_len=settings.vllm_max_model_len,
        startup_timeout_s=settings.vllm_startup_timeout_s,
    )


def make_vllm_engine(settings: Settings) -> Engine:
    """External: a URL, or a pool over several (``vllm_urls``). Managed: start the server on
    the prepared model and wait for it."""
    from app.generation.vllm_engine import VLLMEngine
    from app.generation.vllm_server import ManagedVLLM

    served = settings.vllm_served_model or settings.llm_name
    label = model_label(settings.llm_folder, settings.llm_name)

    def engine(url: str, server: ManagedVLLM | None = None, max_retries: int = 2) -> VLLMEngine:
        return VLLMEngine(
            url,
            label,
            served_model=served,
            api_key=settings.vllm_api_key,
            timeout_s=settings.vllm_request_timeout_s,
            max_in_flight=settings.vllm_max_in_flight,
            server=server,
            send_seed=settings.vllm_send_seed,
            max_retries=max_retries,
        )

    if settings.vllm_mode == "managed":
        server = ManagedVLLM(vllm_server_config(settings))
        server.start()
        server.wait_ready()
        return engine(server.base_url, server)
    if settings.vllm_urls:
        from app.generation.replicas import ReplicaPool

        # One retry still absorbs a keep-alive connection closed while idle; past it, moving
        # on to another replica beats backing off on one that is down.
        return ReplicaPool(
            [engine(url, max_retries=1) for url in settings.vllm_urls],
            cooldown_s=settings.vllm_replica_cooldown_s,
        )
    return engine(settings.vllm_url)


def build_pipeline(
    settings: Settings,
    *,
    engine: Engine | None = None,
    with_engine: bool = True,
    with_changes: bool = True,
    progress: bool = False,
) -> Pipeline:
    """The whole pipeline. ``with_engine=False`` skips loading a model (retrieval, prompts);
    ``with_changes=False`` uses the seed files alone (benchmarks, evaluation)."""
    catalog, shoppers = load_data(settings, with_changes=with_changes)
    embedder = load_embedder(settings)
    index, _ = load_index(settings, catalog, embedder, progress=progress)
    pipeline = Pipeline.assemble(
        settings,
        catalog=catalog,
        shoppers=shoppers,
        embedder=embedder,
        index=index,
        engine=engine or (make_engine(settings) if with_engine else None),
        templates=load_templates(settings, with_changes=with_changes),
        models_dir=settings.index_dir,  # the collaborative model is kept beside the index
    )
    if with_changes:
        pipeline.use_campaigns(load_campaigns(settings))
    return pipeline
