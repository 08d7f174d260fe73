"""Security: principals and keys, rate limits and budgets, input and output guards."""

from __future__ import annotations

from modelhost.security.guards import (
    ContentBlocked,
    GuardResult,
    JsonGuardResult,
    OnBlocked,
    OutputGuard,
    OutputGuardConfig,
    StreamRedactor,
    merge_counts,
)
from modelhost.security.injection import (
    Action,
    DetectorOptions,
    InjectionDetector,
    InjectionScore,
    decide,
    embedder_from_runtime,
)
from modelhost.security.pii import PiiKind
from modelhost.security.prompts import PromptTemplate, RenderedPrompt, safe_messages, user_texts

__all__ = [
    "Action",
    "ContentBlocked",
    "DetectorOptions",
    "GuardResult",
    "InjectionDetector",
    "InjectionScore",
    "JsonGuardResult",
    "OnBlocked",
    "OutputGuard",
    "OutputGuardConfig",
    "PiiKind",
    "PromptTemplate",
    "RenderedPrompt",
    "StreamRedactor",
    "decide",
    "embedder_from_runtime",
    "merge_counts",
    "safe_messages",
    "user_texts",
]
