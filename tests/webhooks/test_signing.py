"""Signing: the HMAC scheme receivers verify, per-tenant secrets, the master secret."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from modelhost.config import Settings
from modelhost.webhooks.signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
    signed_headers,
    tenant_secret,
    verify,
    webhook_master_secret,
)

MASTER = b"test-master-secret"
SECRET = tenant_secret(MASTER, "acme")


def test_sign_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"type":"job.succeeded"}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, "1700000000", body) == f"sha256={expected}"


def test_verify_accepts_the_right_secret_and_refuses_everything_else() -> None:
    body, now = b'{"a":1}', 1_700_000_000.0
    stamp = str(int(now))
    good = sign(SECRET, stamp, body)
    assert verify(SECRET, stamp, body, good, now=now)
    assert verify(SECRET, stamp, body, f"sha256=deadbeef, {good}", now=now)  # secret rotation
    assert not verify(tenant_secret(MASTER, "globex"), stamp, body, good, now=now)
    assert not verify(SECRET, stamp, b'{"a":2}', good, now=now)
    assert not verify(SECRET, str(int(now) + 1), body, good, now=now)
    assert not verify(SECRET, stamp, body, good, now=now + 301)  # a replay, too late
    assert not verify(SECRET, stamp, body, good, now=now - 301)  # from the future
    assert verify(SECRET, stamp, body, good, now=now + 30, tolerance_s=60)
    assert not verify(SECRET, "soon", body, good, now=now)
    assert not verify(SECRET, stamp, body, "", now=now)


def test_tenant_secrets_differ_per_tenant_and_master() -> None:
    assert SECRET.startswith("whsec_")
    assert len(SECRET) == len("whsec_") + 64
    assert tenant_secret(MASTER, "acme") == SECRET
    assert tenant_secret(MASTER, "globex") != SECRET
    assert tenant_secret(b"another-master", "acme") != SECRET


def test_signed_headers_carry_event_delivery_timestamp_and_signature() -> None:
    body = b'{"type":"drift.alert"}'
    headers = signed_headers(SECRET, "drift.alert", "drift_1:2", body, now=1_700_000_000.9)
    assert headers[EVENT_HEADER] == "drift.alert"
    assert headers[DELIVERY_HEADER] == "drift_1:2"
    assert headers[TIMESTAMP_HEADER] == "1700000000"
    assert headers[SIGNATURE_HEADER] == sign(SECRET, "1700000000", body)
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("modelhost/")
    assert verify(SECRET, "1700000000", body, headers[SIGNATURE_HEADER], now=1_700_000_001)


def test_the_master_secret_is_the_setting_or_one_kept_in_home(tmp_path: Path) -> None:
    assert webhook_master_secret(Settings(home=tmp_path, jobs={"webhook_secret": "s3"})) == b"s3"
    made = webhook_master_secret(Settings(home=tmp_path / "a"))
    assert len(made) == 64
    assert webhook_master_secret(Settings(home=tmp_path / "a")) == made  # kept, not remade
    assert (tmp_path / "a" / "webhook.key").stat().st_mode & 0o077 == 0
