"""From an ``Authorization`` header to an :class:`~.identity.Identity`."""

from __future__ import annotations

from ..config import AccessConfig
from ..errors import Unauthenticated
from .federated import JWT_RE, JwtVerifier
from .identity import Identity
from .tokens import TOKEN_PREFIX, TokenStore

__all__ = ["MAX_AUTHORIZATION", "Authenticator"]

#: Longer headers are refused before any parsing (real JWTs stay far below).
MAX_AUTHORIZATION = 8192


class Authenticator:
    """Tells API tokens (``ssv_…``) from JWTs and verifies either.

    With authentication disabled, a request without credentials is the
    anonymous identity (allowed everything); credentials that are sent are
    still verified, so a client can use its token's priority class.
    """

    def __init__(
        self,
        tokens: TokenStore | None,
        jwts: JwtVerifier | None,
        config: AccessConfig,
    ) -> None:
        self._tokens = tokens
        self._jwts = jwts
        self._config = config

    def authenticate(self, authorization: str | None) -> Identity:
        """The identity behind an ``Authorization`` header value (``None`` if absent).

        Raises :class:`Unauthenticated`; its message never repeats the header.
        """
        if authorization is None or not authorization.strip():
            if not self._config.enabled:
                return Identity.anonymous()
            raise Unauthenticated("authentication required: send 'Authorization: Bearer <token>'")
        return self.verify(_bearer(authorization))

    def verify(self, credential: str) -> Identity:
        """The identity behind a bare token string (API token or JWT)."""
        if credential.startswith(TOKEN_PREFIX):
            if self._tokens is None:
                raise Unauthenticated("API tokens are not accepted by this server")
            return self._tokens.verify(credential)
        if JWT_RE.fullmatch(credential):
            if self._jwts is None or not self._jwts.enabled:
                raise Unauthenticated(
                    "JWTs are not accepted by this server (no issuers configured)"
                )
            return self._jwts.verify(credential)
        raise Unauthenticated("malformed bearer token")


def _bearer(header: str) -> str:
    if len(header) > MAX_AUTHORIZATION or not header.isascii() or not header.isprintable():
        raise Unauthenticated("malformed Authorization header")
    scheme, _, credential = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated("unsupported authorization scheme; use 'Bearer <token>'")
    credential = credential.strip()
    if not credential or " " in credential:
        raise Unauthenticated("malformed Authorization header: expected 'Bearer <token>'")
    return credential
