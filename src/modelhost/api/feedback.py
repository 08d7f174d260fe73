"""Feedback over REST: ``POST /v1/predictions/{request_id}/feedback``.

The caller says how right an answer was, later, by the request id it got back (the
``X-Request-ID`` header or the response's ``id``):

* ``{"label": "setosa"}`` for a request of one item;
* ``{"labels": ["setosa", null, "virginica"]}``: one true label per item (``null``: no
  verdict for that item);
* ``{"score": 0.8}``: the caller's own judgement, in [0, 1];

each with an optional ``"comment"``. A label is compared with the result's ``label`` field
(or the whole result when it is not an object); the answer's *correctness* is the share of
judged items that match, or the score. The request is found through its provenance record,
in the caller's tenant only (another tenant's request answers 404, as a missing one does),
so the verdict counts for the version that really answered. A second verdict on the same
request replaces the first.

A record is written about ``provenance.flush_interval_s`` after its answer: the route
flushes this process's recorder and waits that long before answering 404. A version whose
records keep only hashes (``provenance.capture: hash``, an unsampled or too large payload)
cannot be checked against a label: such a request takes a ``score`` (409 otherwise). The
route needs the ``predict`` scope.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from modelhost.accounting.feedback import Feedback, FeedbackStore
from modelhost.api.auth import principal_of
from modelhost.api.http import json_response, parse_json, read_body
from modelhost.api.openapi import json_body
from modelhost.errors import Conflict, InvalidInput, NotFound
from modelhost.protocol.v1 import FEEDBACK_SCHEMA, ErrorBody
from modelhost.provenance.recorder import Recorder
from modelhost.provenance.store import ProvenanceStore, Record

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 415)
}
#: Largest feedback body.
MAX_BODY = 256 * 1024
#: Longest comment kept.
MAX_COMMENT = 2000
_FIELDS = frozenset({"label", "labels", "score", "comment"})
_VERDICTS = ("label", "labels", "score")
#: Seconds between two looks for a record not written yet.
_POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a feedback body says."""

    labels: list[Any] | None = None
    """True labels, one per item (None: not judged); None when a score was sent."""
    single: bool = False
    """The labels came as ``label`` (a request of one item)."""
    score: float | None = None
    comment: str | None = None

    @property
    def label(self) -> Any:
        """What is stored as the true label: the one label, or the list."""
        if self.labels is None:
            return None
        return self.labels[0] if self.single else self.labels


def parse_verdict(payload: Any) -> Verdict:
    """The verdict of a feedback body.

    Raises:
        InvalidInput: not an object, unknown fields, not exactly one of ``label``,
            ``labels`` and ``score``, or a wrong value (naming the field).
    """
    if not isinstance(payload, dict):
        raise InvalidInput(
            'the body must be a JSON object: {"label": ...}, {"labels": [...]} or {"score": 0..1}',
            param="body",
        )
    unknown = sorted(set(payload) - _FIELDS)
    if unknown:
        raise InvalidInput(
            f"unknown field {unknown[0]!r}; send label, labels or score, and optionally comment",
            param=unknown[0],
        )
    given = [name for name in _VERDICTS if name in payload]
    if len(given) != 1:
        raise InvalidInput(
            "send exactly one of 'label' (a request of one item), 'labels' (one per item) "
            "or 'score' (0 to 1)",
            param="body",
        )
    comment = payload.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT):
        raise InvalidInput(
            f"'comment' must be a string of at most {MAX_COMMENT} characters", param="comment"
        )
    if "score" in payload:
        score = payload["score"]
        if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
            raise InvalidInput("'score' must be a number from 0 to 1", param="score")
        return Verdict(score=float(score), comment=comment)
    if "label" in payload:
        if payload["label"] is None:
            raise InvalidInput("'label' must not be null", param="label")
        return Verdict(labels=[payload["label"]], single=True, comment=comment)
    labels = payload["labels"]
    if not isinstance(labels, list) or all(label is None for label in labels):
        raise InvalidInput(
            "'labels' must be an array with one true label per item (null: not judged), "
            "at least one of them set",
            param="labels",
        )
    return Verdict(labels=labels, comment=comment)


def answered(result: Any) -> Any:
    """The part of a result a true label is compared with: its ``label`` field, or the
    result itself when it is not an object with one."""
    if isinstance(result, dict) and "label" in result:
        return result["label"]
    return result


def correctness(verdict: Verdict, record: Record) -> float:
    """How right the recorded answer was, in [0, 1].

    Raises:
        Conflict: a label was sent but the record kept only hashes of the answer.
        InvalidInput: the number of labels does not match the request's items.
    """
    if verdict.score is not None:
        return verdict.score
    labels = verdict.labels or []
    outputs = record.outputs
    if outputs is None:
        raise Conflict(
            f"the record of request {record.request_id!r} keeps only hashes of its answer "
            f"(payload {record.payload!r}), so a label cannot be compared with it; send "
            '{"score": 0..1} instead',
            param="label",
        )
    if len(labels) != len(outputs):
        name = "label" if verdict.single else "labels"
        raise InvalidInput(
            f"request {record.request_id!r} had {len(outputs)} item(s); send 'labels' with "
            f"one label per item ({len(labels)} given)",
            param=name,
        )
    judged = [
        bool(answered(result) == label)
        for result, label in zip(outputs, labels, strict=True)
        if label is not None
    ]
    return sum(judged) / len(judged)


def build_router(
    store: FeedbackStore,
    provenance: ProvenanceStore,
    recorder: Recorder | None,
    *,
    flush_interval_s: float = 1.0,
) -> APIRouter:
    """The feedback route: joins through ``provenance`` (flushing ``recorder``, this
    process's, and waiting up to ``flush_interval_s`` for a record not written yet)."""
    router = APIRouter(tags=["feedback"])

    async def _record(key: str, tenant: str) -> Record:
        found = await asyncio.to_thread(provenance.get, key, tenant)
        if found is None and recorder is not None:
            await recorder.flush()
            found = await asyncio.to_thread(provenance.get, key, tenant)
        deadline = time.monotonic() + flush_interval_s + _POLL_S
        while found is None and time.monotonic() < deadline:  # another process may write it
            await asyncio.sleep(_POLL_S)
            found = await asyncio.to_thread(provenance.get, key, tenant)
        if found is None:
            raise NotFound(
                f"no prediction {key!r} in your tenant (its record is written up to "
                f"{flush_interval_s:g} s after the answer, when provenance recording is on)",
                param="request_id",
            )
        return found

    @router.post(
        "/v1/predictions/{request_id}/feedback",
        summary="Say how right an answer was (true labels or a score)",
        responses=_ERRORS,
        openapi_extra=json_body(FEEDBACK_SCHEMA),
    )
    async def give_feedback(request_id: str, request: Request) -> Response:
        who = principal_of(request.scope)
        verdict = parse_verdict(parse_json(await read_body(request, MAX_BODY)))
        record = await _record(request_id, who.tenant)
        if record.status != "ok" or record.version is None:
            raise Conflict(
                f"request {request_id!r} failed, so it has no answer to give feedback on",
                param="request_id",
            )
        feedback = Feedback(
            request_id=record.request_id,
            tenant=record.tenant,
            model=record.model,
            version=record.version,
            correct=correctness(verdict, record),
            label=verdict.label,
            score=verdict.score,
            principal=f"{who.tenant}/{who.subject}",
            comment=verdict.comment,
        )
        await asyncio.to_thread(store.record, feedback)
        stored = await asyncio.to_thread(store.get, record.request_id, record.tenant)
        return json_response((stored or feedback).as_dict())

    return router
