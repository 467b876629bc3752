"""From an Authorization header to an identity; malformed input never echoed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from sciserve.access.authenticator import Authenticator
from sciserve.access.federated import JwtVerifier
from sciserve.access.tokens import TokenStore
from sciserve.config import AccessConfig, IssuerConfig
from sciserve.errors import Unauthenticated
from sciserve.registry.registry import Registry

ON = AccessConfig(enabled=True)
OFF = AccessConfig(enabled=False)


@pytest.fixture
def auth(tokens: TokenStore) -> Authenticator:
    return Authenticator(tokens, None, ON)


@pytest.fixture
def sqlite_auth(sqlite_registry: Registry) -> Authenticator:
    # Malformed input is refused before any database access: one backend suffices.
    return Authenticator(TokenStore(sqlite_registry), None, ON)


def test_api_token(auth: Authenticator, tokens: TokenStore) -> None:
    record, raw = tokens.create("alice", {"ztf": {"infer"}})
    identity = auth.authenticate(f"Bearer {raw}")
    assert identity.token_id == record.token_id and identity.kind == "token"
    # The scheme is case-insensitive and surrounding blanks are tolerated.
    assert auth.authenticate(f"  bearer   {raw} ").token_id == record.token_id


def test_jwt(tokens: TokenStore, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "jwks.json").write_text(
        json.dumps({"keys": [json.loads(ECAlgorithm.to_jwk(key.public_key()))]})
    )
    iss = IssuerConfig(
        issuer="https://iam.example", jwks_file=tmp_path / "jwks.json", group_map={"/ztf": "ztf"}
    )
    config = AccessConfig(enabled=True, issuers=(iss,))
    auth = Authenticator(tokens, JwtVerifier(config), config)
    token = jwt.encode(
        {
            "iss": "https://iam.example",
            "sub": "carol",
            "exp": int(time.time()) + 60,
            "scope": "compute.create",
            "wlcg.groups": ["/ztf"],
        },
        key,
        algorithm="ES256",
    )
    identity = auth.authenticate(f"Bearer {token}")
    assert identity.kind == "jwt" and identity.allows("infer", "ztf")


def test_jwts_refused_without_issuers(auth: Authenticator) -> None:
    with pytest.raises(Unauthenticated, match="no issuers"):
        auth.authenticate("Bearer aaaa.bbbb.cccc")


def test_missing_credentials(tokens: TokenStore) -> None:
    anonymous = Authenticator(tokens, None, OFF).authenticate(None)
    assert anonymous.kind == "anonymous" and anonymous.allows("admin", "anything")
    assert Authenticator(tokens, None, OFF).authenticate("").kind == "anonymous"
    with pytest.raises(Unauthenticated, match="authentication required"):
        Authenticator(tokens, None, ON).authenticate(None)
    with pytest.raises(Unauthenticated, match="authentication required"):
        Authenticator(tokens, None, ON).authenticate("   ")


def test_credentials_sent_are_verified_even_with_auth_off(
    registry: Registry, tokens: TokenStore
) -> None:
    auth = Authenticator(tokens, None, OFF)
    _, raw = tokens.create("bulk", {"ztf": {"infer"}}, priority="batch")
    assert auth.authenticate(f"Bearer {raw}").subject == "bulk"
    with pytest.raises(Unauthenticated):
        auth.authenticate("Bearer ssv_ABCDEFGHIJKL_" + "b" * 43)


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "garbage",
        "Basic YWxpY2U6c2VjcmV0",
        "Bearer two parts",
        "Bearer not-a-token-at-all",
        "Bearer ssv_tooshort",
        "Bearer " + "A" * 10_240,
        "Bearer ssv_ABCDEFGHIJKL_" + "é" * 43,
        "Bearer ünïcödé",
        "Bearer a.b",
        "Bearer \x00\x01",
    ],
)
def test_malformed_headers(sqlite_auth: Authenticator, header: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        sqlite_auth.authenticate(header)
    message = str(info.value)
    credential = header.partition(" ")[2]
    assert len(message) < 120
    assert not credential or credential not in message
    assert "YWxpY2U6c2VjcmV0" not in message
