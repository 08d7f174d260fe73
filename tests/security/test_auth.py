"""Credentials to principals: API keys and JWT bearer tokens (HS256 and JWKS)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from modelhost.errors import Unauthenticated
from modelhost.registry import make_engine
from modelhost.security.auth import Authenticator, JwtOptions, bearer, required_scope
from modelhost.security.keys import KeyStore, NewKey, Scope


def _keys(tmp_path: Path) -> KeyStore:
    return KeyStore(make_engine(f"sqlite:///{tmp_path / 'k.db'}"))


@pytest.mark.asyncio
async def test_api_key_and_missing_credential(tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    secret, _ = keys.create(NewKey("acme", "svc", ["predict"]), actor="root")
    auth = Authenticator(keys, enabled=True)
    assert (await auth.authenticate(secret)).tenant == "acme"
    with pytest.raises(Unauthenticated, match="credential is required"):
        await auth.authenticate(None)
    with pytest.raises(Unauthenticated):
        await auth.authenticate("sk-something-else")
    anonymous = await Authenticator(keys, enabled=False).authenticate(None)
    assert anonymous.allows(Scope.ADMIN)


@pytest.mark.asyncio
async def test_hs256_token_maps_claims(tmp_path: Path) -> None:
    secret = "s3cret-s3cret-s3cret-s3cret-s3cret"
    options = JwtOptions(secret=secret, audience="modelhost")
    auth = Authenticator(_keys(tmp_path), enabled=True, jwt=options)
    claims = {
        "sub": "alice",
        "tenant": "acme",
        "scope": "predict jobs",
        "aud": "modelhost",
        "exp": int(time.time()) + 60,
    }
    token = jwt.encode(claims, secret, algorithm="HS256")
    principal = await auth.authenticate(token)
    assert principal.id == "acme/alice"
    assert principal.scopes == frozenset({"predict", "jobs"})
    assert principal.via == "jwt"
    expired = jwt.encode({**claims, "exp": int(time.time()) - 10}, secret)
    with pytest.raises(Unauthenticated, match="expired"):
        await auth.authenticate(expired)
    forged = jwt.encode(claims, "another-secret-another-secret-1234", algorithm="HS256")
    with pytest.raises(Unauthenticated, match="Signature"):
        await auth.authenticate(forged)
    wrong_audience = jwt.encode({**claims, "aud": "other"}, secret, algorithm="HS256")
    with pytest.raises(Unauthenticated, match="Audience"):
        await auth.authenticate(wrong_audience)


@pytest.mark.asyncio
async def test_rs256_token_from_a_jwks_file(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    public_jwk.update({"kid": "k1", "alg": "RS256", "use": "sig"})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public_jwk]}))
    auth = Authenticator(_keys(tmp_path), enabled=True, jwt=JwtOptions(jwks_file=jwks))
    token = jwt.encode(
        {"sub": "bob", "scopes": ["admin"], "exp": int(time.time()) + 60},
        private,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    principal = await auth.authenticate(token)
    assert principal.id == "default/bob"
    assert principal.allows(Scope.DEPLOY)


def test_bearer_parsing_and_route_scopes() -> None:
    assert bearer("Bearer mhk_a_b") == "mhk_a_b"
    assert bearer("bearer  tok ") == "tok"
    assert bearer("mhk_a_b") == "mhk_a_b"
    assert bearer("Basic dXNlcjpwYXNz") is None
    assert required_scope("GET", "/healthz") is None
    assert required_scope("GET", "/v2/health/ready") is None
    assert required_scope("POST", "/v1/models/iris/predict") is Scope.PREDICT
    assert required_scope("POST", "/v1/models/iris/versions/1.0.0/unload") is Scope.DEPLOY
    assert required_scope("GET", "/metrics") is Scope.ADMIN
    assert required_scope("POST", "/v1/keys") is Scope.ADMIN
    assert required_scope("GET", "/v1/jobs/x") is Scope.JOBS


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        # names that look like route words are names: segments decide, not substrings
        ("GET", "/v1/models/golden", Scope.PREDICT),
        ("POST", "/v1/models/deployment-bot/predict", Scope.PREDICT),
        ("POST", "/v1/models/load/predict", Scope.PREDICT),
        ("GET", "/v1/features/tenant-bot", Scope.PREDICT),
        ("POST", "/v1/features/tenant-bot/invoke", Scope.PREDICT),
        ("GET", "/v1/jobsfoo", Scope.PREDICT),
        # the routes themselves
        ("GET", "/v1/models/iris/deployment", Scope.DEPLOY),
        ("POST", "/v1/models/iris/deployment/promote", Scope.DEPLOY),
        ("GET", "/v1/deployments", Scope.DEPLOY),
        ("POST", "/v1/models/iris/versions/1.0.0/load", Scope.DEPLOY),
        ("PUT", "/v1/models/iris/versions/1.0.0/golden", Scope.MODELS_WRITE),
        ("POST", "/v1/features", Scope.MODELS_WRITE),
        ("GET", "/v1/features", Scope.PREDICT),
        ("PUT", "/v1/features/tenant-bot/tenant/pin", Scope.FEATURES),
        ("GET", "/v1/features/triage/tenant", Scope.FEATURES),
        ("GET", "/v1/batch/b_1/results", Scope.JOBS),
        ("GET", "/v1/audit", Scope.ADMIN),
        ("GET", "/v1/provenance/r_1", Scope.PROVENANCE),
    ],
)
def test_the_scope_of_a_route_is_decided_by_whole_segments(
    method: str, path: str, scope: Scope
) -> None:
    assert required_scope(method, path) is scope
