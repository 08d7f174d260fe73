"""Fallbacks: when a model version times out, fails or is unavailable, the next model its
manifest names (``fallbacks``) answers instead.

The data plane hands a failed request here (after counting the failure); each fallback gets a
child request with the same inputs, parameters and principal, run through the whole request
path (auth, limits, validation, charging apply to it). The answer carries a ``fallback``
decision (in the response body and the provenance record): which version failed, why, and
which model answered. A caller's error (:class:`~modelhost.errors.RequestError`) never falls
back, and a fallback's request never falls back again (no chains or loops).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from modelhost.errors import ModelNotReady
from modelhost.observability.metrics import outcome_of
from modelhost.registry import VersionInfo
from modelhost.serving.breaker import counts_against

if TYPE_CHECKING:
    from modelhost.inference import InferenceRequest

#: What a call through the request path gives: a response, or an opened stream.
T = TypeVar("T")


def child_request(
    request: InferenceRequest, reference: str, decision: tuple[str, object]
) -> InferenceRequest:
    """A copy of ``request`` for the model ``reference`` (``name`` or ``name@version``),
    carrying one more decision for its record."""
    name, _, version = reference.partition("@")
    key, value = decision
    return replace(
        request,
        model=name,
        version=version or None,
        route=None,
        decisions={**request.decisions, key: value},
    )


def unavailable(exc: BaseException) -> bool:
    """True for a failure a fallback answers for: the model's (timeout, runtime error, crash)
    or its absence (not ready, breaker open), never the caller's."""
    return isinstance(exc, ModelNotReady) or counts_against(exc)


def may_fall_back(request: InferenceRequest, info: VersionInfo, exc: BaseException) -> bool:
    """True when ``exc`` is the model's failure, ``info`` names fallbacks, and ``request`` is
    not itself a fallback's."""
    return (
        unavailable(exc) and bool(info.manifest.fallbacks) and "fallback" not in request.decisions
    )


async def fall_back(
    call: Callable[[InferenceRequest], Awaitable[T]],
    request: InferenceRequest,
    info: VersionInfo,
    exc: Exception,
) -> T:
    """Answer ``request`` with the first of ``info``'s fallbacks that answers.

    Args:
        call: runs a request through the whole path (``DataPlane.infer``, or opening a
            stream); called with each fallback's child request in turn.

    Raises:
        Exception: ``exc`` itself when no fallback applies or every fallback was unavailable;
            a fallback's own non-service error (e.g. its rate limit) as it is.
    """
    if not may_fall_back(request, info, exc):
        raise exc
    tried: list[str] = []
    for reference in info.manifest.fallbacks:
        decision = {
            "from": info.ref,
            "reason": outcome_of(exc),
            "to": reference,
            "skipped": list(tried),
        }
        try:
            return await call(child_request(request, reference, ("fallback", decision)))
        except Exception as failed:  # this one cannot answer either: try the next
            if not unavailable(failed):
                raise
            tried.append(reference)
    raise exc
