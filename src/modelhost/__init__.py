"""modelhost: machine-learning models as a production service backend."""

from __future__ import annotations

__version__ = "0.1.0"

from modelhost.app import create_app
from modelhost.config import Settings
from modelhost.manifest import ModelManifest, load_manifest

__all__ = ["ModelManifest", "Settings", "__version__", "create_app", "load_manifest"]
