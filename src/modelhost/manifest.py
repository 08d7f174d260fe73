"""The ``modelhost.yaml`` manifest of one model version.

A model version is a directory: the manifest plus its artifact files. The layout of seed 004
§3.4.E is accepted as is: ``model.onnx``, ``tokenizer/``, ``config.yaml``, ``requirements.txt``,
``evaluation_report.json``, ``training_config.yaml``, ``data_manifest.json`` are stored with
the version; ``evaluation_report.json`` fills ``evaluation`` when the manifest has none.
"""

from __future__ import annotations

import hashlib
import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import orjson
import semver
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from modelhost.errors import ManifestError
from modelhost.security.policy import GuardsConfig

MANIFEST_FILE = "modelhost.yaml"
EVALUATION_FILE = "evaluation_report.json"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class RuntimeKind(StrEnum):
    """Which runtime serves a model version."""

    SKLEARN = "sklearn"  #: a scikit-learn estimator saved with joblib
    ONNX = "onnx"  #: an ONNX graph run by onnxruntime
    LLAMACPP = "llamacpp"  #: a GGUF language model run by llama.cpp
    EMBEDDINGS = "embeddings"  #: a sentence-transformers embedding model
    PYTHON = "python"  #: a user class named by import path
    CASCADE = "cascade"  #: stages of other models, run by the data plane (no model of its own)
    OPENAI_UPSTREAM = "openai-upstream"  #: any OpenAI-compatible server, by URL and key
    FEATURE = "feature"  #: an LLM product feature: prompt + output schema over another model


class Task(StrEnum):
    """What the model does; shapes the results."""

    CLASSIFICATION = "classification"  #: label, score and class probabilities
    REGRESSION = "regression"  #: one number per input
    EMBEDDING = "embedding"  #: a vector per input
    GENERATION = "generation"  #: text per input (LLMs)
    CUSTOM = "custom"  #: whatever the runtime returns


class Limits(BaseModel):
    """What one request may ask of the model."""

    model_config = ConfigDict(extra="forbid")

    max_request_bytes: int | None = Field(default=None, gt=0)
    """Largest request body; over it the caller gets 413."""
    max_batch_items: int = Field(default=256, gt=0)
    """Most inputs in one request; over it the caller gets 400."""
    timeout_ms: int | None = Field(default=None, gt=0)
    """Inference timeout; over it the caller gets 504."""
    requests_per_minute: int | None = Field(default=None, gt=0)
    """Requests per minute each principal may send to this model; over it, 429."""
    tokens_per_minute: int | None = Field(default=None, gt=0)
    """Tokens (input + output) per minute each principal may use on this model; over it, 429."""


class Batching(BaseModel):
    """Adaptive batching: concurrent requests merged into one runtime call."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=1, gt=0)
    """Most inputs in one merged runtime call; 1 turns batching off."""
    max_batch_delay_ms: float = Field(default=0.0, ge=0)
    """Longest a request waits for others to join its batch."""


class ModelCard(BaseModel):
    """The model card: what the model is for and how it was made."""

    model_config = ConfigDict(extra="allow")

    description: str = ""
    intended_use: str = ""
    training_data: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)
    license: str = ""
    limitations: str = ""


class Pricing(BaseModel):
    """Optional price list: what one call costs, shown as ``usage.cost`` in every response,
    summed per tenant, principal and model (``GET /v1/usage``), and counted against budgets.

    A call costs its ``unit`` price, plus ``per_request``, plus ``per_second`` times the
    seconds the model computed for it. Every price is in ``currency``.
    """

    model_config = ConfigDict(extra="forbid")

    input: float = Field(default=0.0, ge=0)
    """Price of input: per ``unit`` of input tokens (``1k_tokens``, ``1m_tokens``), per input
    item (``item``), or per call (``request``)."""
    output: float = Field(default=0.0, ge=0)
    """Price per ``unit`` of output tokens (token units only)."""
    unit: Literal["1k_tokens", "1m_tokens", "item", "request"] = "1k_tokens"
    """What ``input`` and ``output`` are priced per."""
    per_request: float = Field(default=0.0, ge=0)
    """A flat fee on every answered call, whatever the unit."""
    per_second: float = Field(default=0.0, ge=0)
    """Price per second of compute: the time the runtime call took (with adaptive batching,
    the merged call's time, batch wait included; for a job batch, a share of the merged call
    by inputs)."""
    currency: str = Field(default="USD", min_length=1, max_length=16)
    """ISO 4217 code (or any label); totals are never summed across currencies."""


class ProvenanceConfig(BaseModel):
    """What the provenance record of each inference keeps of its payload."""

    model_config = ConfigDict(extra="forbid")

    capture: Literal["full", "redacted", "hash"] = "full"
    """``full``: inputs and outputs as sent and answered (replayable); ``redacted``: with PII
    masked; ``hash``: only their sha256 (not replayable)."""
    sample_rate: float = Field(default=1.0, ge=0, le=1)
    """Share of inferences whose payload is kept; every inference gets a record regardless."""
    pipeline_version: str | None = Field(default=None, max_length=64)
    """Version of the preprocessing or feature pipeline this model version expects, written
    into every record (e.g. ``features-2024.06``)."""


class DriftThresholds(BaseModel):
    """When a feature counts as drifted; any one test past its threshold is enough."""

    model_config = ConfigDict(extra="forbid")

    psi: float = Field(default=0.2, gt=0)
    """Population stability index at or over which a feature drifted (0.1: watch, 0.2: act)."""
    ks_statistic: float = Field(default=0.1, gt=0, le=1)
    """Kolmogorov-Smirnov distance (largest gap between the two cumulative distributions) at or
    over which a numeric feature drifted, provided ``ks_pvalue`` is also met."""
    ks_pvalue: float = Field(default=0.01, gt=0, le=1)
    """The KS test's p-value must be under this as well, so small samples do not alarm."""
    kl: float | None = Field(default=None, gt=0)
    """KL divergence (live ‖ reference) at or over which a feature drifted; None: reported only."""


class MonitoringConfig(BaseModel):
    """Drift monitoring of this version's inputs against its training data (docs/drift.md)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    """Watch this version's live inputs (only once it has a reference)."""
    reference_data: str | None = None
    """Artifact key or relative path of the training data (CSV with a header row, JSONL of
    inputs, or a JSON array of inputs) the reference statistics are computed from, once, when
    the version is first monitored; ``PUT .../drift/reference`` supplies one instead."""
    features: list[str] = Field(default_factory=list)
    """Input fields to watch; empty: ``options.feature_names``, else every field of the
    reference data."""
    categorical: list[str] = Field(default_factory=list)
    """Fields to treat as categories (frequencies) whatever their values look like."""
    text: list[str] = Field(default_factory=list)
    """Fields to treat as free text (length distribution) whatever their values look like."""
    bins: int = Field(default=10, ge=2, le=100)
    """Quantile bins of the reference that PSI and KL count numeric values in."""
    thresholds: DriftThresholds = Field(default_factory=DriftThresholds)
    window: int | None = Field(default=None, ge=10)
    """Live inputs scored (the most recent ones); default ``drift.window``."""
    min_samples: int | None = Field(default=None, ge=1)
    """Live inputs needed before scoring; default ``drift.min_samples``."""
    check_interval_s: float | None = Field(default=None, gt=0)
    """Seconds between two checks of this version; default ``drift.check_interval_s``."""
    alert_url: str | None = Field(default=None, pattern=r"^https?://", max_length=2048)
    """Where ``drift.alert`` and ``drift.resolved`` webhooks go; default ``drift.alert_url``."""
    retrain_command: list[str] = Field(default_factory=list)
    """Command run (no shell) when drift is detected, the alert's evidence JSON on its stdin,
    e.g. ``["python", "retrain.py"]``."""
    retrain_url: str | None = Field(default=None, pattern=r"^https?://", max_length=2048)
    """URL POSTed the evidence (signed, event ``drift.retrain``) when drift is detected."""


class GoldenThresholds(BaseModel):
    """What a golden set must achieve for its version to reach production; every threshold
    set must hold (at least one must be set)."""

    model_config = ConfigDict(extra="forbid")

    accuracy: float | None = Field(default=None, ge=0, le=1)
    """Least share of golden items whose result ``field`` equals the expected value exactly
    (an item the model failed on counts as wrong)."""
    mae: float | None = Field(default=None, ge=0)
    """Largest mean absolute error between numeric results and expected numbers."""
    rmse: float | None = Field(default=None, ge=0)
    """Largest root mean squared error between numeric results and expected numbers."""

    def named(self) -> dict[str, float]:
        """The thresholds that are set, by metric."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class GoldenGate(BaseModel):
    """A golden set: inputs with known answers that the server runs on the loaded candidate
    before it may become production.

    The file is JSON Lines, one ``{"input": <one item of inputs>, "expected": <answer>}`` per
    line. ``expected`` is the value of the result's ``field`` (``"setosa"``), or an object
    holding it (``{"label": "setosa"}``). A golden set registered through ``PUT
    /v1/models/{model}/versions/{version}/golden`` replaces the shipped one.
    """

    model_config = ConfigDict(extra="forbid")

    file: str | None = None
    """Artifact key or path, relative to the version directory, of the JSONL file; None when
    the golden set is registered through the API instead."""
    field: str | None = "label"
    """The result field compared with ``expected`` (results that are not objects are
    compared whole); None compares whole results."""
    thresholds: GoldenThresholds
    """What the evaluation must achieve."""
    match: Literal["exact", "subset"] = "exact"
    """``exact``: the compared values are equal. ``subset`` (object answers, such as an LLM
    feature's): every field of ``expected`` is in the answer with an equal value, strings
    compared without case or surrounding space; other fields of the answer do not matter."""
    parameters: dict[str, Any] = Field(default_factory=dict)
    """Request parameters the golden inputs run with (over the manifest's defaults)."""
    batch_size: int = Field(default=32, gt=0, le=1024)
    """Golden items per runtime call (capped at ``limits.max_batch_items``)."""
    examples: int = Field(default=5, ge=0, le=100)
    """Wrong answers shown in the gate's report."""

    @field_validator("thresholds")
    @classmethod
    def _some_threshold(cls, value: GoldenThresholds) -> GoldenThresholds:
        if not value.named():
            raise ValueError("set at least one of accuracy, mae, rmse")
        return value


class Gates(BaseModel):
    """Promotion gates: what a version must pass before ``promote`` makes it production
    (``--force`` overrides a failed gate, and the override is written to the deployment
    history)."""

    model_config = ConfigDict(extra="forbid")

    golden: GoldenGate | None = None
    """The golden set and its thresholds; None: no golden set is shipped (one may still be
    registered through the API)."""
    compatibility: bool = True
    """Refuse input or output schema changes that break callers of the current production
    version unless the MAJOR version grows (see ``modelhost.registry.compat``)."""
    warmup: list[Any] = Field(default_factory=list, max_length=64)
    """Inputs run once on the loaded candidate before the switch, so its first live requests
    do not pay for lazy initialisation; empty: the golden set's first input, else the input
    schema's ``examples``."""


class SemanticCacheConfig(BaseModel):
    """The semantic cache of a language model: a prompt close enough to one answered before
    (same tenant, version and parameters) gets that answer."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    """Opt in: off by default, because a near match is not the same question."""
    threshold: float = Field(default=0.95, gt=0, le=1)
    """Least cosine similarity of the prompts' embeddings for a hit."""
    embedding_model: str = "minilm"
    """The embeddings model (its production version) prompts are embedded with."""


class CacheConfig(BaseModel):
    """How this version's answers are cached (docs/caching.md)."""

    model_config = ConfigDict(extra="forbid")

    exact: bool | None = None
    """Exact cache: None (default) caches deterministic requests — classification,
    regression and embedding models, and generation at temperature 0; true also caches a
    ``custom`` model (declaring it deterministic); false never caches."""
    ttl_s: float | None = Field(default=None, gt=0)
    """Seconds an entry is served; default ``cache.ttl_s``."""
    semantic: SemanticCacheConfig = Field(default_factory=SemanticCacheConfig)


class CascadeStage(BaseModel):
    """One stage of a cascade: the model that answers, and when an item goes on to the next
    stage (any rule that matches escalates it; the last stage's rules are ignored)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=140)
    """``name`` (its deployment picks the version) or ``name@version``."""
    min_score: float | None = None
    """Escalate an item whose result's ``score_field`` is under this (or missing)."""
    score_field: str = "score"
    """The result field ``min_score`` reads."""
    escalate_labels: list[str] = Field(default_factory=list)
    """Escalate an item whose result's ``label_field`` is one of these."""
    label_field: str = "label"
    """The result field ``escalate_labels`` reads."""
    escalate_pattern: str | None = None
    """Escalate an item whose input text matches this regular expression (searched)."""
    text_field: str = "text"
    """The input field ``escalate_pattern`` reads when an input is an object."""

    @field_validator("escalate_pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class CascadeConfig(BaseModel):
    """A cascade route: cheap stages answer first, and only the items a stage's rule escalates
    go on to the next one; the last stage answers whatever is left (docs/cascades.md)."""

    model_config = ConfigDict(extra="forbid")

    stages: list[CascadeStage] = Field(min_length=2, max_length=8)
    """The stages, cheapest first."""


#: Parameters a feature passes to its model unless the spec says otherwise: greedy decoding,
#: so the same input gets the same answer (and the answer can be cached).
DEFAULT_FEATURE_PARAMETERS: dict[str, Any] = {"temperature": 0, "max_tokens": 256}


class FeatureExample(BaseModel):
    """A few-shot example: an input and the answer the model should give."""

    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any]
    output: Any


class ConversationConfig(BaseModel):
    """A feature that keeps a session: earlier turns go with each call, within a budget."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    budget_tokens: int = Field(default=1024, gt=0, le=131_072)
    """Most tokens the history (summary, kept turns, new message) may take."""
    keep_recent: int = Field(default=4, ge=0, le=64)
    """Latest turns kept word for word while they fit; older ones are summarised."""
    summary_tokens: int = Field(default=192, gt=0)
    """Most tokens the running summary of older turns may take."""
    ttl_s: int = Field(default=7 * 86_400, gt=0)
    """A session untouched this long is forgotten."""


class FeatureConfig(BaseModel):
    """The ``feature`` section of a ``runtime: feature`` manifest: how to run it."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    """The model that answers: ``name``, ``name@version`` or ``name@alias``."""
    parameters: dict[str, Any] = Field(default_factory=dict)
    """Model parameters (over :data:`DEFAULT_FEATURE_PARAMETERS`)."""
    instructions: str = Field(default="", max_length=32_000)
    """The system instructions (trusted text of the feature's author)."""
    template: str = Field(min_length=1, max_length=32_000)
    """The sandboxed Jinja2 template of the user message; caller values are fenced data."""
    examples: list[FeatureExample] = Field(default_factory=list, max_length=32)
    repair_retries: int = Field(default=2, ge=0, le=5)
    """Calls made again, with the validation error, when an answer does not match."""
    constrained: bool = True
    """Ask the model to constrain decoding to the output schema (``response_format``)."""
    conversation: ConversationConfig = Field(default_factory=ConversationConfig)

    def model_parameters(self) -> dict[str, Any]:
        """The parameters sent to the model."""
        return {**DEFAULT_FEATURE_PARAMETERS, **self.parameters}

    def digest(self) -> str:
        """sha256 of what shapes the prompt and the call: changes when any of it does."""
        return hashlib.sha256(
            orjson.dumps(self.model_dump(), option=orjson.OPT_SORT_KEYS)
        ).hexdigest()

    def template_digest(self) -> str:
        """sha256 of the template and instructions (recorded with every invocation)."""
        return hashlib.sha256(f"{self.instructions}\x00{self.template}".encode()).hexdigest()


class FeatureStoreConfig(BaseModel):
    """Features a model reads from a Feast feature store (the ``featurestore`` extra).

    A request row carries the entity keys (and request-time values); the data plane fetches
    the row's stored features from the online store in one call per batch, runs the
    repository's on-demand transformations, and hands the model the merged row. See
    :mod:`modelhost.featurestore`.
    """

    model_config = ConfigDict(extra="forbid")

    repo: str = Field(min_length=1, max_length=4096)
    """The Feast repository (a directory of feature definitions, with or without a
    ``feature_store.yaml``): absolute, or relative to the model directory it is pushed from."""
    service: str | None = Field(default=None, min_length=1, max_length=255)
    """A feature service of that repository; or name the features with ``features``."""
    features: list[str] = Field(default_factory=list, max_length=1024)
    """Feature references ``view:feature`` (instead of ``service``)."""
    entities: list[str] = Field(min_length=1, max_length=16)
    """Join keys every request row carries (e.g. ``customer_id``)."""
    max_age_s: float | None = Field(default=None, gt=0)
    """A stored value older than this is stale and handled as missing; None: never stale."""
    on_missing: Literal["reject", "default"] = "reject"
    """A missing entity or a stale or missing value: ``reject`` answers 422 naming the entity;
    ``default`` uses ``defaults`` (and still 422 for a feature without a default)."""
    defaults: dict[str, float | int | str | bool] = Field(default_factory=dict)
    """Value per feature name used by ``on_missing: default``."""
    skew_threshold: float = Field(default=0.01, ge=0, le=1)
    """Mismatch rate of a feature (served online vs. recomputed offline) that raises an alert."""
    skew_tolerance: float = Field(default=1e-6, ge=0)
    """Relative difference under which two numbers count as equal in the skew check."""
    alert_url: str | None = Field(default=None, pattern=r"^https?://", max_length=2048)
    """Where skew alerts go; default: ``monitoring.alert_url``, then ``drift.alert_url``."""

    @model_validator(mode="after")
    def _check_features(self) -> FeatureStoreConfig:
        if (self.service is None) == (not self.features):
            raise ValueError("name either 'service' or 'features' (feature references)")
        for ref in self.features:
            if ref.count(":") != 1 or ref.startswith(":") or ref.endswith(":"):
                raise ValueError(f"feature reference {ref!r} must read 'view:feature'")
        return self


class TrainingSetLineage(BaseModel):
    """What a version was trained on: written by ``modelhost featurestore training-set``."""

    path: str
    """Where the training frame (parquet) was written."""
    sha256: str
    """Digest of the parquet file."""
    rows: int
    columns: list[str]
    entities_sha256: str
    """Digest of the entity file (keys, timestamps, labels) the frame was built from."""
    definitions_sha256: str
    """Digest of the feature definitions used (views, on-demand views, service)."""
    feature_service: str | None = None
    features: list[str] = Field(default_factory=list)
    created_at: str
    """When it was built (ISO 8601, UTC)."""


class Lineage(BaseModel):
    """Where a version comes from."""

    training_set: TrainingSetLineage | None = None


class ModelManifest(BaseModel):
    """One model version as declared in its ``modelhost.yaml``."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    name: str
    version: str
    runtime: RuntimeKind
    task: Task = Task.CUSTOM
    artifacts: dict[str, str] = Field(default_factory=dict)
    """Logical name → file path relative to the version directory (e.g. ``model: model.onnx``)."""
    entrypoint: str | None = None
    """For the python runtime: ``package.module:ClassName``."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Runtime-specific options (feature names, labels, context size, ...)."""
    input_schema: dict[str, Any] = Field(default_factory=dict)
    """JSON Schema of one item of ``inputs``."""
    output_schema: dict[str, Any] = Field(default_factory=dict)
    """JSON Schema of one item of ``results``."""
    parameters: dict[str, Any] = Field(default_factory=dict)
    """Default request parameters; a request's ``parameters`` override them."""
    parameters_schema: dict[str, Any] = Field(default_factory=dict)
    """JSON Schema of ``parameters`` (after defaults are merged)."""
    limits: Limits = Field(default_factory=Limits)
    batching: Batching = Field(default_factory=Batching)
    card: ModelCard = Field(default_factory=ModelCard)
    evaluation: dict[str, Any] = Field(default_factory=dict)
    pricing: Pricing | None = None
    provenance: ProvenanceConfig = Field(default_factory=ProvenanceConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    guards: GuardsConfig = Field(default_factory=GuardsConfig)
    """Input and output guards: prompt-injection policy, fencing, PII redaction, blocked content."""
    gates: Gates = Field(default_factory=Gates)
    """Promotion gates: golden set, schema compatibility, warm-up inputs."""
    supported_languages: list[str] = Field(default_factory=list)
    max_tokens: int | None = Field(default=None, gt=0)
    """Context window of a language model, shown in metadata."""
    cache: CacheConfig = Field(default_factory=CacheConfig)
    """Response caching of this version."""
    cascade: CascadeConfig | None = None
    """The stages of a ``runtime: cascade`` version (required by it, refused elsewhere)."""
    feature: FeatureConfig | None = None
    """How a ``runtime: feature`` version runs (required by it, refused elsewhere): see
    :mod:`modelhost.features`."""
    feature_store: FeatureStoreConfig | None = None
    """Stored features this version reads from a Feast repository (see
    :mod:`modelhost.featurestore`)."""
    lineage: Lineage = Field(default_factory=Lineage)
    """What the version was trained on (``modelhost featurestore training-set`` records it)."""
    fallbacks: list[str] = Field(default_factory=list, max_length=8)
    """Models (``name`` or ``name@version``) tried in order when this version times out,
    fails or is unavailable (its circuit breaker open); a caller's error never falls back."""

    @model_validator(mode="after")
    def _check_cascade(self) -> ModelManifest:
        if (self.runtime is RuntimeKind.CASCADE) != (self.cascade is not None):
            raise ValueError("'cascade' is required by 'runtime: cascade' and only by it")
        if (self.runtime is RuntimeKind.FEATURE) != (self.feature is not None):
            raise ValueError("'feature' is required by 'runtime: feature' and only by it")
        return self

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                "use 1-63 lower-case letters, digits, '.', '_' or '-', starting with a "
                "letter or digit"
            )
        return value

    @field_validator("version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        try:
            semver.Version.parse(value)
        except ValueError:
            raise ValueError("use a semantic version MAJOR.MINOR.PATCH, e.g. 1.2.0") from None
        return value

    @field_validator("input_schema", "output_schema", "parameters_schema")
    @classmethod
    def _check_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return value

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"

    def artifact(self, key: str, default: str | None = None) -> str:
        """The relative path of the artifact ``key``.

        Raises:
            ManifestError: the manifest names no such artifact and there is no default.
        """
        path = self.artifacts.get(key, default)
        if path is None:
            raise ManifestError(
                f"{self.ref}: field 'artifacts.{key}' is missing: name the file, e.g. "
                f"'artifacts: {{{key}: model.bin}}'",
                param=f"artifacts.{key}",
            )
        return path


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(root)"
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            msg = "is required: add it to modelhost.yaml"
        elif item["type"] == "extra_forbidden":
            msg = "is not a known field: remove it or check its spelling"
        lines.append(f"field '{loc}': {msg}")
    return "; ".join(lines)


def parse_manifest(data: Any, *, source: str = MANIFEST_FILE) -> ModelManifest:
    """Validate a manifest given as a mapping.

    Raises:
        ManifestError: naming every wrong field and how to fix it.
    """
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: must be a mapping of fields, got {type(data).__name__}")
    try:
        return ModelManifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{source}: {_describe(exc)}") from None


def load_manifest(directory: Path, *, artifacts: bool = True) -> ModelManifest:
    """Read and validate ``directory/modelhost.yaml``, checking that its artifacts exist
    (unless ``artifacts`` is False: a model directory before training, whose training set is
    being built).

    Raises:
        ManifestError: the file is missing, is not YAML, breaks the schema, or names a file
            that is not in the directory.
    """
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{directory}: no {MANIFEST_FILE}; every model version needs one")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from None
    manifest = parse_manifest(data, source=str(path))
    store = manifest.feature_store
    if store is not None and not Path(store.repo).is_absolute():
        store.repo = str((directory / store.repo).resolve())
    if not artifacts:
        return manifest
    for key, rel in manifest.artifacts.items():
        if not (directory / rel).exists():
            raise ManifestError(
                f"{path}: field 'artifacts.{key}' names {rel!r}, which is not in {directory}",
                param=f"artifacts.{key}",
            )
    golden = manifest.gates.golden
    if golden is not None and golden.file is not None:
        rel = manifest.artifacts.get(golden.file, golden.file)
        if not (directory / rel).is_file():
            raise ManifestError(
                f"{path}: field 'gates.golden.file' names {rel!r}, which is not a file in "
                f"{directory}",
                param="gates.golden.file",
            )
    evaluation = directory / EVALUATION_FILE
    if not manifest.evaluation and evaluation.is_file():
        try:
            manifest.evaluation = json.loads(evaluation.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{evaluation}: not valid JSON: {exc}") from None
    return manifest
