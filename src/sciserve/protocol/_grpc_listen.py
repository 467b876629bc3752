"""Setting up and binding a ``grpc.aio`` server.

Shared by the in-process gRPC server (:mod:`~sciserve.protocol.grpc_server`)
and the front-end processes (:mod:`~sciserve.protocol.grpc_frontend`), so
both enforce the same limits and report a failed bind the same way.
"""

from __future__ import annotations

from typing import Any

import grpc

__all__ = ["listen", "server_options"]


def server_options(max_message_bytes: int, *, reuse_port: bool = False) -> list[tuple[str, Any]]:
    """Channel arguments of a server refusing messages over ``max_message_bytes``.

    gRPC sets ``SO_REUSEPORT`` by default, which would let a second server
    silently share (and steal requests from) a busy port: it is on only when
    asked for, for front ends sharing one port.
    """
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]


def listen(
    server: grpc.aio.Server, host: str, port: int, tls: tuple[bytes, bytes] | None = None
) -> int:
    """Bind ``server`` to ``host:port`` (0: a free port) and return the port bound.

    ``tls`` is a PEM (certificate chain, private key) pair.  Raises
    :class:`OSError` when the address cannot be bound.
    """
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if tls is None:
            bound = server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials([(tls[1], tls[0])])
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpc reports bind failures as RuntimeError
        raise OSError(f"cannot listen for gRPC on {address}: {exc}") from exc
    if bound == 0:  # older grpc versions report failure this way
        raise OSError(f"cannot listen for gRPC on {address}")
    return int(bound)
