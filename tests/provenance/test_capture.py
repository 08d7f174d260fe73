"""Rows built from ended inferences: hashes, identity, timings, cost and capture modes."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from modelhost.errors import InvalidInput
from modelhost.inference import InferenceEvent, InferenceRequest, Usage
from modelhost.manifest import parse_manifest
from modelhost.provenance.capture import (
    Payload,
    RowBuilder,
    canonical_json,
    data_hash,
    id_floor,
    manifest_digest,
    record_id,
    snapshot,
)
from modelhost.registry import Stage, VersionInfo
from modelhost.security.keys import Principal

ALICE = Principal(tenant="acme", subject="alice", scopes=frozenset({"predict"}), key_id="k1")
MAIL = "write to jane.doe@example.com today"


def version(**manifest: Any) -> VersionInfo:
    """A registered-looking version of a python model with ``manifest`` fields added."""
    parsed = parse_manifest(
        {"name": "echo", "version": "1.2.0", "runtime": "python", "entrypoint": "m:E", **manifest}
    )
    return VersionInfo(
        model="echo",
        version="1.2.0",
        runtime="python",
        stage=Stage.PRODUCTION,
        manifest=parsed,
        files={"modelhost.yaml": "ab" * 32},
        size_bytes=10,
        created_at=datetime.now(UTC),
        created_by="tests",
    )


def event(
    info: VersionInfo | None = None,
    inputs: list[Any] | None = None,
    results: list[Any] | None = None,
    **kw: Any,
) -> InferenceEvent:
    request = InferenceRequest(
        model="echo",
        inputs=inputs if inputs is not None else [{"text": "hi", "n": 1}],
        parameters={"sleep": 0},
        request_id="req-1",
        protocol="v1",
        principal=ALICE,
        queued_s=kw.pop("queued_s", None),
    )
    return InferenceEvent(
        request=request,
        info=info if info is not None else version(),
        started_at=time.time(),
        duration_s=0.0123,
        results=results if results is not None else [{"echo": "hi"}],
        **kw,
    )


def _row(builder: RowBuilder, ended: InferenceEvent) -> dict[str, Any]:
    return builder.row(snapshot(ended))


def decoded(row: dict[str, Any], column: str) -> Any:
    value = row[column]
    return None if value is None else orjson.loads(value)


def test_data_hash_is_sha256_of_canonical_json_whatever_the_key_order() -> None:
    one = [{"b": 1, "a": [1.5, "x"]}]
    other = [{"a": [1.5, "x"], "b": 1}]
    expected = hashlib.sha256(b'[{"a":[1.5,"x"],"b":1}]').hexdigest()
    assert canonical_json(one) == b'[{"a":[1.5,"x"],"b":1}]'
    assert data_hash(one) == data_hash(other) == expected
    assert data_hash([{"a": [1.5, "y"], "b": 1}]) != expected


def test_a_full_record_keeps_who_what_and_how_long() -> None:
    info = version(provenance={"pipeline_version": "features-7"})
    ended = event(info, usage=Usage(3, 4), timings={"inference": 0.004}, queued_s=0.5)
    row = _row(RowBuilder(max_payload_bytes=10_000), ended)
    assert row["request_id"] == "req-1"
    assert row["id"].startswith("pv")
    assert len(row["id"]) == 26
    assert (row["tenant"], row["principal"], row["subject"], row["key_id"]) == (
        "acme",
        "acme/alice",
        "alice",
        "k1",
    )
    assert (row["model"], row["version"], row["runtime"], row["protocol"]) == (
        "echo",
        "1.2.0",
        "python",
        "v1",
    )
    assert row["manifest_digest"] == "ab" * 32
    assert row["pipeline_version"] == "features-7"
    assert row["status"] == "ok"
    assert row["error"] is None
    assert row["payload"] == Payload.FULL.value
    assert decoded(row, "inputs") == [{"n": 1, "text": "hi"}]
    assert decoded(row, "outputs") == [{"echo": "hi"}]
    assert decoded(row, "parameters") == {"sleep": 0}
    assert row["data_hash"] == data_hash([{"text": "hi", "n": 1}])
    assert row["output_hash"] == data_hash([{"echo": "hi"}])
    assert decoded(row, "timings") == {
        "total_ms": 12.3,
        "queue_ms": 500.0,
        "batch_wait_ms": None,
        "inference_ms": 4.0,
    }
    assert decoded(row, "usage") == {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
    assert decoded(row, "decisions") == {"requested_version": None, "streamed": False}
    assert row["items"] == 1
    assert row["replay_of"] is None


def test_hash_capture_keeps_only_the_hashes() -> None:
    row = _row(RowBuilder(10_000), event(version(provenance={"capture": "hash"})))
    assert row["payload"] == "hash"
    assert row["inputs"] is None
    assert row["outputs"] is None
    assert row["data_hash"] == data_hash([{"text": "hi", "n": 1}])
    assert row["output_hash"] == data_hash([{"echo": "hi"}])


def test_redacted_capture_masks_personal_data_in_inputs_and_outputs() -> None:
    ended = event(
        version(provenance={"capture": "redacted"}),
        inputs=[{"text": MAIL}],
        results=[{"echo": MAIL, "score": 0.5}],
    )
    row = _row(RowBuilder(10_000), ended)
    assert row["payload"] == "redacted"
    masked = "write to [REDACTED:email] today"
    assert decoded(row, "inputs") == [{"text": masked}]
    assert decoded(row, "outputs") == [{"echo": masked, "score": 0.5}]
    assert row["data_hash"] == data_hash([{"text": MAIL}])  # of what was really sent


@pytest.mark.parametrize(
    ("rate", "draw", "kept"),
    [(0.0, 0.0, "unsampled"), (0.5, 0.2, "full"), (0.5, 0.7, "unsampled"), (1.0, 0.99, "full")],
)
def test_the_sample_rate_decides_whether_the_payload_is_kept(
    rate: float, draw: float, kept: str
) -> None:
    row = _row(
        RowBuilder(10_000, sample=lambda: draw), event(version(provenance={"sample_rate": rate}))
    )
    assert row["payload"] == kept
    assert (row["inputs"] is not None) is (kept == "full")
    assert row["data_hash"] == data_hash([{"text": "hi", "n": 1}])


def test_a_payload_over_the_limit_keeps_only_its_hashes() -> None:
    big = [{"text": "x" * 500}]
    row = _row(RowBuilder(max_payload_bytes=100), event(inputs=big))
    assert row["payload"] == "too_large"
    assert row["inputs"] is None
    assert row["data_hash"] == data_hash(big)


def test_a_failed_inference_records_its_error() -> None:
    failure = InvalidInput("inputs[0].text is required", param="inputs[0].text")
    ended = InferenceEvent(
        request=InferenceRequest(model="nothing", inputs=[{}], request_id="", principal=None),
        info=None,
        started_at=time.time(),
        duration_s=0.001,
        error=failure,
    )
    row = _row(RowBuilder(10_000), ended)
    assert row["status"] == "error"
    assert decoded(row, "error") == {
        "type": "InvalidInput",
        "outcome": "invalid_input",
        "message": "inputs[0].text is required",
    }
    assert row["model"] == "nothing"
    assert row["version"] is None
    assert row["manifest_digest"] is None
    assert row["output_hash"] is None
    assert row["request_id"] == row["id"]  # no request id given: the record's own
    assert (row["tenant"], row["principal"]) == ("default", "default/anonymous")


def test_cost_comes_from_the_priced_usage_or_the_pricing() -> None:
    priced = version(pricing={"unit": "item", "input": 0.25})
    row = _row(RowBuilder(10_000), event(priced, inputs=[{"a": 1}, {"a": 2}], usage=Usage()))
    assert row["cost"] == 0.5
    already = Usage(cost=0.125, currency="USD")
    assert _row(RowBuilder(10_000), event(priced, usage=already))["cost"] == 0.125
    assert _row(RowBuilder(10_000), event(usage=Usage()))["cost"] is None


def test_manifest_digest_falls_back_to_the_canonical_manifest() -> None:
    info = version()
    assert manifest_digest(info) == "ab" * 32
    bare = replace(info, files={})
    expected = hashlib.sha256(
        json.dumps(
            info.manifest.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
        ).encode()
    ).hexdigest()
    assert manifest_digest(bare) == expected


def test_record_ids_sort_by_start_time() -> None:
    early, late = record_id(1_700_000_000.0), record_id(1_700_000_000.001)
    assert early < late
    assert id_floor(1_700_000_000.0) <= early < id_floor(1_700_000_000.000001)
