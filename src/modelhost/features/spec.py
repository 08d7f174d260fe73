"""Feature specs: a product feature declared as data, run by a general language model.

A spec is a YAML file (see ``docs/features.md``)::

    name: triage
    version: 1.0.0
    description: Category and urgency of a support ticket.
    model: gemma-270m                 # a model name, name@version, or name@alias
    parameters: {temperature: 0, max_tokens: 96}
    instructions: You triage support tickets ...
    template: |
      Ticket subject: {{ input.subject }}
      Ticket body: {{ input.body }}
    input_schema: {...}               # JSON Schema of one input
    output_schema: {...}              # JSON Schema the answer must match
    examples: [{input: {...}, output: {...}}]
    golden: {threshold: 0.8, cases: [{input: {...}, expected: {...}}]}
    conversation: {enabled: false}

``modelhost features push`` turns it into a model version whose runtime is ``feature``
(:meth:`FeatureSpec.manifest`): the registry gives it semantic versions, stages, aliases,
deployments (canary, rollback) and promotion gates (its golden set) like any model, and the
data plane runs it (:mod:`modelhost.features.runner`) with no code written for the feature.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelhost.errors import ManifestError, invalid_input
from modelhost.manifest import (
    DEFAULT_FEATURE_PARAMETERS,
    MANIFEST_FILE,
    ConversationConfig,
    FeatureConfig,
    FeatureExample,
    ModelManifest,
    RuntimeKind,
    Task,
    parse_manifest,
)

#: The artifact holding a feature version's golden cases (JSON Lines).
GOLDEN_FILE = "golden.jsonl"
#: Parameters a feature passes to its model unless the spec says otherwise.
DEFAULT_PARAMETERS = DEFAULT_FEATURE_PARAMETERS


class GoldenCase(BaseModel):
    """An input and what its answer must contain (every field given must match)."""

    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any]
    expected: dict[str, Any]


class FeatureGolden(BaseModel):
    """The golden set a version must pass before it becomes production."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(default=0.8, ge=0, le=1)
    """Least share of cases whose answer holds every expected field."""
    cases: list[GoldenCase] = Field(min_length=1, max_length=10_000)


class TenantOverride(BaseModel):
    """A tenant's own variant of a feature: its template, instructions, parameters or
    examples; the feature's output schema is still enforced."""

    model_config = ConfigDict(extra="forbid")

    instructions: str | None = Field(default=None, max_length=32_000)
    template: str | None = Field(default=None, max_length=32_000)
    parameters: dict[str, Any] | None = None
    examples: list[FeatureExample] | None = Field(default=None, max_length=32)

    def apply(self, config: FeatureConfig) -> FeatureConfig:
        """``config`` with the fields this override sets replaced."""
        changes = {k: v for k, v in self.model_dump(exclude_none=True).items()}
        if "parameters" in changes:
            changes["parameters"] = {**config.parameters, **changes["parameters"]}
        return FeatureConfig.model_validate({**config.model_dump(), **changes})


class FeatureSpec(BaseModel):
    """A feature as its author writes it (one YAML file per version)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    description: str = Field(default="", max_length=2_000)
    model: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    instructions: str = ""
    template: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    examples: list[FeatureExample] = Field(default_factory=list)
    golden: FeatureGolden | None = None
    repair_retries: int = 2
    constrained: bool = True
    conversation: ConversationConfig = Field(default_factory=ConversationConfig)
    limits: dict[str, Any] = Field(default_factory=dict)
    """Manifest limits (``max_batch_items``, ``timeout_ms``, ``requests_per_minute``, ...)."""
    pricing: dict[str, Any] | None = None
    """Manifest pricing of the feature itself (the model's own pricing is charged too)."""

    @field_validator("input_schema", "output_schema")
    @classmethod
    def _objects(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") != "object":
            raise ValueError("must be a JSON Schema of type 'object'")
        return value

    def config(self) -> FeatureConfig:
        """The ``feature`` section of its manifest."""
        return FeatureConfig(
            model=self.model,
            parameters=self.parameters,
            instructions=self.instructions,
            template=self.template,
            examples=self.examples,
            repair_retries=self.repair_retries,
            constrained=self.constrained,
            conversation=self.conversation,
        )

    def manifest(self) -> ModelManifest:
        """The manifest of the model version that serves this spec.

        Raises:
            ManifestError: the spec does not make a valid manifest (a bad schema, name or
                version, a template that does not compile).
        """
        data: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "runtime": RuntimeKind.FEATURE.value,
            "task": Task.CUSTOM.value,
            "input_schema": self.input_schema,
            "output_schema": self.output_schema,
            "parameters_schema": {
                "type": "object",
                "properties": {"session": {"type": "string", "minLength": 1, "maxLength": 128}},
                "additionalProperties": False,
            },
            "card": {"description": self.description},
            "feature": self.config().model_dump(),
            "limits": {"max_batch_items": 32, "timeout_ms": 300_000, **self.limits},
        }
        if self.pricing is not None:
            data["pricing"] = self.pricing
        if self.golden is not None:
            data["artifacts"] = {"golden": GOLDEN_FILE}
            data["gates"] = {
                "golden": {
                    "file": GOLDEN_FILE,
                    "field": None,
                    "match": "subset",
                    "thresholds": {"accuracy": self.golden.threshold},
                    "batch_size": 8,
                }
            }
        return parse_manifest(data)

    def write_version(self, directory: Path) -> Path:
        """Write the version directory ``modelhost models push`` takes: its manifest and
        golden cases. Returns ``directory``."""
        manifest = self.manifest()
        directory.mkdir(parents=True, exist_ok=True)
        body = manifest.model_dump(mode="json", exclude_defaults=True)
        (directory / MANIFEST_FILE).write_text(yaml.safe_dump(body, sort_keys=False))
        if self.golden is not None:
            lines = [
                json.dumps({"input": case.input, "expected": case.expected})
                for case in self.golden.cases
            ]
            (directory / GOLDEN_FILE).write_text("\n".join(lines) + "\n")
        return directory


def parse_spec(data: Any, source: str = "feature spec") -> FeatureSpec:
    """Validate a spec's data.

    Raises:
        ManifestError: naming the first wrong field.
    """
    try:
        spec = FeatureSpec.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(exc, where=source, root="spec", kind=ManifestError) from None
    from modelhost.features.template import FeatureTemplate

    FeatureTemplate(spec.template, name="template")  # compiles, or names the bad line
    spec.manifest()
    return spec


def load_spec(path: Path) -> FeatureSpec:
    """Read and validate a spec file (YAML or JSON).

    Raises:
        ManifestError: the file is missing, not YAML, or not a valid spec.
    """
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from None
    return parse_spec(data, str(path))
