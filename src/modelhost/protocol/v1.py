"""REST v1 wire models (seed 004 §3.3). The hot path parses with orjson and checks the
envelope by hand; these models document the API in OpenAPI."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Unknown fields are refused, and the documents say so.
_STRICT = ConfigDict(extra="forbid")


class PredictRequest(BaseModel):
    """Body of ``POST /v1/models/{model}/predict``."""

    model_config = _STRICT

    inputs: list[Any] = Field(
        description="The items to predict on; each must match the model's input_schema.",
        examples=[
            [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]
        ],
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Per-request parameters, over the model's defaults."
    )
    async_: bool = Field(
        default=False,
        alias="async",
        description="Queue the call as a job and answer 202 with its id (see POST /v1/jobs).",
    )


class UsageBody(BaseModel):
    """Token or item counts, and the call's cost when the version has pricing."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost: float | None = Field(
        default=None, description="Price of this call under the version's pricing."
    )
    currency: str | None = Field(default=None, description="Currency of ``cost``.")


class PredictResponse(BaseModel):
    """Answer of ``POST /v1/models/{model}/predict``."""

    id: str
    model: str
    version: str
    created: int
    results: list[Any]
    usage: UsageBody


class ErrorDetail(BaseModel):
    """What went wrong."""

    type: str
    message: str
    param: str | None = None
    code: str | None = None
    request_id: str


class ErrorBody(BaseModel):
    """Every error response."""

    error: ErrorDetail


# -- bodies of the other v1 routes (each parsed by hand; these document them) ------------------


class JobRequest(BaseModel):
    """Body of ``POST /v1/jobs``."""

    model_config = _STRICT

    model: str = Field(min_length=1, max_length=200, description="``name`` or ``name@version``.")
    inputs: list[Any] = Field(min_length=1, description="The items, as for predict.")
    parameters: dict[str, Any] = Field(default_factory=dict)
    callback_url: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description="Called with the finished job, signed (see GET /v1/webhooks/secret).",
    )
    priority: int = Field(default=0, ge=-100, le=100, description="Higher runs first.")
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="A repeat with the same key answers the first job (200, not 202).",
    )


class BatchRequest(BaseModel):
    """JSON body of ``POST /v1/batch/predict``: every instance of ``inputs`` is one item."""

    model_config = _STRICT

    model: str = Field(min_length=1, max_length=200)
    inputs: list[Any] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    priority: Literal["low", "normal", "high"] = "low"
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Kept with the batch (at most 16 KiB as JSON)."
    )


class ReplayRequest(BaseModel):
    """Body of ``POST /v1/provenance/{request_id}/replay`` (optional)."""

    model_config = _STRICT

    version: str | None = Field(
        default=None, min_length=1, description="Version, alias or stage to replay against."
    )


#: A unix time, an ISO 8601 time, or a duration before now (``30s``, ``15m``, ``1h``, ``7d``).
TimeValue = float | str


class ReplayWindowRequest(BaseModel):
    """Body of ``POST /v1/provenance/replay``."""

    model_config = _STRICT

    model: str = Field(min_length=1, max_length=128)
    against: str = Field(min_length=1, max_length=128, description="The version to compare.")
    since: TimeValue = Field(description="Unix time, ISO 8601 time, or a duration (1h).")
    until: TimeValue | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    tolerance: float = Field(default=1e-4, ge=0, le=1e9)
    examples: int = Field(default=5, ge=0, le=50)


class RampBody(BaseModel):
    """A canary's weight schedule."""

    steps: list[float] = Field(min_length=1, description="Ascending weights in (0, 100].")
    interval_s: float = Field(gt=0)
    promote: bool = True


class DeploymentPatch(BaseModel):
    """Body of ``PATCH /v1/models/{model}/deployment`` (every field optional)."""

    model_config = _STRICT

    canary: str | None = Field(default=None, description="A version; null ends the canary.")
    weight: float | None = Field(default=None, ge=0, le=100)
    ramp: RampBody | None = None
    guards: dict[str, float] | None = None
    sticky: Literal["principal", "session"] | None = None
    shadows: list[str] | None = None
    add_shadow: str | None = None
    remove_shadow: str | None = None


class PromoteRequest(BaseModel):
    """Body of ``POST /v1/models/{model}/deployment/promote`` (optional)."""

    model_config = _STRICT

    version: str | None = Field(default=None, min_length=1, description="Default: the canary.")
    force: bool = Field(default=False, description="Skip the gates (audited as forced).")


class RollbackRequest(BaseModel):
    """Body of ``POST /v1/models/{model}/deployment/rollback`` (optional)."""

    model_config = _STRICT

    to: str | None = Field(default=None, description="Default: the previous production.")


class GoldenItemBody(BaseModel):
    """One golden input and the answer it must get."""

    model_config = _STRICT

    input: Any
    expected: Any


class GoldenSetRequest(BaseModel):
    """JSON body of ``PUT /v1/models/{model}/versions/{version}/golden`` (or a bare array of
    items)."""

    model_config = _STRICT

    items: list[GoldenItemBody] = Field(min_length=1)
    thresholds: dict[str, float] | None = None
    field: str | None = None
    parameters: dict[str, Any] | None = None
    batch_size: int | None = None
    examples: int | None = None


#: Body of ``POST /v1/predictions/{request_id}/feedback``: exactly one verdict.
FEEDBACK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "label": {
            "description": "The true label of a request of one item.",
            "not": {"type": "null"},
        },
        "labels": {
            "type": "array",
            "minItems": 1,
            "description": "One true label per item (null: not judged), at least one set.",
        },
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "comment": {"type": "string", "maxLength": 2000},
    },
    "oneOf": [{"required": ["label"]}, {"required": ["labels"]}, {"required": ["score"]}],
}
