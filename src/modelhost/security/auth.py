"""Authentication: API keys and OAuth2/JWT bearer tokens to a :class:`Principal`, and the
scope each HTTP route needs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelhost.errors import ConfigError, MissingDependencyError, Unauthenticated
from modelhost.security.keys import ANONYMOUS, KEY_PREFIX, KeyStore, Principal, Scope

#: Paths that answer without a credential.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})


@dataclass(frozen=True, slots=True)
class JwtOptions:
    """How bearer JWTs are checked and mapped to principals."""

    secret: str | None = None
    """HS256 shared secret."""
    jwks_file: Path | None = None
    """A JWKS document (RS256/ES256 public keys)."""
    audience: str | None = None
    issuer: str | None = None
    tenant_claim: str = "tenant"
    scope_claim: str = "scope"
    default_tenant: str = "default"

    @property
    def enabled(self) -> bool:
        """True when a secret or a JWKS file is configured."""
        return bool(self.secret or self.jwks_file)


class JwtVerifier:
    """Verifies signature, expiry, audience and issuer; maps claims to a principal."""

    def __init__(self, options: JwtOptions) -> None:
        try:
            import jwt
        except ImportError:
            raise MissingDependencyError("PyJWT", "auth") from None
        self._jwt = jwt
        self.options = options
        self._jwks: Any = None
        if options.jwks_file is not None:
            try:
                self._jwks = jwt.PyJWKSet.from_json(options.jwks_file.read_text())
            except (OSError, jwt.PyJWTError, json.JSONDecodeError) as exc:
                raise ConfigError(f"JWKS file {options.jwks_file}: {exc}") from None

    def _key(self, token: str) -> tuple[Any, list[str]]:
        if self._jwks is None:
            return self.options.secret, ["HS256"]
        kid = self._jwt.get_unverified_header(token).get("kid")
        for key in self._jwks.keys:
            if kid is None or key.key_id == kid:
                return key.key, [key.algorithm_name or "RS256"]
        raise Unauthenticated(f"no key {kid!r} in the configured JWKS")

    def verify(self, token: str) -> Principal:
        """The principal of a token.

        Raises:
            Unauthenticated: bad signature, expired, wrong audience or issuer, no subject.
        """
        jwt = self._jwt
        try:
            key, algorithms = self._key(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.options.audience,
                issuer=self.options.issuer,
                options={"require": ["sub", "exp"], "verify_aud": bool(self.options.audience)},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the bearer token is not valid: {exc}") from None
        raw = claims.get(self.options.scope_claim) or claims.get("scopes") or []
        scopes = raw.split() if isinstance(raw, str) else [str(s) for s in raw]
        return Principal(
            tenant=str(claims.get(self.options.tenant_claim) or self.options.default_tenant),
            subject=str(claims["sub"]),
            scopes=frozenset(scopes),
            via="jwt",
        )


class Authenticator:
    """Turns a presented credential into a principal; one per server process."""

    def __init__(self, keys: KeyStore, *, enabled: bool, jwt: JwtOptions | None = None) -> None:
        self.keys = keys
        self.enabled = enabled
        self._jwt = JwtVerifier(jwt) if jwt is not None and jwt.enabled else None

    async def authenticate(self, credential: str | None) -> Principal:
        """The principal of ``credential`` (a bearer value or an API key).

        Raises:
            Unauthenticated: missing or invalid.
        """
        if not self.enabled:
            return ANONYMOUS
        if not credential:
            raise Unauthenticated(
                "a credential is required: send 'Authorization: Bearer <API key or token>'"
            )
        if credential.startswith(KEY_PREFIX):
            return await self.keys.verify_async(credential)
        if self._jwt is not None and credential.count(".") == 2:
            return self._jwt.verify(credential)
        raise Unauthenticated("the credential is neither an API key (mhk_…) nor a known token")


def bearer(authorization: str | None) -> str | None:
    """The credential in an ``Authorization: Bearer …`` value (or a bare key)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    return authorization.strip() if authorization.startswith(KEY_PREFIX) else None


def _feature_scope(method: str, parts: list[str]) -> Scope:
    """Features (``parts`` after ``/v1/features``): calling and reading need ``predict``; a
    tenant's pins and overrides (``{name}/tenant...``) need ``features``; pushing a spec needs
    ``models:write``. A feature may be named ``tenant-bot``: segments decide, not substrings."""
    if len(parts) >= 2 and parts[1] == "tenant":
        return Scope.FEATURES
    if method == "POST" and not parts:
        return Scope.MODELS_WRITE
    return Scope.PREDICT


def _model_scope(method: str, parts: list[str]) -> Scope:
    """Model routes (``parts`` after ``/v1/models``): by the segments after the model's name,
    so a model named ``golden`` or ``deployment-bot`` is read and called with ``predict``."""
    rest = parts[1:]
    if rest[:1] == ["deployment"]:
        return Scope.DEPLOY
    if len(rest) == 3 and rest[0] == "versions":
        if rest[2] in ("load", "unload") and method == "POST":
            return Scope.DEPLOY
        if rest[2] == "golden":
            return Scope.MODELS_WRITE
    return Scope.PREDICT


def _segments(path: str, prefix: str) -> list[str] | None:
    """The path's segments after ``prefix`` (a whole segment), or None when it is not under it."""
    if path != prefix and not path.startswith(prefix + "/"):
        return None
    return [part for part in path[len(prefix) :].split("/") if part]


def required_scope(method: str, path: str) -> Scope | None:
    """The scope an HTTP route needs, or None for public routes."""
    if path in PUBLIC_PATHS:
        return None
    for prefixes, scope in (
        (("/v1/keys", "/v1/audit", "/metrics"), Scope.ADMIN),
        (("/v1/jobs", "/v1/batch", "/v1/webhooks"), Scope.JOBS),
        (("/v1/provenance",), Scope.PROVENANCE),
        (("/v1/deployments",), Scope.DEPLOY),
    ):
        if any(_segments(path, prefix) is not None for prefix in prefixes):
            return scope
    models = _segments(path, "/v1/models")
    if models:
        return _model_scope(method, models)
    features = _segments(path, "/v1/features")
    if features is not None:
        return _feature_scope(method, features)
    return Scope.PREDICT
