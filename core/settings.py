"""One flat settings object, read once from `EDITLOOP_*` environment variables (and `.env`)."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDITLOOP_", env_file=".env", extra="ignore", frozen=True)

    data_dir: Path = Field(Path(".editloop"), description="Where the embedded database and artifacts live.")
    database_url: str | None = Field(
        None, description="SQLAlchemy or libpq URL; unset means the embedded SQLite file in data_dir."
    )

    broker_url: str | None = Field(
        None, description="Celery broker, e.g. redis://host:6379/0; unset means a SQLite file in data_dir."
    )
    refresh_interval_s: float = Field(
        300, gt=0, description="How often beat builds training rows and checks the retraining triggers."
    )
    task_time_limit_s: int = Field(
        6 * 3600, gt=0, description="Longest task (training); the Redis visibility timeout is set above it."
    )

    # Ingest limits: refused with a 4xx naming the limit.
    max_request_bytes: int = Field(8 * 1024 * 1024, gt=0, description="Largest request body accepted.")
    max_events_per_batch: int = Field(1000, gt=0, description="Most events in one POST /v1/events.")
    max_text_chars: int = Field(200_000, gt=0, description="Longest text field (prompt, completion, ...).")
    max_metadata_bytes: int = Field(16_384, gt=0, description="Largest `metadata` object, as JSON.")
    max_future_skew_s: int = Field(86_400, ge=0, description="How far in the future occurred_at may be.")
    min_occurred_year: int = Field(2000, description="occurred_at before this year is refused as absurd.")

    artifacts_dir: Path | None = Field(
        None,
        description="Where adapter versions are stored (a shared volume in production); unset: data_dir/artifacts.",
    )
    run_heartbeat_stale_s: float = Field(
        600, gt=0, description="A running training run silent this long is taken for dead (its worker was killed)."
    )
    run_max_attempts: int = Field(2, ge=1, description="Times a run is started before a dead worker fails it.")
    deletion_step_pause_ms: float = Field(
        0.0,
        ge=0,
        description="A deletion's worker rests this long between its short transactions, leaving the database and the"
        " CPU to ingest (benchmarks/deletion.py).",
    )

    auth_cache_ttl_s: float = Field(30.0, ge=0, description="How long a verified API key is cached in-process.")
    db_pool_size: int = Field(10, gt=0, description="Connections per process (Postgres).")

    # The join of events into generations (feedback/fold.py).
    ingest_fold: Literal["inline", "deferred"] = Field(
        "deferred",
        description="deferred: ingest appends events and a folder folds them into `generations` shortly after, in"
        " batches (reads fold what is still queued first, so they never lag); inline: each ingest transaction folds"
        " its own. SQLite always folds inline.",
    )
    fold_delay_ms: float = Field(
        50.0,
        ge=0,
        description="How long the folder waits after an ingest commit before it folds, so that feedback posted right"
        " after its generation folds with it.",
    )
    rows_partitions: int = Field(
        0,
        ge=0,
        description="0 or 1: a project's rows build in one process (build_rows). N > 1, on Postgres: the build splits"
        " into N partitions by prompt group that any `default`-queue workers claim and build at once"
        " (feedback/partitions.py); SQLite always builds in one process.",
    )
    fold_batch_rows: int = Field(
        64, gt=0, description="Queue rows (ingest transactions) the folder takes per fold transaction."
    )

    # Group commit (api/group_commit.py): concurrent ingest requests share one transaction.
    group_commit_max_events: int = Field(
        500, gt=0, description="A shared ingest transaction takes no more requests once it holds this many events."
    )
    group_commit_wait_ms: float = Field(
        2.0,
        ge=0,
        description="How long the first waiting request waits for others to share its transaction; 0: one"
        " transaction per request.",
    )
    group_commit_eager: bool = Field(
        True,
        description="Write a request at once while requests come slower than transactions end (no group of more"
        " than one event being written): no wait at light load. False: the first request always waits"
        " group_commit_wait_ms.",
    )
    group_commit_max_queued: int = Field(
        1000, gt=0, description="Requests waiting for a shared transaction, per process; more wait to get in line."
    )
    group_commit_writers: int = Field(
        2,
        gt=0,
        description="Shared transactions in flight per process: while one waits for the database, the next is built.",
    )

    # The generation gateway (serving/): /v1/completions and /v1/chat/completions.
    serving_backend: Literal["inprocess", "vllm"] = Field(
        "inprocess",
        description="inprocess: transformers + PEFT in this process (CPU, small setups); vllm: a vLLM OpenAI server.",
    )
    serving_max_adapters: int = Field(
        4, ge=1, description="Adapter versions kept loaded per base model; the least recently used is evicted."
    )
    serving_merge_hot_adapter: bool = Field(
        True,
        description="In-process: serve an adapter merged into a plain copy of the base (base speed; a switch rewrites"
        " the adapted weights; a second copy of them in memory) instead of running PEFT's LoRA layers on every token.",
    )
    serving_prompt_lookup_tokens: int = Field(
        0,
        ge=0,
        description="In-process: prompt-lookup decoding, tokens proposed per step from n-grams of the prompt; pays"
        " only when completions copy their prompt (edits with a model that copies). 0: off, since it did not pay on"
        " the tiny model; measure yours with benchmarks/serve.py.",
    )
    serving_max_concurrent: int = Field(
        16,
        ge=1,
        description="Generations in flight per process (the in-process backend runs one at a time; the rest wait"
        " their turn without holding the threads that other requests need).",
    )
    serving_default_max_tokens: int = Field(128, ge=1, description="max_tokens when a request gives none.")
    serving_max_max_tokens: int = Field(2048, ge=1, description="Largest max_tokens a request may ask for.")
    vllm_url: str | None = Field(
        None, description="Base URL of the vLLM OpenAI server (http://host:8000), started with --enable-lora."
    )
    vllm_api_key: str | None = Field(None, description="The vLLM server's --api-key, if it has one.")
    vllm_adapter_dir: Path | None = Field(
        None,
        description="Where the vLLM server sees the artifact store (the same volume mounted elsewhere); unset: the"
        " same path as here.",
    )
    vllm_timeout_s: float = Field(120.0, gt=0, description="Timeout of one call to the vLLM server.")
    # A project's upstream (the rented OpenAI-compatible model, project settings `upstream.*`).
    upstream_connect_timeout_s: float = Field(5.0, gt=0, description="Timeout of connecting to an upstream.")
    upstream_read_timeout_s: float = Field(
        60.0, gt=0, description="Longest wait for an upstream's answer, or for its next streamed byte."
    )
    upstream_retries: int = Field(
        2, ge=0, description="Retries of an upstream call on 429, 5xx or a connection error (never once streaming)."
    )
    upstream_retry_max_wait_s: float = Field(
        10.0, ge=0, description="Longest wait before a retry (an upstream's Retry-After above it is not retried)."
    )
    upstream_max_connections: int = Field(100, ge=1, description="Connections per process to all upstreams.")
    serving_route_cache_s: float = Field(
        0.5,
        ge=0,
        description="How long a server remembers what a model name resolves to; a promotion made through another"
        " process is served within this (one made through this server, at once). 0: read it on every request.",
    )
    metrics_token: str | None = Field(
        None, description="Bearer token that GET /metrics requires; unset: /metrics answers loopback callers only."
    )
    log_format: Literal["json", "text"] = Field("json", description="json: one object per line; text: for humans.")
    console_secure_cookie: bool = Field(
        False, description="Mark the console's session cookie Secure (set it when the console is served over HTTPS)."
    )

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if self.database_url is not None and not self.database_url.strip():
            raise ValueError("EDITLOOP_DATABASE_URL is set but empty")
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """The URL with the psycopg 3 driver made explicit, or the embedded SQLite file."""
        if self.database_url is None:
            return f"sqlite:///{(self.data_dir / 'editloop.db').resolve()}"
        url = self.database_url
        for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @property
    def celery_broker_url(self) -> str:
        if self.broker_url is None:
            return f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"
        return self.broker_url

    @property
    def artifact_root(self) -> Path:
        return (self.artifacts_dir or self.data_dir / "artifacts").resolve()

    @property
    def is_embedded(self) -> bool:
        return self.sqlalchemy_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
