"""Model registry: versions, stages, aliases, history and the artifact store."""

from modelhost.registry.artifacts import ArtifactStore
from modelhost.registry.db import make_engine
from modelhost.registry.deployments import (
    DeployEvent,
    Deployments,
    DeploymentSpec,
    GuardPolicy,
    RampPlan,
    RolloutState,
    Sticky,
)
from modelhost.registry.service import (
    HistoryEntry,
    ModelInfo,
    Registry,
    Stage,
    VersionInfo,
    build_registry,
    resolve_in,
    storable,
)

__all__ = [
    "ArtifactStore",
    "DeployEvent",
    "DeploymentSpec",
    "Deployments",
    "GuardPolicy",
    "HistoryEntry",
    "ModelInfo",
    "RampPlan",
    "Registry",
    "RolloutState",
    "Stage",
    "Sticky",
    "VersionInfo",
    "build_registry",
    "make_engine",
    "resolve_in",
    "storable",
]
