"""``sciserve token create|list|revoke``, ``sciserve usage`` and ``sciserve audit``.

These act on the registry database directly (no server), which is how an
operator mints the first admin token::

    sciserve token create --admin --subject ops
"""

from __future__ import annotations

import os
import pwd
import sys
from datetime import datetime
from typing import Annotated

import typer
from rich.table import Column, Table
from rich.text import Text

from ..access.duration import parse_duration
from ..access.tokens import TokenRecord, TokenStore
from ..access.usage import UsageStore, to_csv
from ..config import RateLimit
from ..errors import InvalidInput
from ..registry.db import utcnow
from ._context import state

__all__ = ["register"]

token_app = typer.Typer(help="API tokens for the REST and gRPC endpoints.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add ``token``, ``usage`` and ``audit`` to the ``sciserve`` command line."""
    app.add_typer(token_app, name="token")
    app.command("usage")(usage)
    app.command("audit")(audit)


def _actor() -> str:
    # Who ran the command, for the audit trail (from the OS, not the environment).
    try:
        return f"local:{pwd.getpwuid(os.getuid()).pw_name}"
    except KeyError:
        return f"local:uid={os.getuid()}"


def _parse_scopes(values: list[str]) -> dict[str, set[str]]:
    scopes: dict[str, set[str]] = {}
    for value in values:
        namespace, sep, names = value.partition(":")
        granted = {n.strip() for n in names.split(",") if n.strip()}
        if not sep or not namespace or not granted:
            raise InvalidInput(
                f"--scope {value!r}: expected NAMESPACE:SCOPE[,SCOPE] (NAMESPACE may be *)"
            )
        scopes.setdefault(namespace.strip(), set()).update(granted)
    return scopes


def _when(value: str | None) -> str:
    return value[:16].replace("T", " ") if value else "-"


def _day(value: str | None) -> str:
    return value[:10] if value else "-"


def _scopes_text(record: TokenRecord) -> str:
    return "; ".join(f"{ns}:{','.join(sorted(s))}" for ns, s in sorted(record.scopes.items()))


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    subject: Annotated[str, typer.Option(help="The user or service the token belongs to.")],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            help="NAMESPACE:SCOPE[,SCOPE] with scopes read, infer, publish, admin; "
            "NAMESPACE may be *. Repeatable."
        ),
    ] = None,
    admin: Annotated[bool, typer.Option(help="Allow everything, everywhere.")] = False,
    priority: Annotated[str, typer.Option(help="realtime, interactive or batch.")] = "interactive",
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime, e.g. 12h, 30d (default: no expiry).")
    ] = None,
    label: Annotated[str | None, typer.Option(help="A note: what the token is for.")] = None,
    rate: Annotated[
        float | None, typer.Option(help="Requests per second (default: server's).")
    ] = None,
    burst: Annotated[int | None, typer.Option(help="Requests at once above --rate.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight at most.")] = None,
) -> None:
    """Mint a token.  It is printed once: store it, it cannot be shown again."""
    st = state(ctx)
    limit = None
    if rate is not None or burst is not None or concurrency is not None:
        try:
            limit = RateLimit(
                rate=rate, burst=burst or max(1, int(rate or 1)), concurrency=concurrency
            )
        except ValueError as exc:
            raise InvalidInput(f"invalid limits: {exc}") from exc
    with st.local_registry() as reg:
        record, raw = TokenStore(reg).create(
            subject,
            _parse_scopes(scope or []),
            priority=priority,
            expires_in=parse_duration(expires_in) if expires_in else None,
            label=label,
            admin=admin,
            limit=limit,
            actor=_actor(),
        )

    def human() -> None:
        st.err.print("token created; it is shown only this once, store it now:")
        sys.stdout.write(raw + "\n")
        expires = _when(record.to_dict()["expires_at"])
        st.err.print(
            f"id {record.token_id}, subject {record.subject}, scopes {_scopes_text(record)}, "
            f"priority {record.priority.name.lower()}, expires {expires}",
            markup=False,
        )

    st.emit({**record.to_dict(), "token": raw}, human)


@token_app.command("list")
def token_list(ctx: typer.Context) -> None:
    """List tokens (ids and metadata; secrets are never stored, so never shown)."""
    st = state(ctx)
    with st.local_registry(create=False) as reg:
        records = TokenStore(reg).list()

    def human() -> None:
        if not records:
            st.console.print("no tokens yet: create one with 'sciserve token create'")
            return
        table = Table(
            Column("id", no_wrap=True),
            *("subject", "label", "scopes", "priority", "expires", "state", "last used"),
        )
        for r in records:
            d = r.to_dict()
            # Text, not markup: subjects and labels are free-form.
            table.add_row(
                r.token_id,
                Text(r.subject),
                Text(r.label or ""),
                _scopes_text(r),
                d["priority"],
                _day(d["expires_at"]),
                d["state"],
                _day(d["last_used_at"]),
            )
        st.console.print(table)

    st.emit([r.to_dict() for r in records], human)


@token_app.command("revoke")
def token_revoke(
    ctx: typer.Context, token_id: Annotated[str, typer.Argument(help="The token's id.")]
) -> None:
    """Revoke a token for good."""
    st = state(ctx)
    with st.local_registry() as reg:
        record = TokenStore(reg).revoke(token_id, actor=_actor())
    st.emit(
        record.to_dict(), lambda: st.console.print(f"revoked {record.token_id} ({record.subject})")
    )


def usage(
    ctx: typer.Context,
    csv: Annotated[bool, typer.Option("--csv", help="CSV on stdout, for spreadsheets.")] = False,
    since: Annotated[
        str | None,
        typer.Option(help="Only the last DURATION, e.g. 24h or 30d (hourly resolution)."),
    ] = None,
    namespace: Annotated[str | None, typer.Option(help="Only this namespace.")] = None,
) -> None:
    """Requests, rows and compute seconds per namespace, caller and model."""
    st = state(ctx)
    start: datetime | None = utcnow() - parse_duration(since) if since else None
    with st.local_registry(create=False) as reg:
        rows = UsageStore(reg).report(start, namespace=namespace)
    if csv:
        sys.stdout.write(to_csv(rows))
        return

    def human() -> None:
        if not rows:
            st.console.print("no usage recorded")
            return
        table = Table("namespace", "caller", "subject", "model", "requests", "rows", "compute s")
        for r in rows:
            table.add_row(
                r["namespace"],
                Text(r["principal"]),
                Text(r["subject"]),
                r["model"],
                str(r["requests"]),
                str(r["rows"]),
                f"{r['compute_seconds']:.3f}",
            )
        st.console.print(table)

    st.emit(rows, human)


def audit(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="How many events, newest first.")] = 50,
) -> None:
    """The audit trail: publishing, trust, tokens and denied requests."""
    st = state(ctx)
    with st.local_registry(create=False) as reg:
        events = reg.events(limit)

    def human() -> None:
        table = Table("at", "action", "subject", "actor", "detail")
        for e in events:
            items = sorted((e["detail"] or {}).items())
            detail = ", ".join(f"{k}={v}" for k, v in items if v is not None)
            table.add_row(
                _when(e["at"]),
                e["action"],
                Text(e["subject"]),
                Text(e["actor"] or ""),
                Text(detail),
            )
        st.console.print(table)

    st.emit(events, human)
