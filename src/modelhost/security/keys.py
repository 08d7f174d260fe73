"""API keys, principals, tenants and the audit trail.

A key looks like ``mhk_<id>_<secret>``: the id finds the row without scanning, the secret is
checked against a salted HMAC-SHA256 (the secret has 256 bits of entropy, so a slow KDF would
add latency to every request without adding safety). Only the salt and the digest are stored;
the key is shown once, when it is created.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import JSON, DateTime, Float, Integer, String, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from modelhost.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated
from modelhost.registry.db import Base, utcnow

KEY_PREFIX = "mhk_"
_CACHE_SECONDS = 5.0


class Scope(StrEnum):
    """What a principal may do."""

    PREDICT = "predict"  #: call models on every protocol; read model metadata
    JOBS = "jobs"  #: submit and read async jobs and batches
    MODELS_WRITE = "models:write"  #: push versions, change stages and aliases
    DEPLOY = "deploy"  #: load, unload, roll out
    PROVENANCE = "provenance"  #: read the tenant's provenance records (payloads included), replay
    FEATURES = "features"  #: pin and override LLM features for the caller's own tenant
    ADMIN = "admin"  #: everything, including keys, metrics and audit


#: The tenant whose administrators see every tenant's data; any other admin sees its own.
SYSTEM_TENANT = "system"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a subject in a tenant, with scopes and optional limits."""

    tenant: str
    subject: str
    scopes: frozenset[str]
    key_id: str | None = None
    via: str = "key"
    rpm: int | None = None
    tpm: int | None = None
    budget: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def id(self) -> str:
        """``tenant/subject``: the identity limits and budgets are counted by."""
        return f"{self.tenant}/{self.subject}"

    def allows(self, scope: Scope) -> bool:
        """True if the principal holds ``scope`` or ``admin``."""
        return scope.value in self.scopes or Scope.ADMIN.value in self.scopes

    def confined_to(self) -> str | None:
        """The one tenant whose data this caller may read; None for an administrator of the
        system tenant, who sees every tenant (an admin of any other tenant sees its own)."""
        if self.tenant == SYSTEM_TENANT and Scope.ADMIN.value in self.scopes:
            return None
        return self.tenant

    def require(self, scope: Scope) -> None:
        """Raise Forbidden unless the principal holds ``scope``."""
        if not self.allows(scope):
            raise Forbidden(
                f"principal {self.id} lacks the {scope.value!r} scope this action needs",
                param="scope",
            )


#: The principal of a server started with ``--no-auth``.
ANONYMOUS = Principal(
    tenant="default", subject="anonymous", scopes=frozenset({Scope.ADMIN.value}), via="none"
)


class ApiKeyRow(Base):
    """One API key: who it belongs to, what it may do, until when."""

    __tablename__ = "mh_api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    principal: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    salt: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(256), default="")
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    budget: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditRow(Base):
    """One administrative action: who, what, when, from where."""

    __tablename__ = "mh_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256))
    source: Mapped[str] = mapped_column(String(128))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class Auditor(Protocol):
    """Records one administrative action (see :meth:`KeyStore.audit`)."""

    def __call__(self, actor: str, tenant: str, action: str, target: str, source: str) -> None:
        """Record ``action`` on ``target`` by ``actor`` of ``tenant`` from ``source``."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as listed: never its secret."""

    id: str
    tenant: str
    principal: str
    scopes: list[str]
    description: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    rpm: int | None
    tpm: int | None
    budget: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with datetimes in ISO 8601."""
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = value.isoformat() if isinstance(value, datetime) else value
        return out


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit record."""

    at: datetime
    actor: str
    tenant: str
    action: str
    target: str
    source: str
    detail: dict[str, Any]


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo:
        return moment
    return moment.replace(tzinfo=UTC)


def _digest(salt: str, secret: str) -> str:
    return hmac.new(salt.encode(), secret.encode(), hashlib.sha256).hexdigest()


def _info(row: ApiKeyRow) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        tenant=row.tenant,
        principal=row.principal,
        scopes=list(row.scopes),
        description=row.description,
        created_at=_aware(row.created_at) or row.created_at,
        created_by=row.created_by,
        expires_at=_aware(row.expires_at),
        revoked_at=_aware(row.revoked_at),
        rpm=row.rpm,
        tpm=row.tpm,
        budget=row.budget,
    )


@dataclass(slots=True)
class NewKey:
    """Options of a key to create."""

    tenant: str
    principal: str
    scopes: list[str]
    description: str = ""
    expires_at: datetime | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget: float | None = None


class KeyStore:
    """Creates, verifies, lists and revokes API keys; writes and reads the audit trail."""

    def __init__(self, engine: Engine) -> None:
        tables = Base.metadata.tables
        Base.metadata.create_all(engine, tables=[tables["mh_api_keys"], tables["mh_audit"]])
        self._session = sessionmaker(engine, expire_on_commit=False)
        self._cache: dict[str, tuple[float, ApiKeyRow | None]] = {}

    def create(
        self, spec: NewKey, *, actor: str, source: str = "cli", key_id: str | None = None
    ) -> tuple[str, KeyInfo]:
        """Create a key; returns the secret key string (shown once) and its record.

        Args:
            spec: tenant, principal, scopes, limits.
            actor: who creates it (audit).
            source: from where (audit).
            key_id: a fixed id (the first-start admin key), so that concurrent creators
                conflict instead of making two; random otherwise.

        Raises:
            InvalidInput: an unknown scope, or an empty tenant or principal.
            Conflict: a key with ``key_id`` exists already.
        """
        known = {s.value for s in Scope}
        unknown = sorted(set(spec.scopes) - known)
        if unknown or not spec.scopes:
            raise InvalidInput(
                f"scopes must be some of {', '.join(sorted(known))}; got {unknown or 'none'}",
                param="scopes",
            )
        if not spec.tenant or not spec.principal:
            raise InvalidInput("a key needs a tenant and a principal", param="tenant")
        key_id = key_id or secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_hex(16)
        row = ApiKeyRow(
            id=key_id,
            tenant=spec.tenant,
            principal=spec.principal,
            scopes=sorted(set(spec.scopes)),
            salt=salt,
            digest=_digest(salt, secret),
            description=spec.description,
            rpm=spec.rpm,
            tpm=spec.tpm,
            budget=spec.budget,
            created_by=actor,
            expires_at=spec.expires_at,
        )
        detail = {"principal": spec.principal, "scopes": row.scopes}
        try:
            with self._session.begin() as session:
                session.add(row)
                self._audit(session, actor, spec.tenant, "key.create", key_id, source, detail)
        except IntegrityError:
            raise Conflict(f"an API key with id {key_id!r} exists already") from None
        return f"{KEY_PREFIX}{key_id}_{secret}", _info(row)

    def _cached(self, key_id: str) -> tuple[bool, ApiKeyRow | None]:
        cached = self._cache.get(key_id)
        if cached is not None and time.monotonic() - cached[0] < _CACHE_SECONDS:
            return True, cached[1]
        return False, None

    def _fetch(self, key_id: str) -> ApiKeyRow | None:
        with self._session() as session:
            row = session.get(ApiKeyRow, key_id)
        self._cache[key_id] = (time.monotonic(), row)
        return row

    @staticmethod
    def _split(presented: str) -> tuple[str, str]:
        key_id, _, secret = presented.removeprefix(KEY_PREFIX).partition("_")
        if not presented.startswith(KEY_PREFIX) or not key_id or not secret:
            raise Unauthenticated("the API key is not valid")
        return key_id, secret

    def verify(self, presented: str) -> Principal:
        """The principal of a key string (reads the database on a cache miss).

        Raises:
            Unauthenticated: malformed, unknown, wrong secret, revoked or expired.
        """
        key_id, secret = self._split(presented)
        hit, row = self._cached(key_id)
        return self._check(row if hit else self._fetch(key_id), secret)

    async def verify_async(self, presented: str) -> Principal:
        """:meth:`verify`, reading the database in a thread so the event loop never waits."""
        key_id, secret = self._split(presented)
        hit, row = self._cached(key_id)
        if not hit:
            row = await asyncio.to_thread(self._fetch, key_id)
        return self._check(row, secret)

    @staticmethod
    def _check(row: ApiKeyRow | None, secret: str) -> Principal:
        if row is None or not hmac.compare_digest(row.digest, _digest(row.salt, secret)):
            raise Unauthenticated("the API key is not valid")
        if row.revoked_at is not None:
            raise Unauthenticated("the API key was revoked")
        expires = _aware(row.expires_at)
        if expires is not None and expires <= datetime.now(UTC):
            raise Unauthenticated("the API key has expired")
        return Principal(
            tenant=row.tenant,
            subject=row.principal,
            scopes=frozenset(row.scopes),
            key_id=row.id,
            rpm=row.rpm,
            tpm=row.tpm,
            budget=row.budget,
        )

    def list_keys(self, tenant: str | None = None) -> list[KeyInfo]:
        """Every key (of one tenant), newest first."""
        with self._session() as session:
            query = select(ApiKeyRow).order_by(ApiKeyRow.created_at.desc())
            if tenant is not None:
                query = query.where(ApiKeyRow.tenant == tenant)
            return [_info(r) for r in session.scalars(query)]

    def revoke(
        self, key_id: str, *, actor: str, tenant: str | None = None, source: str = "cli"
    ) -> KeyInfo:
        """Revoke a key; it stops working within a few seconds on every server.

        Raises:
            NotFound: no such key (or it belongs to another tenant).
        """
        key_id = key_id.removeprefix(KEY_PREFIX).partition("_")[0]
        with self._session.begin() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None or (tenant is not None and row.tenant != tenant):
                raise NotFound(f"no API key {key_id!r}", param="key_id")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            self._audit(session, actor, row.tenant, "key.revoke", key_id, source, {})
        self._cache.pop(key_id, None)
        return _info(row)

    def count(self) -> int:
        """How many keys exist (revoked ones included)."""
        with self._session() as session:
            return len(session.scalars(select(ApiKeyRow.id)).all())

    def audit(
        self,
        actor: str,
        tenant: str,
        action: str,
        target: str,
        source: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Record an administrative action."""
        with self._session.begin() as session:
            self._audit(session, actor, tenant, action, target, source, detail or {})

    @staticmethod
    def _audit(
        session: Any,
        actor: str,
        tenant: str,
        action: str,
        target: str,
        source: str,
        detail: dict[str, Any],
    ) -> None:
        session.add(
            AuditRow(
                actor=actor,
                tenant=tenant,
                action=action,
                target=target,
                source=source,
                detail=detail,
            )
        )

    def audit_log(self, tenant: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest audit records first (of one tenant, or all)."""
        with self._session() as session:
            query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
            if tenant is not None:
                query = query.where(AuditRow.tenant == tenant)
            return [
                AuditEntry(
                    at=_aware(r.at) or r.at,
                    actor=r.actor,
                    tenant=r.tenant,
                    action=r.action,
                    target=r.target,
                    source=r.source,
                    detail=dict(r.detail),
                )
                for r in session.scalars(query)
            ]
