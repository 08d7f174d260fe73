"""Replay: run recorded requests again, on the version that served them or another, and say
how the answers differ.

A replay goes through the whole data plane like any call (``DataPlane.infer``): as the caller
(whose ``predict`` scope, limits and budget apply), with protocol ``replay`` (its metrics
label, so replays never count as live traffic) and ``replay_of`` set (its own provenance
record says what it replayed, and listings leave it out unless asked).

Answers are compared item by item, leaf by leaf. The *distance* of two values is 0 when they
are equal; for two numbers it is their gap relative to their size, ``|a - b| / max(1, |a|,
|b|)`` (so probabilities compare by their plain difference); anything else that differs
(a label, a string, a missing field, a type) is 1. Two answers *agree* when their largest
distance is within a tolerance; they are the *same* when nothing differs at all.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from modelhost.errors import (
    Conflict,
    Forbidden,
    ModelNotReady,
    NotFound,
    RateLimited,
    Unauthenticated,
)
from modelhost.featurestore.online import stored_of
from modelhost.inference import InferenceRequest, InferenceResponse, new_id
from modelhost.provenance.capture import describe_error
from modelhost.provenance.store import ProvenanceStore, Query, Record
from modelhost.security.keys import Principal, Scope
from modelhost.serving.dataplane import DataPlane

#: Errors of a replay that are about the caller or the target, not the model's answer: raised
#: to the caller instead of being reported as the replay's outcome.
_RAISED = (Unauthenticated, Forbidden, RateLimited, NotFound, ModelNotReady)
#: Label of a path or value that one side lacks.
_MISSING = "<missing>"
#: Differences shown per replay.
DIFF_LIMIT = 20


@dataclass(frozen=True, slots=True)
class Difference:
    """One leaf where two answers differ."""

    path: str
    """Where, from the results list: ``[0].probabilities.setosa``."""
    original: Any
    replay: Any
    distance: float

    def view(self) -> dict[str, Any]:
        """The JSON shape."""
        return {
            "path": self.path,
            "original": self.original,
            "replay": self.replay,
            "distance": self.distance,
        }


@dataclass(frozen=True, slots=True)
class Comparison:
    """How two answers differ."""

    differences: list[Difference]
    """Every differing leaf, largest distance first."""

    @property
    def same(self) -> bool:
        """Nothing differs."""
        return not self.differences

    @property
    def distance(self) -> float:
        """The largest distance of any leaf (0 when the same)."""
        return self.differences[0].distance if self.differences else 0.0

    def agrees(self, tolerance: float) -> bool:
        """True when no leaf differs by more than ``tolerance``."""
        return self.distance <= tolerance


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _walk(a: Any, b: Any, path: str) -> Iterator[Difference]:
    if _is_number(a) and _is_number(b):
        if a != b:
            yield Difference(path, a, b, abs(a - b) / max(1.0, abs(a), abs(b)))
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys(), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key in a and key in b:
                yield from _walk(a[key], b[key], sub)
            else:
                yield Difference(sub, a.get(key, _MISSING), b.get(key, _MISSING), 1.0)
        return
    if isinstance(a, list) and isinstance(b, list):
        for index in range(max(len(a), len(b))):
            sub = f"{path}[{index}]"
            if index < len(a) and index < len(b):
                yield from _walk(a[index], b[index], sub)
            else:
                left = a[index] if index < len(a) else _MISSING
                right = b[index] if index < len(b) else _MISSING
                yield Difference(sub, left, right, 1.0)
        return
    if a != b or type(a) is not type(b):
        yield Difference(path or "$", a, b, 1.0)


def compare(original: Any, replay: Any) -> Comparison:
    """Compare two answers (results lists) leaf by leaf."""
    found = sorted(_walk(original, replay, ""), key=lambda d: d.distance, reverse=True)
    return Comparison(found)


@dataclass(frozen=True, slots=True)
class Replayed:
    """One recorded request run again."""

    record: Record
    request_id: str
    """The replay's own request id (its provenance record has it)."""
    response: InferenceResponse | None
    error: Exception | None
    latency_ms: float
    comparison: Comparison

    def view(self) -> dict[str, Any]:
        """The JSON answer of ``POST /v1/provenance/{request_id}/replay``."""
        record = self.record
        replay: dict[str, Any] = {
            "request_id": self.request_id,
            "model": record.model,
            "version": self.response.version if self.response is not None else None,
            "status": "ok" if self.error is None else "error",
            "outputs": self.response.results if self.response is not None else None,
            "error": describe_error(self.error) if self.error is not None else None,
            "latency_ms": self.latency_ms,
        }
        original = {
            "record_id": record.id,
            "request_id": record.request_id,
            "model": record.model,
            "version": record.version,
            "status": record.status,
            "outputs": record.outputs,
            "error": record.error,
            "latency_ms": record.duration_ms,
        }
        return {
            "original": original,
            "replay": replay,
            "same": self.comparison.same,
            "distance": self.comparison.distance,
            "diff": [d.view() for d in self.comparison.differences[:DIFF_LIMIT]],
            "latency_ms": {"original": record.duration_ms, "replay": self.latency_ms},
        }


@dataclass(frozen=True, slots=True)
class Window:
    """Which recorded requests to replay, against which version."""

    model: str
    against: str
    """Version, alias or stage to replay on."""
    since: float
    until: float | None = None
    tenant: str | None = None
    """Only this tenant's records (None: every tenant's, for administrators)."""
    limit: int = 100
    """Most records replayed: the newest replayable ones in the window."""
    tolerance: float = 1e-4
    """Largest distance at which two answers still agree."""
    examples: int = 5
    """Most different examples reported."""


def _p50(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _outcome(record: Record, result: InferenceResponse | Exception) -> Comparison:
    if isinstance(result, InferenceResponse):
        if record.status != "ok":
            kind = (record.error or {}).get("type", "error")
            return Comparison([Difference("$", f"<{kind}>", "<answered>", 1.0)])
        return compare(record.outputs, result.results)
    kind = type(result).__name__
    if record.status != "ok" and (record.error or {}).get("type") == kind:
        return Comparison([])
    return Comparison([Difference("$", "<answered>", f"<{kind}>", 1.0)])


class Replayer:
    """Runs recorded requests again through the data plane.

    Args:
        plane: the data plane replays run through.
        store: the provenance records.
        concurrency: replays of a window running at once.
    """

    def __init__(self, plane: DataPlane, store: ProvenanceStore, *, concurrency: int = 8) -> None:
        self.plane = plane
        self.store = store
        self.concurrency = concurrency

    async def replay(self, record: Record, who: Principal, version: str | None = None) -> Replayed:
        """Run ``record`` again on ``version`` (default: the version that served it).

        Raises:
            Conflict: the record kept no replayable payload (hashes only, redacted, not
                sampled, too large).
            Forbidden, RateLimited, NotFound, ModelNotReady: as the data plane raises them
                for the caller or the target version. Other failures of the replay are its
                outcome, reported in the answer.
        """
        if not record.replayable:
            raise Conflict(_not_replayable(record), param="request_id")
        request = InferenceRequest(
            model=record.model,
            version=version or record.version,
            inputs=list(record.inputs or []),
            parameters=dict(record.parameters),
            request_id=new_id("rpl"),
            protocol="replay",
            principal=who,
            replay_of=record.request_id,
            stored=stored_of(record.decisions.get("feature_store")),
        )
        started = time.perf_counter()
        result: InferenceResponse | Exception
        try:
            result = await self.plane.infer(request)
        except _RAISED:
            raise
        except Exception as exc:  # the replay's outcome: reported, not raised
            result = exc
        latency = round((time.perf_counter() - started) * 1000, 3)
        response = result if isinstance(result, InferenceResponse) else None
        error = None if isinstance(result, InferenceResponse) else result
        return Replayed(
            record, request.request_id, response, error, latency, _outcome(record, result)
        )

    async def window(self, who: Principal, window: Window) -> dict[str, Any]:
        """Replay the newest replayable answered requests of a model in a time window against
        one version; report agreement, latency change and the most different examples.

        Raises:
            Forbidden: the caller lacks ``predict`` (replays are inferences).
            NotFound: the model or the version to replay on does not exist.
        """
        who.require(Scope.PREDICT)
        await self.plane.manager.resolve(window.model, window.against)
        query = Query(
            tenant=window.tenant,
            model=window.model,
            status="ok",
            since=window.since,
            until=window.until,
            replayable=True,
            limit=window.limit,
        )
        records = await asyncio.to_thread(self.store.list, query)
        unreplayable = await asyncio.to_thread(self.store.count, replace(query, replayable=False))
        gate = asyncio.Semaphore(self.concurrency)

        async def one(record: Record) -> Replayed | Exception:
            async with gate:
                try:
                    return await self.replay(record, who, window.against)
                except Exception as exc:  # counted among the failures of the window
                    return exc

        outcomes = await asyncio.gather(*(one(record) for record in records))
        report = _report(window, records, outcomes)
        report["not_replayable"] = unreplayable
        return report


def _not_replayable(record: Record) -> str:
    reasons = {
        "hash": "its version records hashes only (provenance.capture: hash)",
        "redacted": "its payload was stored redacted (provenance.capture: redacted)",
        "unsampled": "its payload was not sampled (provenance.sample_rate)",
        "too_large": "its payload was over provenance.max_payload_bytes",
    }
    why = reasons.get(record.payload, "its inputs were not kept")
    return (
        f"request {record.request_id!r} cannot be replayed: {why}; only records with payload "
        "'full' keep the inputs as sent"
    )


def _report(
    window: Window, records: list[Record], outcomes: list[Replayed | Exception]
) -> dict[str, Any]:
    done = [o for o in outcomes if isinstance(o, Replayed) and o.error is None]
    errors: dict[str, int] = {}
    for outcome in outcomes:
        failure = outcome if isinstance(outcome, Exception) else outcome.error
        if failure is not None:
            errors[type(failure).__name__] = errors.get(type(failure).__name__, 0) + 1
    versions: dict[str, int] = {}
    for record in records:
        versions[record.version or "?"] = versions.get(record.version or "?", 0) + 1
    agree = sum(1 for o in done if o.comparison.agrees(window.tolerance))
    same = sum(1 for o in done if o.comparison.same)
    original_p50 = _p50([o.record.duration_ms for o in done])
    replay_p50 = _p50([o.latency_ms for o in done])
    change = None
    if original_p50 and replay_p50 is not None:
        change = round((replay_p50 - original_p50) / original_p50 * 100, 1)
    ranked = sorted(done, key=lambda o: o.comparison.distance, reverse=True)
    return {
        "model": window.model,
        "against": window.against,
        "since": window.since,
        "until": window.until,
        "tolerance": window.tolerance,
        "replayed": len(records),
        "answered": len(done),
        "failed": len(records) - len(done),
        "errors": errors,
        "original_versions": versions,
        "agreement": round(agree / len(done), 4) if done else None,
        "exact": round(same / len(done), 4) if done else None,
        "latency_ms": {
            "original_p50": original_p50,
            "replay_p50": replay_p50,
            "change_pct": change,
        },
        "most_different": [_example(o) for o in ranked[: window.examples] if not o.comparison.same],
    }


def _example(outcome: Replayed) -> dict[str, Any]:
    record = outcome.record
    return {
        "request_id": record.request_id,
        "record_id": record.id,
        "original_version": record.version,
        "replay_request_id": outcome.request_id,
        "distance": outcome.comparison.distance,
        "inputs": record.inputs,
        "diff": [d.view() for d in outcome.comparison.differences[:DIFF_LIMIT]],
    }
