"""Settings, read once at start-up from ``MODELHOST_*`` environment variables.

Nested models use ``__`` in the variable name: ``MODELHOST_SERVER__PORT=9000``.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path(os.path.expanduser("~/.modelhost"))


def _default_threads() -> int:
    return max(1, os.cpu_count() or 1)


class HttpServer(StrEnum):
    """The HTTP server ``modelhost serve`` runs the ASGI app on."""

    UVICORN = "uvicorn"  #: uvicorn with uvloop and httptools: one process, default
    GRANIAN = "granian"  #: Granian (Rust HTTP/1.1, uvloop): a supervisor plus worker processes


class ServerSettings(BaseModel):
    """How the HTTP server listens."""

    host: str = "127.0.0.1"
    """Interface to bind; ``0.0.0.0`` to listen on every interface."""
    port: int = 8000
    """TCP port of the HTTP API."""
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """TCP port of the Open Inference Protocol v2 gRPC service (on ``host``); 0 turns it off."""
    workers: int = 1
    """Server processes sharing the port."""
    access_log: bool = False
    """Log one line per request (off by default: it costs throughput)."""
    http_server: HttpServer = HttpServer.UVICORN
    """Which HTTP server runs the app. Measured on single-row predicts, uvicorn was as fast as
    Granian or faster and uses less memory (docs/performance.md), so it is the default."""

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServerSettings:
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(
                f"server.grpc_port and server.port are both {self.port}: the HTTP API and the "
                "gRPC service need a port each (set grpc_port to 0 to turn gRPC off)"
            )
        return self


class InferenceSettings(BaseModel):
    """How inference runs beside the event loop."""

    threads: int = Field(default_factory=_default_threads, ge=1)
    """Threads that run short runtime calls (tabular, ONNX, embedding models, feature-store
    reads), so inference never blocks the event loop."""
    generate_threads: int = Field(default=2, ge=1)
    """Threads that run in-process token generation (llama.cpp, streaming Python models),
    apart from ``threads``: a cheap model never queues behind a long generation. Each
    llama.cpp model generates one answer at a time, so more threads than LLMs only queue."""
    remote_threads: int = Field(default=16, ge=1)
    """Threads that wait on upstream model servers (``openai-upstream``), apart from both."""
    default_timeout_s: float = 30.0
    """Timeout of one inference when the manifest sets none."""
    default_max_request_bytes: int = 8 * 1024 * 1024
    """Largest request body when the manifest sets none."""
    load_on_start: bool = True
    """Load every staging and production version when the server starts."""
    refresh_interval_s: float = Field(default=0.5, gt=0)
    """How often a server re-reads the registry (one indexed ``max(id)`` query when nothing
    changed) to pick up pushes, promotions, aliases and deployment changes made through any
    replica; a change is in force everywhere within this plus a load."""
    malloc_trim_interval_s: float = Field(default=30.0, ge=0)
    """How often the server gives glibc's free heap pages back to the OS (``malloc_trim``;
    docs/operations.md, "Memory"); 0 never does. Freed memory otherwise stays in the
    per-thread malloc arenas and the resident size keeps its peak."""
    malloc_arena_max: int | None = Field(default=None, ge=1)
    """Most glibc malloc arenas (as ``MALLOC_ARENA_MAX``, applied when the server builds its
    services, before the inference threads start); none leaves glibc's default (8 per core)."""


class AuthSettings(BaseModel):
    """Who may call: API keys always; OAuth2/JWT bearer tokens when a secret or JWKS is set."""

    enabled: bool = True
    """Require a credential on every route but /healthz, /readyz and /v2/health/*."""
    jwt_secret: str | None = None
    """HS256 shared secret of bearer JWTs."""
    jwks_file: Path | None = None
    """A JWKS document with the public keys of bearer JWTs (RS256, ES256)."""
    jwt_audience: str | None = None
    """Required ``aud`` claim."""
    jwt_issuer: str | None = None
    """Required ``iss`` claim."""
    tenant_claim: str = "tenant"
    """Claim holding the tenant (absent: tenant ``default``)."""
    scope_claim: str = "scope"
    """Claim holding the scopes (space-separated string or list)."""


class LimitSettings(BaseModel):
    """Defaults of rate limits and budgets (a key's own values win)."""

    requests_per_minute: int | None = 6000
    """Requests per minute per principal; none for no limit."""
    tokens_per_minute: int | None = None
    """Tokens per minute per principal; none for no limit."""
    budget: float | None = None
    """Spend per principal per period, priced from each model's pricing; none for no limit."""
    budget_period: str = Field(default="day", pattern="^(day|month)$")
    """Budget period: ``day`` or ``month``."""


class GuardSettings(BaseModel):
    """Server-wide settings of the input guards."""

    injection_embedding_model: str | None = "minilm"
    """Embedding model whose production version scores prompts for injection by similarity
    to known attacks; heuristics only when none or not loaded."""


class DemoSettings(BaseModel):
    """The built-in demo models."""

    enabled: bool = True
    """Build and register the demo models (iris, minilm, gemma-270m) on first start."""
    models: list[str] = Field(default_factory=lambda: ["iris", "minilm", "gemma-270m"])
    """Which demo models to build; a missing optional extra skips that model with a warning."""


class JobSettings(BaseModel):
    """The async job queue and the in-process workers that run it."""

    workers: int = Field(default=2, ge=0)
    """Jobs each server process runs at once; 0 runs none (the queue still accepts jobs)."""
    visibility_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds a worker's claim leases a job; a job whose worker stops renewing the lease is
    claimed again by another worker after this long."""
    max_attempts: int = Field(default=3, ge=1)
    """Attempts of a job before it fails; only service errors (not ready, timeout) retry."""
    retry_base_s: float = Field(default=0.5, gt=0)
    """Backoff after the first failed attempt; it doubles per attempt, with jitter."""
    retry_max_s: float = Field(default=30.0, gt=0)
    """Longest backoff between two attempts."""
    retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    """Seconds finished jobs and their results are kept; a job queued longer expires."""
    poll_interval_s: float = Field(default=0.2, gt=0)
    """How often an idle worker looks for jobs submitted through another process."""
    backend: Literal["sql", "redis"] = "sql"
    """``sql``: the queue is the job table itself (embedded default). ``redis``: jobs are
    dispatched through Redis Streams consumer groups at ``redis_url`` (the ``redis`` extra);
    job records stay in the SQL database."""
    redis_prefix: str = "modelhost:jobs"
    """Key prefix of the Redis streams, retry set and live-token channels."""
    claim_batch: int = Field(default=8, ge=1, le=256)
    """Most queued jobs of one model a worker claims at once and runs as one batch."""
    drain_timeout_s: float = Field(default=30.0, ge=0)
    """On SIGTERM, how long running jobs may take to finish before they go back to the queue."""
    batch_max_items: int = Field(default=100_000, gt=0)
    """Most items in one batch."""
    batch_max_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    """Largest batch upload (inline body or JSONL file); over it, 413."""
    webhook_secret: SecretStr | None = None
    """Master secret that per-tenant webhook signing secrets derive from; set it the same on
    every machine. Unset: a random one is created in ``home/webhook.key``."""
    webhook_allow: list[str] = Field(default_factory=list)
    """Networks (CIDR) or host names that callbacks may reach although private or loopback."""
    webhook_max_attempts: int = Field(default=8, ge=1)
    """Delivery attempts of one callback before it is given up."""
    webhook_retry_base_s: float = Field(default=1.0, gt=0)
    """Backoff after the first failed delivery; doubles per attempt, with jitter."""
    webhook_retry_max_s: float = Field(default=300.0, gt=0)
    """Longest wait between two delivery attempts."""
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    """Seconds one delivery attempt may take."""


class DriftSettings(BaseModel):
    """Drift monitoring of live inputs against each version's reference (docs/drift.md)."""

    enabled: bool = True
    """Watch live inputs, score drift and send alerts; off: ``GET .../drift`` still answers."""
    check_interval_s: float = Field(default=60.0, gt=0)
    """Seconds between two drift checks of a version (a manifest may ask for another)."""
    window: int = Field(default=1000, ge=10)
    """Most recent live inputs per version that are scored (a manifest may ask for another)."""
    min_samples: int = Field(default=200, ge=1)
    """Live inputs a version needs before it is scored (a manifest may ask for another)."""
    reference_sample: int = Field(default=2000, ge=100)
    """Values per feature kept from the reference for the KS test and the report's plots."""
    max_reference_rows: int = Field(default=100_000, ge=100)
    """Rows of reference data read at most; a larger file is sampled uniformly."""
    max_reference_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    """Largest reference upload (``PUT .../drift/reference``); over it, 413."""
    alert_url: str | None = None
    """Where drift alerts go for versions whose manifest names no ``monitoring.alert_url``."""
    alert_tenant: str = "system"
    """Tenant whose webhook secret signs drift alerts (``GET /v1/webhooks/secret`` with a key
    of that tenant shows it); the SSRF allow-list is ``jobs.webhook_allow``."""
    alert_max_attempts: int = Field(default=4, ge=1)
    """Delivery attempts of one alert before it is given up."""
    alert_retry_base_s: float = Field(default=1.0, gt=0)
    """Wait after the first failed delivery; doubles per attempt, with jitter."""
    alert_timeout_s: float = Field(default=10.0, gt=0)
    """Seconds one alert delivery attempt may take."""
    retrain_commands: bool = True
    """Run the ``monitoring.retrain_command`` of manifests (with the server's privileges, the
    same trust as the python runtime); off: only ``retrain_url`` hooks are called."""
    retrain_timeout_s: float = Field(default=600.0, gt=0)
    """Seconds a retraining command may run before it is killed."""


class TracingSettings(BaseModel):
    """OpenTelemetry tracing of requests (the ``otel`` extra)."""

    enabled: bool = False
    """Record spans (request, auth, validation, queue, batch, inference, guards) and export
    them over OTLP/HTTP; off costs next to nothing."""
    otlp_endpoint: str | None = None
    """OTLP/HTTP traces URL, e.g. ``http://127.0.0.1:4318/v1/traces``; none: the standard
    ``OTEL_EXPORTER_OTLP_*`` variables, else the collector on localhost."""
    service_name: str = "modelhost"
    """``service.name`` of the spans."""
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    """Share of new traces recorded; a request whose ``traceparent`` is sampled always is."""


class UsageSettings(BaseModel):
    """Usage and cost accounting per tenant, principal and model."""

    enabled: bool = True
    """Count every inference (requests, errors, tokens, compute seconds, cost) in ``mh_usage``."""
    flush_interval_s: float = Field(default=5.0, gt=0)
    """How often each process adds what it counted to the database (and at shutdown)."""


class ProvenanceSettings(BaseModel):
    """Provenance records of every inference (docs/provenance.md): written off the request
    path, in batches, to the registry's database."""

    enabled: bool = True
    """Record every inference; off, nothing is recorded (records already written stay
    readable and replayable)."""
    retention_s: float = Field(default=30 * 24 * 3600.0, gt=0)
    """Seconds a record is kept; older ones are purged in the background."""
    flush_interval_s: float = Field(default=1.0, gt=0)
    """Most seconds a record waits in memory before it is written (and can be read)."""
    batch_size: int = Field(default=1000, ge=1, le=10_000)
    """Most records in one INSERT; a buffer reaching it is written at once."""
    max_buffer: int = Field(default=50_000, ge=1)
    """Most records waiting to be written; beyond it new ones are dropped and counted
    (``modelhost_provenance_records_total{outcome="dropped"}``), never waited for."""
    purge_interval_s: float = Field(default=3600.0, gt=0)
    """How often records older than ``retention_s`` are deleted."""
    max_payload_bytes: int = Field(default=1024 * 1024, ge=0)
    """Largest inputs plus outputs (as JSON) a record keeps; a larger payload keeps only its
    hashes."""


class RolloutSettings(BaseModel):
    """Canary, shadow and blue-green rollouts, their guards and promotion gates
    (docs/rollouts.md)."""

    keep_warm: int = Field(default=1, ge=0, le=5)
    """Former production versions kept loaded on every replica, so a rollback switches at
    once; the others (up to five are remembered) load on rollback, before the switch."""
    check_interval_s: float = Field(default=1.0, gt=0)
    """How often each replica evaluates the guards and ramps of running canaries."""
    stats_flush_s: float = Field(default=1.0, gt=0)
    """How often each replica adds its per-version request counts and latencies to the
    shared rollout statistics the guards read (so they count traffic from every replica)."""
    stats_retention_s: float = Field(default=24 * 3600.0, gt=0)
    """Seconds rollout statistics are kept."""
    shadow_queue: int = Field(default=256, ge=1)
    """Copied requests waiting for their shadows; beyond it copies are dropped and counted,
    never waited for: a shadow never slows a caller."""
    shadow_share: float = Field(default=0.005, gt=0, le=1)
    """Most share of a replica's wall time shadow calls may take (each call's duration is
    paid back before the next starts), and they wait for the event loop to be idle: a shadow
    shares the replica's CPU, so it runs on a sample of copies rather than slow callers."""
    shadow_workers: int = Field(default=1, ge=1, le=8)
    """Threads running shadow calls (apart from the inference threads callers wait on)."""
    shadow_examples: int = Field(default=20, ge=0)
    """Disagreements kept per shadow version, shown by ``deploy status``."""
    drain_timeout_s: float = Field(default=30.0, gt=0)
    """Most seconds an unload waits for the requests running on a version it takes away."""
    alert_url: str | None = Field(default=None, pattern=r"^https?://", max_length=2048)
    """Where ``rollout.rollback`` (and other rollout) webhooks go; none: logged only."""
    alert_tenant: str = "system"
    """Whose webhook secret signs rollout alerts (``GET /v1/webhooks/secret`` of that tenant)."""


class CacheSettings(BaseModel):
    """Response caches (docs/caching.md): exact for deterministic requests, semantic for LLM
    prompts where a model opts in."""

    enabled: bool = True
    """Serve repeated deterministic requests from the exact cache (a model's manifest may opt
    out with ``cache.exact: false``)."""
    store: Literal["memory", "sqlite", "redis"] = "memory"
    """Where exact entries live: this process's memory, a SQLite file under ``home``
    (``cache.db``), or Redis (``redis_url``; shared by every replica)."""
    ttl_s: float = Field(default=3600.0, gt=0)
    """Seconds an entry is served (a manifest's ``cache.ttl_s`` wins)."""
    max_entries: int = Field(default=100_000, ge=1)
    """Most entries the memory and SQLite stores keep (least recently used go first)."""
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    """Most bytes of answers the memory store keeps."""
    max_entry_bytes: int = Field(default=1024 * 1024, ge=1)
    """Larger answers are not cached."""
    semantic_max_entries: int = Field(default=100_000, ge=1)
    """Most prompts one semantic index (a tenant, model version and parameters) keeps."""


class BreakerSettings(BaseModel):
    """Circuit breakers of model versions (docs/cascades.md): a version that keeps failing is
    skipped for a while, so its callers go to its fallbacks (or get 503) at once."""

    failures: int = Field(default=5, ge=1)
    """Consecutive failures (timeouts, runtime errors) that open a version's breaker."""
    cooldown_s: float = Field(default=30.0, gt=0)
    """Seconds an open breaker skips its version before letting probe calls through."""
    half_open_probes: int = Field(default=1, ge=1)
    """Calls let through at once while half-open; one success closes the breaker, one failure
    opens it again."""


class FeatureStoreSettings(BaseModel):
    """Models that read stored features from Feast (docs/feature-store.md; the
    ``featurestore`` extra)."""

    online_store: Literal["auto", "repository", "sqlite", "redis"] = "auto"
    """Feast's online store: ``auto`` uses Redis (``redis_url``) when it is set and the
    repository's own setting (by default Feast's SQLite file) otherwise; ``repository`` keeps
    what ``feature_store.yaml`` says; ``sqlite`` and ``redis`` force one."""
    materialize_interval_s: float = Field(default=0.0, ge=0)
    """Seconds between incremental materializations (offline → online) of the repositories of
    loaded models; 0: only ``modelhost featurestore materialize`` loads the online store."""
    skew_interval_s: float = Field(default=0.0, ge=0)
    """Seconds between skew checks of loaded models over the last ``skew_window_s``; 0: only
    ``modelhost featurestore skew`` (or its endpoint) checks."""
    skew_window_s: float = Field(default=3600.0, gt=0)
    """Age of the served rows a scheduled skew check looks at."""
    skew_sample: int = Field(default=200, ge=1, le=100_000)
    """Most served rows one skew check recomputes offline."""


class Settings(BaseSettings):
    """Every setting of modelhost; one nested model per subsystem."""

    model_config = SettingsConfigDict(
        env_prefix="MODELHOST_", env_nested_delimiter="__", extra="ignore"
    )

    home: Path = Field(default_factory=_default_home)
    """Where the embedded database, the artifact store and demo builds live."""
    database_url: str | None = None
    """SQLAlchemy URL of the registry database; default: a SQLite file under ``home``."""
    server: ServerSettings = Field(default_factory=ServerSettings)
    """The HTTP server."""
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    """The inference pool, timeouts and loading."""
    demo: DemoSettings = Field(default_factory=DemoSettings)
    """The built-in demo models."""
    auth: AuthSettings = Field(default_factory=AuthSettings)
    """Authentication."""
    limits: LimitSettings = Field(default_factory=LimitSettings)
    """Rate limits and budgets."""
    guards: GuardSettings = Field(default_factory=GuardSettings)
    """Input guards."""
    jobs: JobSettings = Field(default_factory=JobSettings)
    """Async jobs."""
    provenance: ProvenanceSettings = Field(default_factory=ProvenanceSettings)
    """Provenance records and their retention."""
    drift: DriftSettings = Field(default_factory=DriftSettings)
    """Drift monitoring."""
    rollouts: RolloutSettings = Field(default_factory=RolloutSettings)
    """Canary, shadow and blue-green rollouts."""
    cache: CacheSettings = Field(default_factory=CacheSettings)
    """Exact and semantic response caches."""
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    """Circuit breakers in front of model versions (fallbacks skip an open one)."""
    feature_store: FeatureStoreSettings = Field(default_factory=FeatureStoreSettings)
    """Stored features from Feast: online store, materialization and skew schedules."""
    redis_url: str | None = None
    """Redis for rate-limit counters shared by every replica (and caches, the job queue and
    Feast's online store where they are set to use it); memory when none."""
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    """OpenTelemetry tracing."""
    usage: UsageSettings = Field(default_factory=UsageSettings)
    """Usage and cost accounting."""
    log_format: Literal["text", "json"] = "text"
    """``text`` for people; ``json``: one JSON object per line with the request and trace ids
    (``MODELHOST_LOG_FORMAT=json``)."""

    @property
    def resolved_database_url(self) -> str:
        """The registry database URL, defaulting to ``sqlite:///$MODELHOST_HOME/modelhost.db``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'modelhost.db'}"

    @property
    def artifact_dir(self) -> Path:
        """Root of the content-addressed artifact store."""
        return self.home / "artifacts"
