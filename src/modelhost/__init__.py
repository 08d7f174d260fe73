"""modelhost: machine-learning models as a production service backend.

The names below are imported on first use (PEP 562), so ``import modelhost`` — and with it
every ``modelhost`` command that does not serve — does not pay for the server's imports
(FastAPI, scipy, onnxruntime, the runtimes).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from modelhost.app import create_app
    from modelhost.config import Settings
    from modelhost.manifest import ModelManifest, load_manifest

_LAZY = {
    "create_app": "modelhost.app",
    "Settings": "modelhost.config",
    "ModelManifest": "modelhost.manifest",
    "load_manifest": "modelhost.manifest",
}

__all__ = ["ModelManifest", "Settings", "__version__", "create_app", "load_manifest"]


def __getattr__(name: str) -> Any:
    """Import ``create_app``, ``Settings``, ``ModelManifest`` and ``load_manifest`` when first
    asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelhost' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
