"""API tokens: minted once as ``ssv_<token_id>_<secret>``, stored only as an HMAC.

The token id (12 letters and digits) is public: it names the token in
listings, usage reports and the audit trail.  The secret (32 random bytes,
base64url) is shown once at creation and never stored; the database keeps
``HMAC-SHA256(pepper, secret)`` (see :mod:`.pepper`).

Verification reads token records through a small in-memory cache, so a
request costs one HMAC, not a database query.  Consequently a revocation is
immediate in the process that made it and takes effect in other processes
sharing the database within ``access.token_cache_ttl`` seconds (default 2).
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import re
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..config import AccessConfig, RateLimit
from ..errors import ConfigError, InvalidInput, NotFound, ReadOnlyRegistry, Unauthenticated
from ..registry import db as registry_db
from ..registry.registry import Registry
from . import tables
from ._db import Database, aware, engine_of, reading, writing
from .audit import record_event
from .identity import ANY_NAMESPACE, Identity, normalize_scopes
from .pepper import load_pepper, pepper_path
from .priority import Priority, parse_priority

__all__ = ["TOKEN_PREFIX", "TokenRecord", "TokenStore"]

log = logging.getLogger(__name__)

TOKEN_PREFIX = "ssv_"  # noqa: S105 - a public prefix, not a secret
_ID_ALPHABET = string.ascii_letters + string.digits
_ID_LENGTH = 12
_SECRET_BYTES = 32
# Exactly the shape create() mints; anything else is rejected before any lookup.
_TOKEN_RE = re.compile(r"ssv_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{43})")
_MAX_SUBJECT = 128
# Bounds the verification cache, which random token ids could otherwise grow.
_MAX_CACHED = 10_000


@dataclass(frozen=True)
class TokenRecord:
    """What the registry knows about a token.  Holds no secret."""

    token_id: str
    subject: str
    scopes: Mapping[str, frozenset[str]]
    priority: Priority
    created_at: datetime
    label: str | None = None
    created_by: str | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    limit: RateLimit | None = None
    #: HMAC of the secret; kept out of repr and comparisons.
    secret_hash: str = field(default="", repr=False, compare=False)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes.get(ANY_NAMESPACE, ())

    def state(self, now: datetime | None = None) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or registry_db.utcnow()):
            return "expired"
        return "active"

    def identity(self) -> Identity:
        return Identity(
            subject=self.subject,
            kind="token",
            token_id=self.token_id,
            scopes=self.scopes,
            priority=self.priority,
            limit=self.limit,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (no secret, no hash)."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "token_id": self.token_id,
            "subject": self.subject,
            "label": self.label,
            "scopes": {ns: sorted(s) for ns, s in sorted(self.scopes.items())},
            "admin": self.is_admin,
            "priority": self.priority.name.lower(),
            "state": self.state(),
            "created_at": iso(self.created_at),
            "created_by": self.created_by,
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
            "last_used_at": iso(self.last_used_at),
            "limit": self.limit.model_dump() if self.limit is not None else None,
        }


def _record(row: Any) -> TokenRecord:
    limit = None if row.rate_limit is None else RateLimit.model_validate_json(row.rate_limit)
    return TokenRecord(
        token_id=row.token_id,
        subject=row.subject,
        scopes={ns: frozenset(s) for ns, s in json.loads(row.scopes).items()},
        priority=parse_priority(row.priority),
        created_at=aware(row.created_at),
        label=row.label,
        created_by=row.created_by,
        expires_at=aware(row.expires_at),
        revoked_at=aware(row.revoked_at),
        last_used_at=aware(row.last_used_at),
        limit=limit,
        secret_hash=row.secret_hash,
    )


class TokenStore:
    """Mint, list, revoke and verify API tokens kept in the registry database.

    ``db`` is a :class:`~sciserve.registry.registry.Registry` or an engine on
    a migrated registry database.  The pepper comes from ``pepper``, else
    ``config.token_pepper_file``, else the registry's ``<home>/token-pepper``.
    """

    def __init__(
        self,
        db: Database,
        config: AccessConfig | None = None,
        *,
        pepper: bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine_of(db)
        settings = db.settings if isinstance(db, Registry) else None
        self._config = config or (settings.access if settings is not None else AccessConfig())
        self._pepper_value = pepper
        self._pepper_file: Path | None
        if self._config.token_pepper_file is not None:
            self._pepper_file = self._config.token_pepper_file
        elif settings is not None:
            self._pepper_file = pepper_path(settings)
        else:
            self._pepper_file = None
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, TokenRecord | None]] = {}

    # -- secrets ---------------------------------------------------------

    @functools.cached_property
    def _pepper(self) -> bytes:
        # Loaded on first use: listing or revoking tokens does not need it.
        if self._pepper_value is not None:
            return self._pepper_value
        if self._pepper_file is None:
            raise ConfigError(
                "a TokenStore on a bare engine needs access.token_pepper_file or pepper="
            )
        return load_pepper(self._pepper_file)

    def _hash(self, secret: str) -> str:
        return hmac.new(self._pepper, secret.encode("ascii"), hashlib.sha256).hexdigest()

    # -- administration ----------------------------------------------------

    def create(
        self,
        subject: str,
        scopes: Mapping[str, Iterable[str]],
        *,
        priority: str | Priority = Priority.INTERACTIVE,
        expires_in: timedelta | float | None = None,
        label: str | None = None,
        admin: bool = False,
        limit: RateLimit | None = None,
        actor: str | None = None,
    ) -> tuple[TokenRecord, str]:
        """Mint a token; returns its record and the token string, which is never shown again.

        ``scopes`` maps a namespace (or ``*``) to scopes there; ``admin`` adds
        ``admin`` on ``*``.  ``expires_in`` is a timedelta or seconds.
        """
        subject = subject.strip()
        if not subject or len(subject) > _MAX_SUBJECT or not subject.isprintable():
            raise InvalidInput(f"a token subject is 1 to {_MAX_SUBJECT} printable characters")
        granted = normalize_scopes(scopes)
        if admin:
            granted[ANY_NAMESPACE] = granted.get(ANY_NAMESPACE, frozenset()) | {"admin"}
        if not granted:
            raise InvalidInput("a token needs at least one scope (NAMESPACE:SCOPE) or admin")
        if label is not None and len(label) > 128:
            raise InvalidInput("a token label is at most 128 characters")
        now = registry_db.utcnow()
        expires_at = None
        if expires_in is not None:
            delta = expires_in if isinstance(expires_in, timedelta) else timedelta(0, expires_in)
            if delta <= timedelta(0):
                raise InvalidInput("a token's lifetime must be positive")
            expires_at = now + delta
        record = TokenRecord(
            token_id="".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH)),
            subject=subject,
            scopes=granted,
            priority=parse_priority(priority),
            created_at=now,
            label=label,
            created_by=actor,
            expires_at=expires_at,
            limit=limit,
        )
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        with writing(self._engine) as conn:
            conn.execute(
                sa.insert(tables.tokens).values(
                    token_id=record.token_id,
                    secret_hash=self._hash(secret),
                    subject=subject,
                    label=label,
                    scopes=json.dumps({ns: sorted(s) for ns, s in sorted(granted.items())}),
                    priority=record.priority.name.lower(),
                    rate_limit=limit.model_dump_json() if limit is not None else None,
                    created_at=now,
                    created_by=actor,
                    expires_at=expires_at,
                )
            )
            detail = record.to_dict()
            record_event(
                conn,
                "token.create",
                record.token_id,
                actor,
                {k: detail[k] for k in ("subject", "label", "scopes", "priority", "expires_at")},
            )
        self._forget(record.token_id)
        return record, f"{TOKEN_PREFIX}{record.token_id}_{secret}"

    def get(self, token_id: str) -> TokenRecord:
        """The record of one token (revoked and expired ones included)."""
        record = self._fetch(token_id)
        if record is None:
            raise NotFound(f"no token {token_id!r}")
        return record

    def revoke(self, token_id: str, actor: str | None = None) -> TokenRecord:
        """Revoke a token for good (a no-op when it already is)."""
        with writing(self._engine) as conn:
            row = conn.execute(
                sa.select(tables.tokens).where(tables.tokens.c.token_id == token_id)
            ).first()
            if row is None:
                raise NotFound(f"no token {token_id!r}")
            if row.revoked_at is None:
                conn.execute(
                    sa.update(tables.tokens)
                    .where(tables.tokens.c.token_id == token_id)
                    .values(revoked_at=registry_db.utcnow())
                )
                record_event(conn, "token.revoke", token_id, actor, {"subject": row.subject})
        self._forget(token_id)
        return self.get(token_id)

    # -- verification ------------------------------------------------------

    def verify(self, raw: str) -> Identity:
        """The identity a token string stands for.

        Raises :class:`Unauthenticated` for anything but a known, unexpired,
        unrevoked token with the right secret; the message never repeats the input.
        """
        match = _TOKEN_RE.fullmatch(raw)
        if match is None:
            raise Unauthenticated("malformed API token")
        token_id, secret = match.groups()
        record = self._lookup(token_id)
        if record is None or not hmac.compare_digest(record.secret_hash, self._hash(secret)):
            raise Unauthenticated("invalid API token")
        now = registry_db.utcnow()
        state = record.state(now)
        if state != "active":
            raise Unauthenticated(f"this API token is {state}")
        self._touch(record, now)
        return record.identity()

    def _fetch(self, token_id: str) -> TokenRecord | None:
        with reading(self._engine) as conn:
            row = conn.execute(
                sa.select(tables.tokens).where(tables.tokens.c.token_id == token_id)
            ).first()
        return None if row is None else _record(row)

    def _lookup(self, token_id: str) -> TokenRecord | None:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(token_id)
        if hit is not None and now - hit[0] < self._config.token_cache_ttl:
            return hit[1]
        # Unknown ids are cached too, so guessing is no cheaper for the database.
        record = self._fetch(token_id)
        with self._lock:
            if len(self._cache) >= _MAX_CACHED:
                ttl = self._config.token_cache_ttl
                self._cache = {k: v for k, v in self._cache.items() if now - v[0] < ttl}
                if len(self._cache) >= _MAX_CACHED:
                    self._cache.clear()
            self._cache[token_id] = (now, record)
        return record

    def _forget(self, token_id: str) -> None:
        with self._lock:
            self._cache.pop(token_id, None)

    def _touch(self, record: TokenRecord, now: datetime) -> None:
        """Record use, at most once per ``last_used_interval``: not a write per request."""
        last = record.last_used_at
        if last is not None and (now - last).total_seconds() < self._config.last_used_interval:
            return
        with self._lock:
            hit = self._cache.get(record.token_id)
            if hit is not None:
                self._cache[record.token_id] = (
                    hit[0],
                    dataclasses.replace(record, last_used_at=now),
                )
        try:
            with writing(self._engine) as conn:
                conn.execute(
                    sa.update(tables.tokens)
                    .where(tables.tokens.c.token_id == record.token_id)
                    .values(last_used_at=now)
                )
        except (sa.exc.SQLAlchemyError, ReadOnlyRegistry) as exc:
            # Bookkeeping only: a busy or read-only database must not fail requests.
            log.warning("could not record use of token %s: %s", record.token_id, exc)

    def list(self) -> builtins.list[TokenRecord]:
        """Every token, oldest first (revoked and expired ones included)."""
        with reading(self._engine) as conn:
            rows = conn.execute(
                sa.select(tables.tokens).order_by(
                    tables.tokens.c.created_at, tables.tokens.c.token_id
                )
            ).all()
        return [_record(r) for r in rows]
