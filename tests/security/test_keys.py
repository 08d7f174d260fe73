"""API keys on SQLite and PostgreSQL: created once, stored hashed, verified, revoked, audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from modelhost.errors import Forbidden, InvalidInput, NotFound, Unauthenticated
from modelhost.security.keys import ApiKeyRow, KeyStore, NewKey, Scope


@pytest.fixture
def store(engine: Engine) -> KeyStore:
    return KeyStore(engine)


def test_key_is_shown_once_and_stored_hashed(store: KeyStore) -> None:
    secret, info = store.create(NewKey("acme", "svc", ["predict"]), actor="root")
    assert secret.startswith(f"mhk_{info.id}_")
    assert len(secret) > 50
    with store._session() as session:  # the raw row: no secret in it
        row = session.scalars(select(ApiKeyRow)).one()
    assert secret.split("_", 2)[2] not in (row.digest, row.salt)
    assert "secret" not in info.as_dict()
    principal = store.verify(secret)
    assert principal.id == "acme/svc"
    assert principal.scopes == frozenset({"predict"})


def test_wrong_secret_unknown_and_malformed_keys_fail(store: KeyStore) -> None:
    secret, _ = store.create(NewKey("acme", "svc", ["predict"]), actor="root")
    for bad in (secret[:-1] + ("A" if secret[-1] != "A" else "B"), "mhk_nope_x", "mhk_", "abc"):
        with pytest.raises(Unauthenticated):
            store.verify(bad)


def test_revoked_and_expired_keys_fail(store: KeyStore) -> None:
    secret, info = store.create(NewKey("acme", "svc", ["predict"]), actor="root")
    store.revoke(info.id, actor="root")
    with pytest.raises(Unauthenticated, match="revoked"):
        store.verify(secret)
    past = datetime.now(UTC) - timedelta(seconds=1)
    old, _ = store.create(NewKey("acme", "old", ["predict"], expires_at=past), actor="root")
    with pytest.raises(Unauthenticated, match="expired"):
        store.verify(old)


def test_revoke_of_a_foreign_tenant_key_is_not_found(store: KeyStore) -> None:
    _, info = store.create(NewKey("acme", "svc", ["predict"]), actor="root")
    with pytest.raises(NotFound):
        store.revoke(info.id, actor="evil/admin", tenant="evil")
    assert [k.id for k in store.list_keys("evil")] == []
    assert [k.id for k in store.list_keys("acme")] == [info.id]


def test_scopes_are_checked(store: KeyStore) -> None:
    with pytest.raises(InvalidInput, match="scopes"):
        store.create(NewKey("acme", "svc", ["root"]), actor="root")
    secret, _ = store.create(NewKey("acme", "svc", ["predict"]), actor="root")
    principal = store.verify(secret)
    principal.require(Scope.PREDICT)
    with pytest.raises(Forbidden, match="'deploy'"):
        principal.require(Scope.DEPLOY)
    admin, _ = store.create(NewKey("acme", "boss", ["admin"]), actor="root")
    store.verify(admin).require(Scope.DEPLOY)


def test_admin_actions_are_audited(store: KeyStore) -> None:
    _, info = store.create(
        NewKey("acme", "svc", ["predict"]), actor="acme/boss", source="10.0.0.1:5000"
    )
    store.revoke(info.id, actor="acme/boss", source="10.0.0.1:5001")
    log = store.audit_log("acme")
    assert [(e.action, e.actor, e.target) for e in log] == [
        ("key.revoke", "acme/boss", info.id),
        ("key.create", "acme/boss", info.id),
    ]
    assert log[1].source == "10.0.0.1:5000"
    assert log[0].at.tzinfo is not None
