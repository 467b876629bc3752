"""``sciserve token create|list|revoke``, ``sciserve usage`` and ``sciserve audit``.

These act on the registry database directly (no server), which is how an
operator mints the first admin token::

    sciserve token create --admin --subject ops

With ``--server`` (or ``SCISERVE_URL``) and an admin token in
``SCISERVE_TOKEN``, ``token`` and ``audit`` act on a server's registry.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.text import Text

from ..access.duration import parse_duration
from ..access.tokens import TokenStore
from ..access.usage import UsageStore, to_csv
from ..config import RateLimit
from ..errors import InvalidInput
from ..registry.db import utcnow
from ..registry.remote import RemoteRegistry
from ._context import folding_table, local_actor, state

__all__ = ["register"]

token_app = typer.Typer(help="API tokens for the REST and gRPC endpoints.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add ``token``, ``usage`` and ``audit`` to the ``sciserve`` command line."""
    app.add_typer(token_app, name="token")
    app.command("usage")(usage)
    app.command("audit")(audit)


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


def _scopes_text(token: dict[str, Any]) -> str:
    # One grant per line, so a table cell wraps between grants, not inside one.
    return "\n".join(f"{ns}:{','.join(s)}" for ns, s in sorted(token["scopes"].items()))


def _token_state(token: dict[str, Any]) -> str:
    lines = [token["state"]]
    if token["expires_at"]:
        lines.append(f"until {_day(token['expires_at'])}")
    if token["last_used_at"]:
        lines.append(f"used {_day(token['last_used_at'])}")
    return "\n".join(lines)


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
    scopes = _parse_scopes(scope or [])
    lifetime = parse_duration(expires_in) if expires_in else None
    with st.registry() as reg:
        if isinstance(reg, RemoteRegistry):
            created = reg.create_token(
                subject,
                scopes,
                priority=priority,
                expires_in=lifetime.total_seconds() if lifetime is not None else None,
                label=label,
                admin=admin,
                limit=limit.model_dump() if limit is not None else None,
            )
        else:
            record, raw = TokenStore(reg).create(
                subject,
                scopes,
                priority=priority,
                expires_in=lifetime,
                label=label,
                admin=admin,
                limit=limit,
                actor=local_actor(),
            )
            created = {**record.to_dict(), "token": raw}

    def human() -> None:
        st.err.print("token created; it is shown only this once, store it now:")
        sys.stdout.write(created["token"] + "\n")
        scopes_line = _scopes_text(created).replace("\n", "; ")
        st.err.print(
            f"id {created['token_id']}, subject {created['subject']}, scopes {scopes_line}, "
            f"priority {created['priority']}, expires {_when(created['expires_at'])}",
            markup=False,
        )

    st.emit(created, human)


@token_app.command("list")
def token_list(ctx: typer.Context) -> None:
    """List tokens (ids and metadata; secrets are never stored, so never shown)."""
    st = state(ctx)
    with st.registry(create=False) as reg:
        if isinstance(reg, RemoteRegistry):
            tokens = reg.tokens()
        else:
            tokens = [r.to_dict() for r in TokenStore(reg).list()]

    def human() -> None:
        if not tokens:
            st.console.print("no tokens yet: create one with 'sciserve token create'")
            return
        rows = []
        for d in tokens:
            # Text, not markup: subjects and labels are free-form.
            who = Text(d["subject"])
            if d["label"]:
                who.append("\n" + d["label"], style="dim")
            rows.append((d["token_id"], who, Text(_scopes_text(d)), d["priority"], _token_state(d)))
        headers = ("id", "subject / label", "scopes", "priority", "state")
        fixed = ("id", "priority", "state")
        st.console.print(folding_table(headers, rows, width=st.console.width, fixed=fixed))

    st.emit(tokens, human)


@token_app.command("revoke")
def token_revoke(
    ctx: typer.Context, token_id: Annotated[str, typer.Argument(help="The token's id.")]
) -> None:
    """Revoke a token for good."""
    st = state(ctx)
    with st.registry() as reg:
        if isinstance(reg, RemoteRegistry):
            revoked = reg.revoke_token(token_id)
        else:
            revoked = TokenStore(reg).revoke(token_id, actor=local_actor()).to_dict()
    st.emit(
        revoked,
        lambda: st.console.print(
            f"revoked {revoked['token_id']} ({revoked['subject']})", markup=False
        ),
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
        cells = [
            (
                r["namespace"],
                Text(r["principal"]),
                Text(r["subject"]),
                r["model"],
                str(r["requests"]),
                str(r["rows"]),
                f"{r['compute_seconds']:.3f}",
            )
            for r in rows
        ]
        headers = ("namespace", "caller", "subject", "model", "requests", "rows", "compute s")
        fixed = ("caller", "requests", "rows", "compute s")
        table = folding_table(headers, cells, width=st.console.width, fixed=fixed)
        st.console.print(table)

    st.emit(rows, human)


def audit(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="How many events, newest first.")] = 50,
) -> None:
    """The audit trail: publishing, trust, tokens and denied requests."""
    st = state(ctx)
    with st.registry(create=False) as reg:
        events = reg.events(limit)

    def human() -> None:
        rows = []
        for e in events:
            items = sorted((e["detail"] or {}).items())
            detail = ", ".join(f"{k}={v}" for k, v in items if v is not None)
            rows.append(
                (
                    _when(e["at"]),
                    e["action"],
                    Text(e["subject"]),
                    Text(e["actor"] or ""),
                    Text(detail),
                )
            )
        table = folding_table(
            ("at", "action", "subject", "actor", "detail"),
            rows,
            width=st.console.width,
            fixed=("at", "action"),
        )
        st.console.print(table)

    st.emit(events, human)
