"""Usage accounting: the ledger on the data plane, the ``mh_usage`` upserts (SQLite and
PostgreSQL), reports, and the component's flushing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import Engine

from modelhost.accounting.usage import (
    HOUR,
    Totals,
    UsageComponent,
    UsageKey,
    UsageLedger,
    UsageQuery,
    UsageStore,
    build_usage,
)
from modelhost.app import Services, build_services, close_services, stop_components
from modelhost.config import DemoSettings, Settings, UsageSettings
from modelhost.errors import InvalidInput
from modelhost.inference import InferenceRequest
from modelhost.registry import Stage, make_engine
from modelhost.security.keys import Principal
from tests.conftest import write_python_model

PRICING = {"input": 2.0, "unit": "1k_tokens", "per_request": 0.5, "currency": "EUR"}
NOW = time.time()
THIS_HOUR = int(NOW // HOUR) * HOUR


def who(tenant: str, subject: str) -> Principal:
    return Principal(tenant=tenant, subject=subject, scopes=frozenset({"predict"}))


def key(tenant: str, principal: str, model: str = "m", hour: int = THIS_HOUR) -> UsageKey:
    return (hour, tenant, principal, model, "1.0.0", "USD")


@pytest_asyncio.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    """The composition root's services serving ``priced`` (pricing in EUR) and ``free``."""
    settings = Settings(home=tmp_path / "home", demo=DemoSettings(enabled=False))
    built = build_services(settings)
    for directory in (
        write_python_model(tmp_path / "models", "priced", pricing=PRICING),
        write_python_model(tmp_path / "models", "free"),
    ):
        built.registry.push(directory, actor="test", stage=Stage.PRODUCTION)
    await built.manager.refresh()
    await built.manager.wait_loaded(timeout=60)
    yield built
    await close_services(built)
    built.registry.engine.dispose()


def usage_of(services: Services) -> UsageComponent:
    (found,) = [c for c in services.components if isinstance(c, UsageComponent)]
    return found


def report(services: Services, **query: Any) -> list[dict[str, Any]]:
    """The stored report as plain dicts (after the component flushed)."""
    window = UsageQuery(since=NOW - 7200, until=NOW + 7200, **query)
    groups = usage_of(services).store.query(window)
    return [{**g.keys, "currency": g.currency, **g.totals.as_dict()} for g in groups]


@pytest.mark.asyncio
async def test_the_ledger_counts_every_inference_per_principal_and_prices_it(
    services: Services,
) -> None:
    plane = services.plane
    ann, bob = who("acme", "ann"), who("acme", "bob")
    for _ in range(2):
        await plane.infer(InferenceRequest(model="priced", inputs=[{"text": "a"}], principal=ann))
    answer = await plane.infer(
        InferenceRequest(model="priced", inputs=[{"text": "a"}, {"text": "b"}], principal=bob)
    )
    assert answer.usage.cost == pytest.approx(2 * 2.0 / 1000 + 0.5)
    assert answer.usage.currency == "EUR"
    assert answer.as_v1()["usage"]["cost"] == answer.usage.cost
    with pytest.raises(InvalidInput):
        await plane.infer(InferenceRequest(model="priced", inputs=[{"text": 1}], principal=bob))
    await plane.infer(InferenceRequest(model="free", inputs=[{"text": "a"}], principal=ann))
    replay = InferenceRequest(model="priced", inputs=[{"text": "a"}], principal=ann)
    replay.replay_of = "rid-1"
    await plane.infer(replay)  # not live traffic: not counted
    assert (
        await usage_of(services).flush() == 4
    )  # ann@priced/EUR, bob@priced/EUR and /'' , ann@free
    lines = report(services, group_by=("principal", "model"))
    by = {(line["principal"], line["model"], line["currency"]): line for line in lines}
    ann_priced = by[("ann", "priced", "EUR")]
    assert ann_priced["requests"] == 2
    assert ann_priced["errors"] == 0
    assert ann_priced["input_tokens"] == 2
    assert ann_priced["cost"] == pytest.approx(2 * (2.0 / 1000 + 0.5))
    assert isinstance(ann_priced["compute_seconds"], float)
    assert ann_priced["compute_seconds"] > 0
    bob_priced = by[("bob", "priced", "EUR")]
    assert (bob_priced["requests"], bob_priced["input_tokens"]) == (1, 2)
    # the failed call has no usage, so no currency: counted apart, as a request and an error
    bob_failed = by[("bob", "priced", None)]
    assert (bob_failed["requests"], bob_failed["errors"], bob_failed["cost"]) == (1, 1, 0.0)
    assert by[("ann", "free", None)]["cost"] == 0.0
    assert lines[0]["cost"] == max(line["cost"] for line in lines)  # largest cost first


@pytest.mark.asyncio
async def test_a_job_batch_splits_its_compute_and_counts_each_job(services: Services) -> None:
    ann = who("acme", "ann")
    requests = [
        InferenceRequest(model="priced", inputs=[{"text": "a"}], principal=ann, protocol="jobs")
        for _ in range(3)
    ]
    outcomes = await services.plane.infer_many(requests)
    costs = [o.usage.cost for o in outcomes if not isinstance(o, Exception)]
    assert costs == [pytest.approx(2.0 / 1000 + 0.5)] * 3
    await usage_of(services).flush()
    (line,) = report(services, group_by=("tenant",))
    assert (line["tenant"], line["requests"], line["input_tokens"]) == ("acme", 3, 3)
    assert line["compute_seconds"] > 0  # one merged call, shared by the three jobs


@pytest.mark.asyncio
async def test_stopping_flushes_what_is_left(services: Services) -> None:
    await services.plane.infer(
        InferenceRequest(model="priced", inputs=[{"text": "a"}], principal=who("t", "p"))
    )
    await stop_components(services)
    (line,) = report(services, group_by=("tenant", "principal", "version"))
    assert (line["tenant"], line["principal"], line["model"], line["version"]) == (
        "t",
        "p",
        "priced",
        "1.0.0",
    )


@pytest.mark.asyncio
async def test_the_component_flushes_periodically(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'u.db'}")
    component = UsageComponent(UsageStore(engine), interval=0.05)
    component.ledger.put_back({key("acme", "ann"): Totals(requests=1)})
    await component.start()
    try:
        deadline = time.monotonic() + 10
        while not component.store.query(UsageQuery(since=NOW - 10, until=NOW + HOUR)):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    finally:
        await component.stop()
        engine.dispose()


@pytest.mark.asyncio
async def test_a_failed_flush_keeps_its_amounts_for_the_next(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'u.db'}")
    component = UsageComponent(UsageStore(engine), interval=60)
    component.ledger.put_back({key("acme", "ann"): Totals(requests=2, cost=1.5)})
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE mh_usage"))
    with pytest.raises(Exception, match="mh_usage"):
        await component.flush()
    component.ledger.put_back({key("acme", "ann"): Totals(requests=1, cost=0.5)})
    UsageStore(engine)  # the table is back
    assert await component.flush() == 1
    (group,) = component.store.query(UsageQuery(since=NOW - 10, until=NOW + HOUR))
    assert (group.totals.requests, group.totals.cost) == (3, 2.0)
    engine.dispose()


def test_switched_off_there_is_no_component_and_nothing_counts(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home", demo=DemoSettings(enabled=False), usage=UsageSettings(enabled=False)
    )
    built = build_services(settings)
    try:
        assert build_usage(settings.usage, built.registry.engine) is None
        assert built.usage is None
        assert not any(isinstance(c, UsageComponent) for c in built.components)
    finally:
        built.registry.engine.dispose()


def test_the_ledger_buckets_by_hour_and_takes_everything_once() -> None:
    ledger = UsageLedger()
    assert ledger.take() == {}
    ledger.put_back({key("a", "p"): Totals(requests=1), key("a", "p", hour=0): Totals(errors=1)})
    ledger.put_back({key("a", "p"): Totals(requests=2)})
    taken = ledger.take()
    assert taken[key("a", "p")].requests == 3
    assert taken[key("a", "p", hour=0)].errors == 1
    assert ledger.take() == {}


# -- the store, on every database ----------------------------------------------------------------


def test_upserts_add_to_the_same_rows(engine: Engine) -> None:
    store = UsageStore(engine)
    first = {
        key("acme", "ann"): Totals(1, 0, 10, 5, 0.25, 0.5),
        key("acme", "bob"): Totals(2, 1, 20, 0, 0.5, 1.0),
        key("beta", "cy", "n"): Totals(1, 0, 1, 1, 0.1, 0.0),
    }
    store.add(first)
    store.add({key("acme", "ann"): Totals(1, 1, 10, 5, 0.25, 0.5)})
    store.add({})
    window = UsageQuery(since=NOW - 10, until=NOW + HOUR, group_by=("principal",))
    lines = {g.keys["principal"]: g.totals for g in store.query(window)}
    assert lines["ann"] == Totals(2, 1, 20, 10, 0.5, 1.0)
    assert lines["bob"] == Totals(2, 1, 20, 0, 0.5, 1.0)
    acme = UsageQuery(since=NOW - 10, until=NOW + HOUR, group_by=("tenant",), tenant="acme")
    (line,) = store.query(acme)
    assert (line.keys, line.currency, line.totals.requests) == ({"tenant": "acme"}, "USD", 4)
    only_n = UsageQuery(since=NOW - 10, until=NOW + HOUR, group_by=("version",), model="n")
    (line,) = store.query(only_n)
    assert line.keys == {"model": "n", "version": "1.0.0"}
    earlier = UsageQuery(since=NOW - 3 * HOUR, until=THIS_HOUR)
    assert store.query(earlier) == []


def test_two_processes_flushing_at_once_lose_nothing(engine: Engine) -> None:
    stores = [UsageStore(engine), UsageStore(engine)]
    amounts = {key("acme", f"p{n}"): Totals(requests=1, cost=0.25) for n in range(20)}

    def flush(store: UsageStore) -> None:
        for _ in range(5):
            store.add(amounts)

    async def both() -> None:
        await asyncio.gather(*(asyncio.to_thread(flush, store) for store in stores))

    asyncio.run(both())
    window = UsageQuery(since=NOW - 10, until=NOW + HOUR, group_by=("tenant",))
    (line,) = stores[0].query(window)
    assert line.totals.requests == 200
    assert line.totals.cost == pytest.approx(50.0)
