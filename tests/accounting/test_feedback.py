"""The ``mh_feedback`` table (SQLite and PostgreSQL): upserts by request, online accuracy and
the per-version summary over a time window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.engine import Engine

from modelhost.accounting.feedback import Feedback, FeedbackStore

NOW = datetime.now(UTC)


def verdict(
    request_id: str,
    correct: float,
    *,
    version: str = "1.0.0",
    tenant: str = "acme",
    ago_s: float = 0.0,
    label: object = None,
    principal: str | None = None,
    comment: str | None = None,
) -> Feedback:
    return Feedback(
        request_id=request_id,
        tenant=tenant,
        model="iris",
        version=version,
        correct=correct,
        at=NOW - timedelta(seconds=ago_s),
        label=label,
        principal=principal,
        comment=comment,
    )


def test_accuracy_is_the_mean_correctness_of_a_versions_feedback_since_a_time(
    engine: Engine,
) -> None:
    store = FeedbackStore(engine)
    for i, correct in enumerate([1.0, 0.0, 1.0, 0.5]):
        store.record(verdict(f"r{i}", correct))
    store.record(verdict("other-version", 0.0, version="2.0.0"))
    store.record(verdict("too-old", 0.0, ago_s=3600))

    assert store.accuracy("iris", "1.0.0", NOW - timedelta(minutes=5)) == (4, 0.625)
    assert store.accuracy("iris", "2.0.0", NOW - timedelta(minutes=5)) == (1, 0.0)
    assert store.accuracy("iris", "1.0.0", NOW - timedelta(hours=2)) == (5, 0.5)


def test_accuracy_without_feedback_is_none(engine: Engine) -> None:
    store = FeedbackStore(engine)
    assert store.accuracy("iris", "1.0.0", NOW - timedelta(hours=1)) == (0, None)
    assert store.summary("iris", NOW - timedelta(hours=1)) == {}


def test_a_second_verdict_on_a_request_replaces_the_first(engine: Engine) -> None:
    store = FeedbackStore(engine)
    store.record(verdict("r1", 0.0, label="setosa", principal="acme/alice"))
    store.record(verdict("r1", 1.0, label="virginica", comment="relabelled"))

    assert store.accuracy("iris", "1.0.0", NOW - timedelta(minutes=1)) == (1, 1.0)
    stored = store.get("r1", "acme")
    assert stored is not None
    assert (stored.label, stored.comment, stored.correct) == ("virginica", "relabelled", 1.0)


def test_tenants_using_the_same_request_id_keep_their_own_verdicts(engine: Engine) -> None:
    store = FeedbackStore(engine)
    store.record(verdict("shared-id", 1.0, tenant="acme"))
    store.record(verdict("shared-id", 0.0, tenant="globex"))

    first, second = store.get("shared-id", "acme"), store.get("shared-id", "globex")
    assert first is not None
    assert second is not None
    assert (first.correct, second.correct) == (1.0, 0.0)
    assert store.get("shared-id", "initech") is None
    assert store.accuracy("iris", "1.0.0", NOW - timedelta(minutes=1)) == (2, 0.5)


def test_scores_and_labels_round_trip_with_their_time_in_utc(engine: Engine) -> None:
    store = FeedbackStore(engine)
    given = datetime(2024, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    store.record(
        Feedback("r1", "acme", "iris", "1.0.0", 0.8, label=["a", "b"], score=0.8, at=given)
    )

    stored = store.get("r1", "acme")
    assert stored is not None
    assert stored.at == given
    assert stored.at.tzinfo == UTC
    assert (stored.label, stored.score) == (["a", "b"], 0.8)
    assert store.accuracy("iris", "1.0.0", datetime(2024, 6, 1, 11, 59, tzinfo=UTC))[0] == 1
    assert store.accuracy("iris", "1.0.0", datetime(2024, 6, 1, 12, 1, tzinfo=UTC))[0] == 0
    assert store.get("r1", "acme") == Feedback(
        "r1", "acme", "iris", "1.0.0", 0.8, label=["a", "b"], score=0.8, at=given
    )


def test_correctness_outside_zero_to_one_is_refused(engine: Engine) -> None:
    store = FeedbackStore(engine)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        store.record(verdict("r1", 1.5))


def test_the_summary_gives_every_versions_count_and_accuracy(engine: Engine) -> None:
    store = FeedbackStore(engine)
    store.record(verdict("a", 1.0, version="1.0.0"))
    store.record(verdict("b", 0.0, version="1.0.0"))
    store.record(verdict("c", 1.0, version="1.1.0"))
    store.record(verdict("old", 0.0, version="1.1.0", ago_s=7200))

    assert store.summary("iris", NOW - timedelta(hours=1)) == {
        "1.0.0": {"n": 2, "accuracy": 0.5},
        "1.1.0": {"n": 1, "accuracy": 1.0},
    }
    assert store.summary("other", NOW - timedelta(hours=1)) == {}
