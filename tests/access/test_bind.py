"""Safe default: no unauthenticated server beyond loopback unless told --insecure."""

from __future__ import annotations

import pytest

from sciserve.access.bind import check_bind_safety, is_loopback
from sciserve.errors import PermissionDenied


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_is_allowed_without_auth(host: str) -> None:
    assert is_loopback(host)
    check_bind_safety(host, auth_enabled=False, insecure=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.5", "example.org", "10.0.0.1"])
def test_other_hosts_need_auth_or_insecure(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(
        PermissionDenied, match="without authentication; enable auth or pass --insecure"
    ):
        check_bind_safety(host, auth_enabled=False, insecure=False)
    check_bind_safety(host, auth_enabled=True, insecure=False)
    check_bind_safety(host, auth_enabled=False, insecure=True)


def test_message_names_the_host() -> None:
    with pytest.raises(PermissionDenied, match=r"refusing to serve on 0\.0\.0\.0 without"):
        check_bind_safety("0.0.0.0", auth_enabled=False, insecure=False)
