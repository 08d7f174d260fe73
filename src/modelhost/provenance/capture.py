"""What a provenance record keeps of one inference: the row built from an ended inference.

Building a row costs CPU the caller must not wait for (canonical JSON, two sha256 hashes,
redaction, encoding), so it runs in the recorder's writer thread, never on the event loop.

* ``data_hash`` is the sha256 of the inputs as canonical JSON (sorted keys, no whitespace,
  numpy arrays as lists): two requests with the same inputs have the same hash whatever order
  their keys came in. ``output_hash`` is the same over the results.
* What a record keeps of the payload follows the version's ``provenance`` manifest section
  (``capture``: full, redacted or hash; ``sample_rate``) and ``provenance.max_payload_bytes``;
  the hashes are kept whatever it keeps (see :class:`Payload`).
* Record ids sort by start time (``pv`` + 14 hex digits of microseconds + 10 random hex
  digits), so "newest first" and time windows are ranges of the primary key.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import zlib
from collections.abc import Callable
from enum import StrEnum
from typing import Any, NamedTuple

import orjson

from modelhost.errors import ModelhostError
from modelhost.inference import InferenceEvent
from modelhost.manifest import MANIFEST_FILE, ProvenanceConfig
from modelhost.observability.metrics import outcome_of
from modelhost.registry import VersionInfo
from modelhost.security.guards import OutputGuard, OutputGuardConfig
from modelhost.security.keys import ANONYMOUS
from modelhost.security.ratelimit import price_of

#: 40 random bits per record id, from the operating system: uniqueness is needed, and the
#: ``random`` module's shared generator may be reseeded by anyone in the process (Hypothesis
#: does, per example), which made ids of records started in the same microsecond collide
#: and lost the whole batch they were written in.
_random_bits = secrets.randbits
#: The columns of a record, in the order :meth:`RowBuilder.values` gives them (the table's).
COLUMNS = (
    "id",
    "request_id",
    "request_bucket",
    "started_at",
    "duration_ms",
    "tenant",
    "principal",
    "subject",
    "key_id",
    "protocol",
    "model",
    "version",
    "runtime",
    "manifest_digest",
    "pipeline_version",
    "status",
    "error",
    "parameters",
    "items",
    "data_hash",
    "output_hash",
    "payload",
    "inputs",
    "outputs",
    "timings",
    "usage",
    "cost",
    "decisions",
    "replay_of",
)
_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_DEFAULT = ProvenanceConfig()
#: Buckets of the request-id index (see :func:`request_bucket`).
REQUEST_BUCKETS = 16
#: Most distinct decision texts kept encoded (requested versions are caller-chosen).
_CACHED_DECISIONS = 256
#: Longest error message a record keeps.
_MESSAGE_CHARS = 1000


class Payload(StrEnum):
    """What a record kept of its inputs and outputs (its hashes are always kept)."""

    FULL = "full"  #: inputs and outputs as sent and answered: the record can be replayed
    REDACTED = "redacted"  #: with personal data masked (``capture: redacted``); not replayable
    HASH = "hash"  #: hashes only, as the manifest asks (``capture: hash``)
    UNSAMPLED = "unsampled"  #: hashes only: not picked by the manifest's ``sample_rate``
    TOO_LARGE = "too_large"  #: hashes only: over ``provenance.max_payload_bytes``


def _fallback(value: Any) -> str:
    """What canonical JSON writes for a value JSON has no type for."""
    return repr(value)


def canonical_json(value: Any) -> bytes:
    """``value`` as canonical JSON: sorted keys, no whitespace, numpy arrays as lists."""
    return orjson.dumps(value, option=_CANONICAL, default=_fallback)


def sha256_hex(data: bytes) -> str:
    """The hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def data_hash(inputs: Any) -> str:
    """The ``data_hash`` of a request's inputs: sha256 of their canonical JSON."""
    return sha256_hex(canonical_json(inputs))


def manifest_digest(info: VersionInfo) -> str:
    """The sha256 of a version's stored ``modelhost.yaml``, or of its canonical manifest JSON
    when the file is not among its stored files."""
    stored = info.files.get(MANIFEST_FILE)
    if stored:
        return stored
    return data_hash(info.manifest.model_dump(mode="json"))


def request_bucket(request_id: str) -> int:
    """Which of :data:`REQUEST_BUCKETS` buckets a request id's lookups search.

    Lookups by request id go through the index ``(request_bucket, id, request_id)``, newest
    records of one bucket first, so a lookup reads about ``1/16`` of the entries newer than
    the record it finds. Record ids grow with time, so every insert lands at the end of its
    bucket, on one of 16 pages that stay in the database's cache. An index on the request id
    itself puts each insert on a random page of an index as large as the table: measured on
    SQLite, the cost of a record tripled by 300,000 records, and 64 buckets cost twice what
    16 do.
    """
    return zlib.crc32(request_id.encode()) % REQUEST_BUCKETS


def record_id(started_at: float) -> str:
    """A new record id that sorts by ``started_at`` (seconds since the epoch)."""
    return f"pv{max(0, int(started_at * 1_000_000)):014x}{_random_bits(40):010x}"


def id_floor(at: float) -> str:
    """The smallest record id of an inference started at ``at`` or later."""
    return f"pv{max(0, int(at * 1_000_000)):014x}"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=_fallback).decode()


def describe_error(exc: BaseException) -> dict[str, Any]:
    """The ``error`` of a failed inference's record."""
    message = exc.message if isinstance(exc, ModelhostError) else str(exc)
    return {
        "type": type(exc).__name__,
        "outcome": outcome_of(exc),
        "message": (message or type(exc).__name__)[:_MESSAGE_CHARS],
    }


class Snapshot(NamedTuple):
    """What a record needs of one ended inference, taken when it ends.

    Payloads are encoded to canonical JSON bytes right away: holding the request's and the
    answer's objects until the next flush would keep thousands of them alive (and every
    garbage collection pass walking them), while bytes are one untracked object; an error is
    kept as its description, not with its traceback's frames.
    """

    started_at: float
    duration_s: float
    request_id: str
    protocol: str
    model: str
    requested_version: str | None
    info: VersionInfo | None
    tenant: str
    principal: str
    subject: str
    key_id: str | None
    error: dict[str, Any] | None
    parameters: bytes
    items: int
    inputs: bytes
    outputs: bytes | None
    usage: dict[str, Any] | None
    cost: float | None
    queued_s: float | None
    batch_wait_s: float | None
    inference_s: float | None
    streamed: bool
    decisions: dict[str, Any]
    replay_of: str | None


def _cost(event: InferenceEvent) -> float | None:
    usage, info = event.usage, event.info
    if usage is None or info is None or event.error is not None:
        return None
    if usage.cost is not None:  # priced by the data plane already
        return usage.cost
    pricing = info.manifest.pricing
    return price_of(pricing, usage, len(event.request.inputs)) if pricing is not None else None


def snapshot(event: InferenceEvent) -> Snapshot:
    """Take what the record of ``event`` needs (cheap: runs on the event loop)."""
    request = event.request
    who = request.principal or ANONYMOUS
    timings = event.timings
    return Snapshot(  # positionally, in field order: keywords cost a microsecond here
        event.started_at,
        event.duration_s,
        request.request_id,
        request.protocol,
        request.model,
        request.version,
        event.info,
        who.tenant,
        who.id,
        who.subject,
        who.key_id,
        describe_error(event.error) if event.error is not None else None,
        canonical_json(request.parameters) if request.parameters else b"{}",
        len(request.inputs),
        canonical_json(request.inputs),
        canonical_json(event.results) if event.results is not None else None,
        event.usage.as_dict() if event.usage is not None else None,
        _cost(event),
        request.queued_s,
        timings.get("batch_wait"),
        timings.get("inference"),
        event.streamed,
        event.decisions,
        request.replay_of,
    )


class RowBuilder:
    """Turns snapshots of ended inferences into ``mh_provenance`` rows (JSON columns as
    encoded text); runs in the recorder's writer thread.

    Args:
        max_payload_bytes: largest inputs plus outputs (canonical JSON) a record keeps.
        sample: a uniform random number in [0, 1), drawn once per inference whose version
            samples payloads (``sample_rate`` below 1).
    """

    def __init__(self, max_payload_bytes: int, sample: Callable[[], float] = random.random) -> None:
        self._max_payload = max_payload_bytes
        self._sample = sample
        self._redactor = OutputGuard(OutputGuardConfig())
        self._versions: dict[str, tuple[str, str, str, str | None]] = {}
        self._plain_decisions: dict[tuple[str | None, bool], str] = {}

    def row(self, shot: Snapshot) -> dict[str, Any]:
        """The record of one inference, as column values by name."""
        return dict(zip(COLUMNS, self.values(shot), strict=True))

    def values(self, shot: Snapshot) -> tuple[Any, ...]:
        """The record of one inference, as column values in :data:`COLUMNS` order (what the
        store inserts: no dict per row)."""
        rid = record_id(shot.started_at)
        info = shot.info
        duration_ms = shot.duration_s * 1000
        timings = {
            "total_ms": duration_ms,
            "queue_ms": _ms(shot.queued_s),
            "batch_wait_ms": _ms(shot.batch_wait_s),
            "inference_ms": _ms(shot.inference_s),
        }
        if shot.decisions:
            decisions = _text(
                {"requested_version": shot.requested_version, "streamed": shot.streamed}
                | shot.decisions
            )
        else:  # the usual case: one of a few texts, encoded once
            decisions = self._decisions(shot.requested_version, shot.streamed)
        config = info.manifest.provenance if info is not None else _DEFAULT
        request = shot.request_id or rid
        return (
            rid,
            request,
            request_bucket(request),
            shot.started_at,
            duration_ms,
            shot.tenant,
            shot.principal,
            shot.subject,
            shot.key_id,
            shot.protocol,
            info.model if info is not None else shot.model,
            *self._version(info),
            "ok" if shot.error is None else "error",
            _text(shot.error) if shot.error is not None else None,
            shot.parameters.decode(),
            shot.items,
            *self._payload(shot, config),
            _text(timings),
            _text(shot.usage) if shot.usage is not None else None,
            shot.cost,
            decisions,
            shot.replay_of,
        )

    def _decisions(self, requested: str | None, streamed: bool) -> str:
        key = (requested, streamed)
        found = self._plain_decisions.get(key)
        if found is None:
            found = _text({"requested_version": requested, "streamed": streamed})
            if len(self._plain_decisions) < _CACHED_DECISIONS:
                self._plain_decisions[key] = found
        return found

    def _version(self, info: VersionInfo | None) -> tuple[str | None, ...]:
        """``version``, ``runtime``, ``manifest_digest``, ``pipeline_version`` (cached per
        version)."""
        if info is None:
            return (None, None, None, None)
        found = self._versions.get(info.ref)
        if found is None:
            found = (
                info.version,
                info.runtime,
                manifest_digest(info),
                info.manifest.provenance.pipeline_version,
            )
            self._versions[info.ref] = found
        return found

    def _payload(self, shot: Snapshot, config: ProvenanceConfig) -> tuple[Any, ...]:
        """``data_hash``, ``output_hash``, ``payload``, ``inputs``, ``outputs``: hashes always;
        inputs and outputs as the version's capture mode and sample rate allow."""
        inputs, outputs = shot.inputs, shot.outputs
        data = sha256_hex(inputs)
        answer = sha256_hex(outputs) if outputs is not None else None
        kept = self._kept(config, len(inputs) + len(outputs or b""))
        if kept is Payload.FULL:
            decoded = outputs.decode() if outputs is not None else None
            return (data, answer, kept.value, inputs.decode(), decoded)
        if kept is Payload.REDACTED:
            masked = self._redacted(outputs) if outputs is not None else None
            return (data, answer, kept.value, self._redacted(inputs), masked)
        return (data, answer, kept.value, None, None)

    def _redacted(self, encoded: bytes) -> str:
        return _text(self._redactor.apply_json(orjson.loads(encoded)).value)

    def _kept(self, config: ProvenanceConfig, size: int) -> Payload:
        if config.capture == "hash":
            return Payload.HASH
        if config.sample_rate < 1 and self._sample() >= config.sample_rate:
            return Payload.UNSAMPLED
        if size > self._max_payload:
            return Payload.TOO_LARGE
        return Payload.REDACTED if config.capture == "redacted" else Payload.FULL
