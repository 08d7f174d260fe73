"""The drift tables, on every database backend: references, the once-per-crossing alert state,
and the alert log."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from modelhost.drift.stats import Reference, ReferenceOptions, build_reference
from modelhost.drift.store import STATE_DRIFT, STATE_OK, DriftStore, new_alert_id


def reference(scale: float = 1.0) -> Reference:
    rows = [{"a": i * scale, "b": ["x", "y"][i % 2]} for i in range(200)]
    return build_reference(rows, ReferenceOptions(), source="supplied", sha256=f"{scale:064}")


def test_references_are_stored_replaced_and_listed(engine: Engine) -> None:
    store = DriftStore(engine)
    assert store.reference("m", "1.0.0") is None
    saved = store.save_reference("m", "1.0.0", reference(), "opts", "alice")
    assert saved.created_by == "alice"
    found = store.reference("m", "1.0.0")
    assert found is not None
    assert found.reference == reference()
    assert found.options_sha256 == "opts"
    assert found.describe()["features"] == {"a": "numeric", "b": "categorical"}
    store.save_reference("m", "1.0.0", reference(2.0), "opts2", "bob")
    replaced = store.reference("m", "1.0.0")
    assert replaced is not None
    assert replaced.reference.features["a"].summary["max"] == 398.0
    assert replaced.created_by == "bob"
    assert store.stored() == {"m@1.0.0": reference(2.0).sha256}


def test_each_crossing_is_acted_on_once_across_processes(engine: Engine) -> None:
    first, second = DriftStore(engine), DriftStore(engine)  # two processes
    assert first.state("m", "1.0.0") == (STATE_OK, None)
    assert not first.transition("m", "1.0.0", STATE_OK)  # ok from the start: nothing to do
    assert first.transition("m", "1.0.0", STATE_DRIFT)
    assert not second.transition("m", "1.0.0", STATE_DRIFT)
    assert not first.transition("m", "1.0.0", STATE_DRIFT)
    state, since = second.state("m", "1.0.0")
    assert state == STATE_DRIFT
    assert since is not None
    assert since.tzinfo is not None
    assert second.transition("m", "1.0.0", STATE_OK)
    assert not first.transition("m", "1.0.0", STATE_OK)
    assert first.transition("m", "1.0.0", STATE_DRIFT)  # a new crossing
    assert first.state("m", "2.0.0") == (STATE_OK, None)  # per version


def test_alerts_record_every_delivery_and_hook(engine: Engine) -> None:
    store = DriftStore(engine)
    older, newer = new_alert_id(), new_alert_id()
    evidence = {"model": "m", "version": "1.0.0", "overall": {"psi": 0.5}}
    store.add_alert(older, "drift.alert", {**evidence, "drifted_features": ["a"]})
    store.add_alert(newer, "drift.resolved", evidence)
    store.add_alert(new_alert_id(), "drift.alert", {**evidence, "version": "2.0.0"})
    store.record(older, delivery={"attempt": 1, "status_code": 500})
    store.record(older, delivery={"attempt": 2, "status_code": 200})
    store.record(older, hook={"kind": "command", "exit_code": 0})
    store.record("drift_nosuchalert", delivery={"attempt": 1})  # ignored
    alerts = store.alerts("m", "1.0.0")
    assert [a["id"] for a in alerts] == [newer, older]
    assert alerts[1]["event"] == "drift.alert"
    assert alerts[1]["drifted_features"] == ["a"]
    assert alerts[1]["overall"] == {"psi": 0.5}
    assert [d["status_code"] for d in alerts[1]["deliveries"]] == [500, 200]
    assert alerts[1]["hooks"] == [{"kind": "command", "exit_code": 0}]
    assert len(store.alerts("m")) == 3
    assert len(store.alerts("m", limit=1)) == 1
    assert store.alerts("other") == []
