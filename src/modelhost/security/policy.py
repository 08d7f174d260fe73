"""The ``guards`` section of a model manifest (kept free of registry imports, so the
manifest can use it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from modelhost.security.guards import OutputGuardConfig
from modelhost.security.injection import Action


class InjectionGuardConfig(BaseModel):
    """Per-model prompt-injection policy."""

    model_config = ConfigDict(extra="forbid")

    action: Action = Action.FLAG
    """What happens at or over the threshold: ``allow``, ``flag`` (answer, and say so) or
    ``block`` (400)."""
    threshold: float = Field(default=0.5, gt=0, le=1)
    """Detector score from which the action applies."""


class GuardsConfig(BaseModel):
    """The ``guards`` section of a manifest."""

    model_config = ConfigDict(extra="forbid")

    output: OutputGuardConfig | None = None
    """Output guards (PII redaction, blocked content); none when absent."""
    prompt_injection: InjectionGuardConfig | None = None
    """Prompt-injection scoring of LLM requests; none when absent."""
    fence_user_content: bool = False
    """Rewrite chat messages so user content is delimited data under a system preamble."""
