"""Federated identity: bearer JWTs from configured issuers (WLCG, INDIGO IAM, ...).

A JWT is accepted only from an issuer listed in ``access.issuers``, signed
with an asymmetric algorithm allowed for it by a key the issuer publishes
(its JWKS, from a file or fetched over HTTPS and cached), inside its
``exp``/``nbf`` window (with the issuer's leeway) and, when configured, for
our audience.  Its scopes and groups then map to sciserve scopes per
namespace: every scope in ``scope_map`` applies to every namespace its
groups map to in ``group_map``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import jwt

from ..config import AccessConfig, IssuerConfig
from ..errors import ConfigError, InvalidInput, Unauthenticated, Unavailable
from .identity import Identity, normalize_scopes
from .priority import parse_priority

__all__ = ["JWT_RE", "JwtVerifier"]

#: Three base64url parts separated by dots (a JWS in compact form).
JWT_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# When a token names a key we do not know, the JWKS is fetched again (the
# issuer may have rotated keys), but not more often than this (s).
_MIN_REFRESH = 30.0
_FETCH_TIMEOUT = 5.0


def _strings(value: Any) -> list[str]:
    """A claim holding a space-separated string or a list of strings."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


class _KeySet:
    """The keys of one issuer, reloaded when older than the TTL."""

    def __init__(self, issuer: IssuerConfig, http: Callable[[], httpx.Client]) -> None:
        self._issuer = issuer
        self._http = http
        self._keys: jwt.PyJWKSet | None = None
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def _load(self) -> jwt.PyJWKSet:
        issuer = self._issuer
        try:
            if issuer.jwks_file is not None:
                data = json.loads(issuer.jwks_file.read_text(encoding="utf-8"))
            else:
                assert issuer.jwks_url is not None  # checked by JwtVerifier
                response = self._http().get(issuer.jwks_url)
                response.raise_for_status()
                data = response.json()
            return jwt.PyJWKSet.from_dict(data)
        except (OSError, ValueError, httpx.HTTPError, jwt.PyJWTError) as exc:
            raise Unavailable(f"cannot load the signing keys of {issuer.issuer}: {exc}") from exc

    def find(self, kid: str | None, ttl: float, now: float) -> Any | None:
        """The public key for ``kid`` (or the only key, when the token names none)."""
        with self._lock:
            if self._keys is None or now - self._loaded_at >= ttl:
                self._reload(now)
            key = self._pick(kid)
            if key is None and now - self._loaded_at >= _MIN_REFRESH:
                self._reload(now)
                key = self._pick(kid)
            return key

    def _reload(self, now: float) -> None:
        try:
            self._keys = self._load()
        except Unavailable:
            if self._keys is None:
                raise
            # Keep using the keys we have while the issuer is unreachable.
        self._loaded_at = now

    def _pick(self, kid: str | None) -> Any | None:
        assert self._keys is not None
        keys = self._keys.keys
        if kid is None:
            return keys[0].key if len(keys) == 1 else None
        return next((k.key for k in keys if k.key_id == kid), None)


class JwtVerifier:
    """Verifies JWTs from the issuers in ``config.issuers`` and maps them to identities.

    Loading keys from a URL blocks (at most a few seconds, once per
    ``jwks_cache_ttl``); async callers should run :meth:`verify` in a thread
    or accept that pause.
    """

    def __init__(
        self,
        config: AccessConfig,
        *,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._clock = clock
        self._own_http = http is None
        self._client = http
        self._issuers: dict[str, tuple[IssuerConfig, _KeySet]] = {}
        for issuer in config.issuers:
            if (issuer.jwks_file is None) == (issuer.jwks_url is None):
                raise ConfigError(f"issuer {issuer.issuer}: set exactly one of jwks_file, jwks_url")
            try:
                normalize_scopes({ns: () for ns in issuer.group_map.values()})
            except InvalidInput as exc:
                raise ConfigError(f"issuer {issuer.issuer}: group_map: {exc}") from exc
            self._issuers[issuer.issuer] = (issuer, _KeySet(issuer, self._http))

    @property
    def enabled(self) -> bool:
        """Whether any issuer is configured."""
        return bool(self._issuers)

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=_FETCH_TIMEOUT, follow_redirects=False)
        return self._client

    def close(self) -> None:
        if self._own_http and self._client is not None:
            self._client.close()
            self._client = None

    def verify(self, raw: str) -> Identity:
        """The identity a JWT stands for; :class:`Unauthenticated` if it is not acceptable."""
        if not JWT_RE.fullmatch(raw):
            raise Unauthenticated("malformed JWT")
        try:
            header = jwt.get_unverified_header(raw)
            unverified = jwt.decode(raw, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthenticated("malformed JWT") from exc
        iss = unverified.get("iss")
        found = self._issuers.get(iss) if isinstance(iss, str) else None
        if found is None:
            raise Unauthenticated("JWT from an issuer this server does not accept")
        issuer, keys = found
        if header.get("alg") not in issuer.algorithms:
            raise Unauthenticated("JWT signed with an algorithm not allowed for its issuer")
        kid = header.get("kid")
        ttl = self._config.jwks_cache_ttl
        key = keys.find(kid if isinstance(kid, str) else None, ttl, self._clock())
        if key is None:
            raise Unauthenticated("JWT signed with a key its issuer does not publish")
        claims = self._decode(raw, key, issuer)
        return self._identity(claims, issuer)

    @staticmethod
    def _decode(raw: str, key: Any, issuer: IssuerConfig) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                raw,
                key,
                algorithms=list(issuer.algorithms),
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=issuer.leeway,
                options={
                    "require": ["exp", "iss", "sub"],
                    "verify_aud": issuer.audience is not None,
                },
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("JWT has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthenticated("JWT is not valid yet") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated("JWT is meant for another audience") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"JWT lacks the {exc.claim!r} claim") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthenticated("JWT signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid JWT: {type(exc).__name__}") from exc
        return claims

    @staticmethod
    def _identity(claims: dict[str, Any], issuer: IssuerConfig) -> Identity:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("JWT without a subject")
        granted = _mapped(_strings(claims.get(issuer.scope_claim)), issuer.scope_map.items())
        namespaces = {
            issuer.group_map[g]
            for g in _strings(claims.get(issuer.groups_claim))
            if g in issuer.group_map
        }
        return Identity(
            subject=subject[:256],
            kind="jwt",
            scopes=normalize_scopes({ns: granted for ns in namespaces}),
            priority=parse_priority(issuer.default_priority),
            issuer=issuer.issuer,
        )


def _mapped(scopes: list[str], scope_map: Iterable[tuple[str, tuple[str, ...]]]) -> frozenset[str]:
    present = set(scopes)
    return frozenset(s for claim, mapped in scope_map if claim in present for s in mapped)
