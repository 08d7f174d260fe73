"""The ``mh_provenance`` table, over SQLite and PostgreSQL: writes, lookups, filters, pages,
tenants, replays and the retention purge."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from modelhost.errors import RuntimeFailure
from modelhost.inference import InferenceEvent, InferenceRequest
from modelhost.manifest import parse_manifest
from modelhost.provenance import ProvenanceStore, Query, RowBuilder, data_hash, snapshot
from modelhost.provenance.capture import COLUMNS
from modelhost.registry import Stage, VersionInfo
from modelhost.security.keys import Principal

T0 = 1_750_000_000.0


def _version(name: str, number: str, capture: str = "full") -> VersionInfo:
    manifest = parse_manifest(
        {
            "name": name,
            "version": number,
            "runtime": "python",
            "entrypoint": "m:E",
            "provenance": {"capture": capture},
        }
    )
    return VersionInfo(
        model=name,
        version=number,
        runtime="python",
        stage=Stage.PRODUCTION,
        manifest=manifest,
        files={},
        size_bytes=0,
        created_at=datetime.now(UTC),
        created_by="tests",
    )


def row(
    at: float,
    *,
    rid: str = "",
    tenant: str = "acme",
    subject: str = "alice",
    model: str = "echo",
    version: str = "1.0.0",
    protocol: str = "v1",
    failed: bool = False,
    replay_of: str | None = None,
    capture: str = "full",
) -> tuple[Any, ...]:
    """A row as the recorder writes it, for an inference started at ``at``."""
    request = InferenceRequest(
        model=model,
        inputs=[{"text": rid or "x"}],
        request_id=rid,
        protocol=protocol,
        principal=Principal(tenant=tenant, subject=subject, scopes=frozenset()),
        replay_of=replay_of,
    )
    event = InferenceEvent(
        request=request,
        info=_version(model, version, capture),
        started_at=at,
        duration_s=0.002,
        results=None if failed else [{"echo": rid}],
        error=RuntimeFailure("boom") if failed else None,
    )
    return RowBuilder(1_000_000).values(snapshot(event))


@pytest.fixture
def store(engine: Engine) -> Iterator[ProvenanceStore]:
    built = ProvenanceStore(engine)
    yield built
    built.close()


def test_the_table_has_the_columns_rows_are_built_in(engine: Engine) -> None:
    ProvenanceStore(engine).close()
    assert tuple(column["name"] for column in inspect(engine).get_columns("mh_provenance")) == (
        COLUMNS
    )


def test_rows_are_written_in_one_batch_and_read_back(store: ProvenanceStore) -> None:
    store.insert([row(T0 + i, rid=f"r{i}") for i in range(3)])
    record = store.get("r1")
    assert record is not None
    assert record.request_id == "r1"
    assert record.started_at == pytest.approx(T0 + 1)
    assert record.inputs == [{"text": "r1"}]
    assert record.outputs == [{"echo": "r1"}]
    assert record.parameters == {}
    assert record.data_hash == data_hash([{"text": "r1"}])
    assert record.replayable
    assert store.get(record.id) == record
    view = record.view()
    assert view["created"].startswith("2025-06-15T")
    assert view["replayable"] is True
    assert store.get("nothing") is None


def test_a_request_id_seen_twice_answers_its_newest_record(store: ProvenanceStore) -> None:
    store.insert([row(T0, rid="job_1", failed=True), row(T0 + 5, rid="job_1")])
    record = store.get("job_1")
    assert record is not None
    assert record.status == "ok"


def test_a_tenant_sees_only_its_own_records(store: ProvenanceStore) -> None:
    store.insert([row(T0, rid="a1"), row(T0 + 1, rid="g1", tenant="globex")])
    assert store.get("g1", tenant="acme") is None
    assert store.get("g1", tenant="globex") is not None
    assert [r.request_id for r in store.list(Query(tenant="acme"))] == ["a1"]
    assert [r.request_id for r in store.list(Query())] == ["g1", "a1"]


def test_filters_combine(store: ProvenanceStore) -> None:
    store.insert(
        [
            row(T0, rid="old"),
            row(T0 + 10, rid="v2", version="2.0.0"),
            row(T0 + 20, rid="bob", subject="bob"),
            row(T0 + 30, rid="err", failed=True),
            row(T0 + 40, rid="other", model="iris"),
            row(T0 + 50, rid="job", protocol="jobs"),
        ]
    )

    def ids(**filters: Any) -> list[str]:
        return [r.request_id for r in store.list(Query(**filters))]

    assert ids(model="echo", version="2.0.0") == ["v2"]
    assert ids(status="error") == ["err"]
    assert ids(status="ok", model="echo") == ["job", "bob", "v2", "old"]
    assert ids(principal="bob") == ids(principal="acme/bob") == ["bob"]
    assert ids(protocol="jobs") == ["job"]
    assert ids(since=T0 + 10, until=T0 + 30) == ["bob", "v2"]
    assert store.count(Query(model="echo")) == 5


def test_pages_go_newest_first_with_a_cursor(store: ProvenanceStore) -> None:
    store.insert([row(T0 + i, rid=f"r{i}") for i in range(5)])
    first = store.list(Query(limit=2))
    assert [r.request_id for r in first] == ["r4", "r3"]
    second = store.list(Query(limit=2, before=first[-1].id))
    assert [r.request_id for r in second] == ["r2", "r1"]
    last = store.list(Query(limit=2, before=second[-1].id))
    assert [r.request_id for r in last] == ["r0"]


def test_replays_are_left_out_unless_asked_for(store: ProvenanceStore) -> None:
    store.insert(
        [
            row(T0, rid="live"),
            row(T0 + 1, rid="rpl_1", protocol="replay", replay_of="live"),
            row(T0 + 2, rid="hashed", capture="hash"),
        ]
    )

    def ids(**filters: Any) -> list[str]:
        return [r.request_id for r in store.list(Query(**filters))]

    assert ids() == ["hashed", "live"]
    assert ids(replays="include") == ["hashed", "rpl_1", "live"]
    assert ids(replays="only") == ["rpl_1"]
    assert ids(replay_of="live") == ["rpl_1"]
    assert ids(replayable=True) == ["live"]
    assert ids(replayable=False) == ["hashed"]
    hashed = store.get("hashed")
    assert hashed is not None
    assert not hashed.replayable
    assert hashed.inputs is None


def test_purge_deletes_only_what_is_past_the_cutoff(store: ProvenanceStore) -> None:
    store.insert([row(T0 + i * 100, rid=f"r{i}") for i in range(4)])
    assert store.purge(T0 + 150) == 2
    assert [r.request_id for r in store.list(Query())] == ["r3", "r2"]
    assert store.purge(T0 + 150) == 0


def test_a_batch_larger_than_one_statement_is_written_whole(store: ProvenanceStore) -> None:
    rows = [row(T0 + i / 1000, rid=f"many-{i}", failed=i % 100 == 0) for i in range(700)]
    store.insert(rows)
    store.analyze()
    assert store.count(Query()) == 700
    assert store.count(Query(status="error")) == 7
    for i in (0, 255, 256, 699):
        found = store.get(f"many-{i}")
        assert found is not None
        assert found.request_id == f"many-{i}"
    assert [r.request_id for r in store.list(Query(status="error", limit=2))] == [
        "many-600",
        "many-500",
    ]
