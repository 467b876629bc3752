"""Refuse to expose an unauthenticated server beyond this machine."""

from __future__ import annotations

import ipaddress

from ..errors import PermissionDenied

__all__ = ["check_bind_safety", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        # Other names may resolve anywhere, now or later: not loopback.
        return False


def check_bind_safety(host: str, auth_enabled: bool, insecure: bool) -> None:
    """Raise :class:`PermissionDenied` when serving on ``host`` would be open to the network.

    Allowed: any host with authentication on, a loopback host without it,
    or anything at all when the operator explicitly said ``--insecure``.
    """
    if auth_enabled or insecure or is_loopback(host):
        return
    raise PermissionDenied(
        f"refusing to serve on {host or 'all interfaces'} without authentication; "
        "enable auth or pass --insecure"
    )
