"""Signing: how every webhook modelhost sends proves where it came from.

The scheme is the one receivers already know from Stripe and Svix: the body is signed together
with the time it was sent, so a captured request cannot be replayed later::

    X-Modelhost-Timestamp: 1718000000
    X-Modelhost-Signature: sha256=<hex HMAC-SHA256(secret, "1718000000." + body)>

Each tenant signs with its own secret, derived from the master secret (:func:`tenant_secret`),
so one tenant can neither verify nor forge another's webhooks. Job callbacks are signed with the
job's tenant; operator alerts (drift, rollouts, feature skew) with a configured tenant's.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import time

from modelhost import __version__
from modelhost.config import Settings
from modelhost.errors import ConfigError

SIGNATURE_HEADER = "X-Modelhost-Signature"
TIMESTAMP_HEADER = "X-Modelhost-Timestamp"
EVENT_HEADER = "X-Modelhost-Event"
DELIVERY_HEADER = "X-Modelhost-Delivery"
#: How the signature is computed, as the secret endpoint describes it.
ALGORITHM = "HMAC-SHA256 over '<timestamp>.<body>'"

_SECRET_PREFIX = "whsec_"
_DERIVATION_LABEL = b"modelhost/webhook-signing-secret/v1\x00"


def webhook_master_secret(settings: Settings) -> bytes:
    """The master secret per-tenant signing secrets derive from: the setting, or a random one
    kept in ``home/webhook.key`` (created on first use, readable by its owner only)."""
    configured = settings.jobs.webhook_secret
    if configured is not None:
        return configured.get_secret_value().encode()
    path = settings.home / "webhook.key"
    settings.home.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # another process made it: read theirs
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    for _ in range(50):  # the other process may still be writing it
        text = path.read_text().strip()
        if text:
            return text.encode()
        time.sleep(0.02)
    raise ConfigError(f"{path} is empty; delete it or set MODELHOST_JOBS__WEBHOOK_SECRET")


def tenant_secret(master: bytes, tenant: str) -> str:
    """The secret ``tenant``'s webhooks are signed with: ``whsec_`` and 64 hex digits.

    It is an HMAC-SHA256 of the tenant name under the master secret, so it is the same on every
    machine sharing the master secret, and knowing one tenant's secret reveals nothing about
    another's.
    """
    digest = hmac.new(master, _DERIVATION_LABEL + tenant.encode(), hashlib.sha256)
    return _SECRET_PREFIX + digest.hexdigest()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value: ``sha256=`` and the hex HMAC-SHA256, keyed with the whole
    secret string (``whsec_…`` included), of ``timestamp``, a dot, and the raw body."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """Check a received webhook, as a receiver should.

    Args:
        secret: the tenant's secret (``GET /v1/webhooks/secret``).
        timestamp: the ``X-Modelhost-Timestamp`` header, unix seconds.
        body: the raw request body, exactly as received.
        signature: the ``X-Modelhost-Signature`` header; several comma-separated values are
            accepted (any one matching is enough), so a secret can be rotated.
        tolerance_s: how far the timestamp may be from ``now``; older requests are replays.
        now: the current time (default: the clock).

    Returns:
        True only if the signature matches (compared in constant time) and the timestamp is
        within the tolerance.
    """
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).encode()
    candidates = [part.strip().encode() for part in signature.split(",")]
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def signed_headers(
    secret: str, event: str, delivery: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """The headers of one signed POST of ``body``: content type, user agent, event, delivery
    id (``<id>:<attempt>``), timestamp (``now``, default the clock) and signature."""
    timestamp = str(int(time.time() if now is None else now))
    return {
        "Content-Type": "application/json",
        "User-Agent": f"modelhost/{__version__}",
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }
