"""REST v1 wire models (seed 004 §3.3). The hot path parses with orjson and checks the
envelope by hand; these models document the API in OpenAPI."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class PredictRequest(BaseModel):
    """Body of ``POST /v1/models/{model}/predict``."""

    inputs: list[Any] = Field(
        description="The items to predict on; each must match the model's input_schema.",
        examples=[
            [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]
        ],
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Per-request parameters, over the model's defaults."
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
