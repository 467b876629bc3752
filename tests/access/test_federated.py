"""Federated identity: JWTs signed by keys made here, JWKS from a file or a local server."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from sciserve.access.federated import JwtVerifier
from sciserve.access.priority import Priority
from sciserve.config import AccessConfig, IssuerConfig
from sciserve.errors import ConfigError, Unauthenticated, Unavailable

from .conftest import FakeClock

ISSUER = "https://iam.example.org/"
OTHER_ISSUER = "https://idp.example.net/"
AUDIENCE = "https://sciserve.example.org"


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return _rsa()


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def jwks(*keys: tuple[str, Any]) -> dict[str, Any]:
    out = []
    for kid, key in keys:
        algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
        jwk = json.loads(algorithm.to_jwk(key.public_key()))
        out.append({**jwk, "kid": kid, "use": "sig"})
    return {"keys": out}


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "sub": "user-123",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "scope": "openid compute.read compute.create",
        "wlcg.groups": ["/cms", "/cms/higgs", "/unmapped"],
        **extra,
    }


def sign(key: Any, kid: str | None = "k1", alg: str = "RS256", **extra: Any) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**extra), key, algorithm=alg, headers=headers)


def issuer(**overrides: Any) -> IssuerConfig:
    values: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "group_map": {"/cms": "cms", "/cms/higgs": "higgs"},
        "default_priority": "batch",
        "leeway": 0,
        **overrides,
    }
    return IssuerConfig.model_validate(values)


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: Any) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(("k1", rsa_key), ("k2", ec_key))))
    return path


@pytest.fixture
def verifier(jwks_file: Path) -> Iterator[JwtVerifier]:
    v = JwtVerifier(AccessConfig(issuers=(issuer(jwks_file=jwks_file),)))
    yield v
    v.close()


class JwksServer:
    """Serves a JWKS document on 127.0.0.1 and counts the fetches."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def jwks_server(rsa_key: rsa.RSAPrivateKey) -> Iterator[JwksServer]:
    server = JwksServer(jwks(("k1", rsa_key)))
    yield server
    server.stop()


def test_valid_token_maps_claims_to_scopes(verifier: JwtVerifier, rsa_key: Any) -> None:
    identity = verifier.verify(sign(rsa_key))
    assert identity.kind == "jwt"
    assert identity.subject == "user-123" and identity.issuer == ISSUER
    assert identity.token_id is None
    assert identity.priority is Priority.BATCH
    assert dict(identity.scopes) == {
        "cms": frozenset({"read", "infer"}),
        "higgs": frozenset({"read", "infer"}),
    }
    assert identity.allows("infer", "cms") and not identity.allows("publish", "cms")
    assert not identity.can_see("lsst")


def test_ec_keys_and_scope_lists(verifier: JwtVerifier, ec_key: Any) -> None:
    token = sign(
        ec_key, kid="k2", alg="ES256", scope=["compute.modify"], **{"wlcg.groups": ["/cms"]}
    )
    assert dict(verifier.verify(token).scopes) == {"cms": frozenset({"publish"})}


def test_no_groups_or_no_scopes_grant_nothing(verifier: JwtVerifier, rsa_key: Any) -> None:
    no_groups: dict[str, Any] = {"wlcg.groups": []}
    assert dict(verifier.verify(sign(rsa_key, **no_groups)).scopes) == {}
    assert dict(verifier.verify(sign(rsa_key, scope="openid")).scopes) == {}


def test_star_group_and_admin_scope(jwks_file: Path, rsa_key: Any) -> None:
    cfg = issuer(
        jwks_file=jwks_file,
        group_map={"/ops": "*"},
        scope_map={"sciserve.admin": ["admin"]},
        groups_claim="groups",
    )
    identity = JwtVerifier(AccessConfig(issuers=(cfg,))).verify(
        sign(rsa_key, scope="sciserve.admin", groups=["/ops"])
    )
    assert identity.is_admin


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda k, o: sign(o), "signature"),  # right kid, wrong key
        (lambda k, o: sign(k, iss=OTHER_ISSUER), "issuer"),
        (lambda k, o: sign(k, exp=int(time.time()) - 60), "expired"),
        (lambda k, o: sign(k, nbf=int(time.time()) + 600), "not valid yet"),
        (lambda k, o: sign(k, aud="https://elsewhere.example"), "audience"),
        (lambda k, o: sign(k, kid="unknown"), "key"),
        (lambda k, o: jwt.encode(claims(), "k" * 32, algorithm="HS256"), "algorithm"),
        (lambda k, o: sign(k, sub=None), "sub"),
    ],
)
def test_rejected(verifier: JwtVerifier, rsa_key: Any, make: Any, match: str) -> None:
    token = make(rsa_key, _rsa())
    with pytest.raises(Unauthenticated, match=match) as info:
        verifier.verify(token)
    assert token not in str(info.value)


def test_unsigned_token_is_rejected(verifier: JwtVerifier) -> None:
    # "header.payload." with an empty signature; with a fake one it is still "none".
    token = jwt.encode(claims(), None, algorithm="none")  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated, match="malformed"):
        verifier.verify(token)
    with pytest.raises(Unauthenticated, match="algorithm"):
        verifier.verify(token + "c2ln")


def test_any_audience_when_none_is_configured(jwks_file: Path, rsa_key: Any) -> None:
    v = JwtVerifier(AccessConfig(issuers=(issuer(jwks_file=jwks_file, audience=None),)))
    assert v.verify(sign(rsa_key, aud="https://wlcg.cern.ch/jwt/v1/any")).subject == "user-123"


def test_jwks_from_a_url_is_cached(jwks_server: JwksServer, rsa_key: Any) -> None:
    clock = FakeClock()
    cfg = AccessConfig(issuers=(issuer(jwks_url=jwks_server.url),), jwks_cache_ttl=300)
    v = JwtVerifier(cfg, clock=clock)
    try:
        for _ in range(3):
            assert v.verify(sign(rsa_key)).subject == "user-123"
        assert jwks_server.fetches == 1
        clock.advance(301)
        v.verify(sign(rsa_key))
        assert jwks_server.fetches == 2
    finally:
        v.close()


def test_key_rotation_refetches_but_not_on_every_unknown_kid(
    jwks_server: JwksServer, rsa_key: Any
) -> None:
    clock = FakeClock()
    v = JwtVerifier(AccessConfig(issuers=(issuer(jwks_url=jwks_server.url),)), clock=clock)
    try:
        v.verify(sign(rsa_key))
        new_key = _rsa()
        jwks_server.document = jwks(("k1", rsa_key), ("k9", new_key))
        # Unknown kids right after a fetch do not hammer the issuer ...
        for _ in range(5):
            with pytest.raises(Unauthenticated, match="key"):
                v.verify(sign(new_key, kid="k9"))
        assert jwks_server.fetches == 1
        # ... but a rotated key is picked up once the short refresh delay passed.
        clock.advance(31)
        assert v.verify(sign(new_key, kid="k9")).subject == "user-123"
        assert jwks_server.fetches == 2
    finally:
        v.close()


def test_unreachable_jwks_is_unavailable_not_unauthenticated(rsa_key: Any) -> None:
    server = JwksServer({"keys": []})
    url = server.url
    server.stop()  # nothing listens there any more
    v = JwtVerifier(AccessConfig(issuers=(issuer(jwks_url=url),)))
    with pytest.raises(Unavailable, match="signing keys"):
        v.verify(sign(rsa_key))
    v.close()


def test_issuer_config_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unsupported algorithms"):
        issuer(jwks_file=tmp_path, algorithms=["HS256"])
    with pytest.raises(ValidationError, match="unsupported algorithms"):
        issuer(jwks_file=tmp_path, algorithms=["none"])
    with pytest.raises(ValidationError, match="https"):
        issuer(jwks_url="http://iam.example.org/jwks")
    with pytest.raises(ConfigError, match="exactly one"):
        JwtVerifier(AccessConfig(issuers=(issuer(),)))
    with pytest.raises(ConfigError, match="group_map"):
        JwtVerifier(AccessConfig(issuers=(issuer(jwks_file=tmp_path, group_map={"/x": "Bad NS"}),)))
