"""The Open Inference Protocol (KServe v2), as spoken by NVIDIA Triton.

This package is the transport adapter: it turns wire messages into the
transport-free requests and responses of :mod:`sciserve.serving.types` and
back, and maps the domain errors of :mod:`sciserve.errors` to status codes.

* :mod:`~sciserve.protocol.rest_codec`: HTTP bodies, including Triton's
  binary tensor data extension.
* :mod:`~sciserve.protocol.rest`: the HTTP application (inference, health,
  metadata, the registry and admin API).
* :mod:`~sciserve.protocol.grpc_codec`: the gRPC messages (imported on its
  own, since it needs ``tritonclient``'s compiled protobuf module).
* :mod:`~sciserve.protocol.client`: the client side: one table that maps
  status codes back to domain errors, and a small inference client.

Codecs raise :class:`~sciserve.errors.InvalidInput` for anything a client
got wrong; servers map it to their transport's status code.
"""
