"""Tables of the access layer, on the registry's shared metadata.

Created by migration ``0002``.  Token secrets are never stored: only an
HMAC of them under a server-side pepper.
"""

from __future__ import annotations

import sqlalchemy as sa

from ..registry.db import metadata

__all__ = ["tokens", "usage"]

_ts = sa.DateTime(timezone=True)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("token_id", sa.String(32), primary_key=True),
    #: hex HMAC-SHA256(pepper, secret)
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("subject", sa.String(128), nullable=False),
    sa.Column("label", sa.String(128)),
    #: JSON: {"namespace or *": ["read", "infer", ...]}
    sa.Column("scopes", sa.Text, nullable=False),
    sa.Column("priority", sa.String(16), nullable=False),
    #: JSON RateLimit overriding the configured default (NULL: the default).
    sa.Column("rate_limit", sa.Text),
    sa.Column("created_at", _ts, nullable=False),
    sa.Column("created_by", sa.String(128)),
    sa.Column("expires_at", _ts),
    sa.Column("revoked_at", _ts),
    sa.Column("last_used_at", _ts),
)

usage = sa.Table(
    "usage",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    #: Start of the hour the counters belong to (UTC).
    sa.Column("period_start", _ts, nullable=False),
    sa.Column("namespace", sa.String(64), nullable=False),
    #: token id, or subject@issuer for federated identities.
    sa.Column("principal", sa.String(384), nullable=False),
    sa.Column("subject", sa.String(256), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("compute_seconds", sa.Float, nullable=False),
    sa.UniqueConstraint(
        "period_start", "namespace", "principal", "model", name="uq_usage_period_start"
    ),
)
