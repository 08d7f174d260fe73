"""Model registry: versions, stages, aliases, history and the artifact store."""

from modelhost.registry.artifacts import ArtifactStore
from modelhost.registry.db import make_engine
from modelhost.registry.service import (
    HistoryEntry,
    ModelInfo,
    Registry,
    Stage,
    VersionInfo,
    resolve_in,
)

__all__ = [
    "ArtifactStore",
    "HistoryEntry",
    "ModelInfo",
    "Registry",
    "Stage",
    "VersionInfo",
    "make_engine",
    "resolve_in",
]
