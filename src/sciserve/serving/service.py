"""The core request path every adapter calls.

    adapter (REST · gRPC · stream step · batch task)
      → access   (the access issue adds identities, scopes and quotas here)
      → models   (:class:`ModelManager`: name / version / alias → loaded version)
      → batcher  (:class:`DynamicBatcher`: priority queues, batching, backpressure)
      → runtime  (load / infer / unload)

Adapters decode their wire format into :mod:`sciserve.serving.types`, call
:class:`InferenceService`, and translate the domain errors it raises into
their own status codes, each in one table.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._version import __version__
from ..access.identity import Identity, Scope
from ..access.layer import AccessLayer
from ..access.policy import authorize
from ..access.priority import Priority, parse_priority
from ..config import MonitoringConfig, ServingConfig
from ..errors import InvalidInput, NotFound, SciserveError, Unavailable
from ..monitoring.monitor import Monitor
from ..monitoring.reference import Reference, ReferenceStore
from ..package.manifest import Manifest, TensorSpec
from ..registry.registry import Registry
from .manager import LoadedModel, ModelManager
from .metrics import ServerMetrics
from .types import InferenceRequest, InferenceResponse, InferOutput

__all__ = ["EXTENSIONS", "InferenceService", "max_input_elements"]

#: The caller when authentication is off (loopback only, or ``--insecure``).
ANONYMOUS = Identity.anonymous()

#: Protocol extensions this server implements (reported by ``GET /v2``).
EXTENSIONS = ("binary_tensor_data", "statistics", "model_repository", "schedule_policy")

_TRITON_TYPES = {
    "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32", "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16", "BF16": "TYPE_BF16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}  # fmt: skip


class InferenceService:
    """Everything a server does, independent of HTTP and gRPC."""

    def __init__(
        self,
        registry: Registry,
        config: ServingConfig | None = None,
        *,
        access: AccessLayer | None = None,
        monitoring: MonitoringConfig | None = None,
    ) -> None:
        self.registry = registry
        self.config = config or ServingConfig()
        self.access = access if access is not None and access.config.enabled else None
        self.metrics = ServerMetrics()
        self.manager = ModelManager(registry, self.config, self.metrics)
        #: Drift monitoring of the traffic, when ``monitoring`` enables it.
        self.monitor: Monitor | None = None
        if monitoring is not None and monitoring.enabled:
            from ..access._db import engine_of

            self.monitor = Monitor(
                monitoring,
                self.metrics.registry,
                references=ReferenceStore(engine_of(registry)),
            )
        self._live = False
        self._usage_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.monitor is not None:
            # Folded on this loop: a thread of its own would cost the loop more in GIL hand-overs.
            self.monitor.start_on(asyncio.get_running_loop())
        await self.manager.start()
        if self.access is not None:
            self._usage_task = asyncio.get_running_loop().create_task(self.access.usage.run())
        self._live = True

    async def stop(self) -> None:
        self._live = False
        if self._usage_task is not None:
            self._usage_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._usage_task
        await self.manager.stop()
        if self.monitor is not None:
            await asyncio.to_thread(self.monitor.stop)

    # -- access ----------------------------------------------------------

    async def identify(self, authorization: str | None) -> Identity:
        """The caller behind an ``Authorization`` header value (anonymous when auth is off).

        Raises :class:`~sciserve.errors.Unauthenticated` for missing, malformed,
        unknown, expired or revoked credentials.
        """
        if self.access is None:
            return ANONYMOUS
        authenticate = self.access.authenticator.authenticate
        if authorization is not None and authorization.count(".") == 2:
            # A JWT may need the issuer's keys fetched: keep the loop free.
            identity: Identity = await asyncio.to_thread(authenticate, authorization)
            return identity
        return authenticate(authorization)

    async def record_denial(self, action: str, reason: str, authorization: str | None) -> None:
        """Audit a denied request (``action`` as the adapter names it).

        Who was denied is not always known: the caller is named only when
        its credentials were good and the denial came later.
        """
        if self.access is None:
            return
        identity = None
        if reason != "unauthenticated":
            with contextlib.suppress(SciserveError):  # e.g. revoked meanwhile
                identity = await self.identify(authorization)
        await asyncio.to_thread(self.access.denied.record, action, reason, identity)

    def authorize_model(
        self,
        identity: Identity,
        action: Scope,
        served: str,
        found: tuple[str, str] | None = None,
    ) -> str:
        """Check ``action`` on a served model and return its namespace.

        The model is the one the manager serves under that name (or
        ``found``, the ``(namespace, name)`` a caller looked up), and access
        is decided on the namespace it is stored in.  A model the caller
        may not see is reported exactly like a missing one.
        """
        if found is None:
            found = self.manager.identify(served)
        if found is None:
            raise NotFound(f"unknown model {served!r}")
        namespace, name = found
        if identity.kind == "anonymous":
            return namespace
        try:
            authorize(identity, action, namespace, name)
        except NotFound:
            raise NotFound(f"unknown model {served!r}") from None
        return namespace

    def visible_to(self, identity: Identity, served: str) -> bool:
        found = self.manager.identify(served)
        return found is not None and identity.can_see(found[0])

    # -- health and metadata ---------------------------------------------

    def live(self) -> bool:
        return self._live

    def ready(self) -> bool:
        return self._live and self.manager.ready()

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "sciserve", "version": __version__, "extensions": list(EXTENSIONS)}

    async def model_ready(
        self, name: str, version: str | None = None, identity: Identity = ANONYMOUS
    ) -> bool:
        self.authorize_model(identity, "read", name)
        return (await self.manager.get(name, version)).lifecycle.ready

    async def model_state(
        self, name: str, version: str | None = None, identity: Identity = ANONYMOUS
    ) -> tuple[bool, str]:
        """Whether the model is ready, and if not, why."""
        self.authorize_model(identity, "read", name)
        model = await self.manager.get(name, version)
        return model.lifecycle.ready, model.lifecycle.reason or model.state.value.lower()

    async def model_metadata(
        self, name: str, version: str | None = None, identity: Identity = ANONYMOUS
    ) -> dict[str, Any]:
        self.authorize_model(identity, "read", name)
        model = await self.manager.get(name, version)
        manifest = model.info.manifest
        return {
            "name": name,
            "versions": [m.version for m in self.manager.loaded_versions(name)],
            "platform": _platform(manifest),
            "inputs": [_tensor_metadata(manifest, t) for t in manifest.inputs],
            "outputs": [_tensor_metadata(manifest, t) for t in manifest.outputs],
        }

    async def model_config(
        self, name: str, version: str | None = None, identity: Identity = ANONYMOUS
    ) -> dict[str, Any]:
        self.authorize_model(identity, "read", name)
        model = await self.manager.get(name, version)
        manifest = model.info.manifest
        batching = manifest.max_batch_size > 0
        config: dict[str, Any] = {
            "name": name,
            "platform": _platform(manifest),
            "backend": manifest.runtime,
            "max_batch_size": manifest.max_batch_size,
            "input": [_tensor_config(manifest, t) for t in manifest.inputs],
            "output": [_tensor_config(manifest, t) for t in manifest.outputs],
            "instance_group": [
                {
                    "count": self.config.instances,
                    "kind": "KIND_GPU" if manifest.device.startswith("cuda") else "KIND_CPU",
                }
            ],
            "version_policy": {"specific": {"versions": [model.version]}},
            "parameters": {"sciserve_digest": {"string_value": model.info.digest}},
            "sciserve": {
                "ref": model.info.ref,
                "digest": model.info.digest,
                "license": manifest.license,
                "files": [
                    {"path": f.path, "sha256": f.sha256, "size": f.size} for f in manifest.files
                ],
            },
        }
        if batching:
            config["dynamic_batching"] = {
                "preferred_batch_size": [
                    int(x) for x in manifest.runtime_options.get("preferred_batch_sizes", ())
                ],
                "max_queue_delay_microseconds": int(self.config.max_queue_delay * 1e6),
            }
        return config

    async def statistics(
        self,
        name: str | None = None,
        version: str | None = None,
        identity: Identity = ANONYMOUS,
    ) -> dict[str, Any]:
        if name is not None:
            self.authorize_model(identity, "read", name)
        if name is None:
            models = [
                m
                for n in self.manager.served_names()
                if self.visible_to(identity, n)
                for m in self.manager.loaded_versions(n)
            ]
        elif version:
            models = [await self.manager.get(name, version)]
        else:
            models = self.manager.loaded_versions(name)
        return {
            "model_stats": [
                {**m.stats.as_dict(), "state": m.state.value, "reason": m.lifecycle.reason}
                for m in models
            ]
        }

    async def monitoring_status(self, identity: Identity = ANONYMOUS) -> dict[str, Any]:
        """The drift judgement of every monitored version the caller may see."""
        if self.monitor is None:
            return {"enabled": False, "models": []}
        visible = {
            (m.served, m.version)
            for n in self.manager.served_names()
            if self.visible_to(identity, n)
            for m in self.manager.loaded_versions(n)
        }
        return {"enabled": True, "models": self.monitor.status(visible)}

    async def freeze_reference(self, name: str, identity: Identity = ANONYMOUS) -> dict[str, Any]:
        """Store the recorded window of traffic of served model ``name``'s
        default version as its drift reference (needs the ``admin`` scope)."""
        self.authorize_model(identity, "admin", name)
        if self.monitor is None or self.monitor.references is None:
            raise Unavailable("monitoring is off on this server ([monitoring] enabled = false)")
        model = await self.manager.get(name)
        monitor, store = self.monitor, self.monitor.references

        def freeze() -> Reference:
            # Off the loop, which folds what is queued: every request answered
            # before this one is in the window frozen (not just those folded at
            # the last interval).
            monitor.flush()
            reference = monitor.freeze(model.served, model.version)
            store.save(model.served, model.version, model.info.digest, reference)
            monitor.set_reference(model.served, model.version, reference)
            return reference

        reference = await asyncio.to_thread(freeze)
        return {
            "model": model.served,
            "version": model.version,
            "source": reference.source.value,
            "rows": reference.stats.rows,
        }

    async def repository_index(
        self, ready_only: bool = False, identity: Identity = ANONYMOUS
    ) -> list[dict[str, str]]:
        rows = [r for r in self.manager.index() if self.visible_to(identity, r["name"])]
        return [r for r in rows if r["state"] == "READY"] if ready_only else rows

    async def load_model(self, name: str, identity: Identity = ANONYMOUS) -> None:
        # The model may not be served yet: look it up in the registry too.
        self.authorize_model(identity, "admin", name, await self.manager.locate(name))
        await self.manager.load_model(name)

    async def unload_model(self, name: str, identity: Identity = ANONYMOUS) -> None:
        self.authorize_model(identity, "admin", name)
        await self.manager.unload_model(name)

    # -- inference -------------------------------------------------------

    async def admit_infer(
        self, identity: Identity, name: str, version: str | None = None
    ) -> LoadedModel:
        """Check that ``identity`` may run model ``name`` and return the version it names.

        Adapters call this before they read or decode a request's tensors,
        so a caller without the ``infer`` scope, or a request for a model
        that does not exist (or that the caller may not see), costs no
        decoding; :func:`max_input_elements` of the model's manifest bounds
        what decoding a request for it may build.
        """
        self.authorize_model(identity, "infer", name)
        return await self.manager.get(name, version)

    async def infer(
        self,
        request: InferenceRequest,
        *,
        identity: Identity = ANONYMOUS,
        priority: Priority | None = None,
    ) -> InferenceResponse:
        """Run one request through the batcher of the model it names.

        The caller needs the ``infer`` scope in the model's namespace; its
        quota is charged, its priority class orders the batcher's queues
        (``priority`` may only lower it) and its usage is accounted.
        """
        namespace = self.authorize_model(identity, "infer", request.model_name)
        if priority is None:
            priority = requested_priority(request.parameters)
        if priority is None:
            rank = identity.priority
        elif identity.kind == "anonymous":
            rank = priority  # no identity to cap it: auth is off
        else:
            rank = max(priority, identity.priority)  # a caller may only lower its own class
        if self.access is None:
            return await self._infer(request, rank)
        async with self.access.quotas.acquire(identity, namespace):
            started = time.perf_counter()
            response = await self._infer(request, rank)
            rows = request.inputs[0].shape[0] if request.inputs[0].shape else 1
            self.access.usage.record(
                identity,
                namespace,
                request.model_name,
                rows=rows,
                compute_seconds=time.perf_counter() - started,
            )
            return response

    async def _infer(self, request: InferenceRequest, priority: Priority) -> InferenceResponse:
        started = time.perf_counter()
        model = await self.manager.get(request.model_name, request.model_version)
        ok = False
        try:
            batcher = model.require_ready()
            manifest = model.info.manifest
            inputs = _checked_inputs(manifest, request)
            wanted = _requested(manifest, request)
            outputs = await batcher.submit(inputs, priority)
            response = InferenceResponse(
                model_name=request.model_name,
                model_version=model.version,
                id=request.id,
                outputs=[
                    InferOutput(
                        name=spec.name,
                        datatype=spec.datatype,
                        shape=outputs[spec.name].shape,
                        data=outputs[spec.name],
                    )
                    for spec in wanted
                ],
            )
            ok = True
            if self.monitor is not None:
                # A queue hand-off: the sketches are updated on the monitor's thread.
                self.monitor.observe(model.served, model.info, inputs, outputs)
            return response
        except BaseException as exc:
            if isinstance(exc, Exception):  # not a cancellation: the request failed
                self.metrics.observe_error(model.served, model.version, type(exc))
            raise
        finally:
            elapsed = time.perf_counter() - started
            model.stats.observe_request(ok, int(elapsed * 1e9))
            self.metrics.observe_request(model.served, model.version, ok, elapsed)


def requested_priority(parameters: Mapping[str, Any]) -> Priority | None:
    """The request's ``priority`` parameter: a class name, or Triton's number."""
    value = parameters.get("priority")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidInput("the 'priority' parameter must be a class name or a number")
    if isinstance(value, int):
        # Triton numbers priorities from 1 (highest); 0 means "the default".
        return None if value == 0 else Priority(min(max(value - 1, 0), len(Priority) - 1))
    return parse_priority(value)


def max_input_elements(manifest: Manifest) -> int | None:
    """The most tensor elements one request to the model described by ``manifest``
    can carry, or ``None`` when its shapes set no bound.

    A variable batch dimension counts as ``max_batch_size`` (the batcher
    refuses larger requests); any other variable dimension leaves the
    request unbounded.
    """
    total = 0
    for spec in manifest.inputs:
        batch_dim = manifest.batch_dim_of(spec)
        count = 1
        for axis, dim in enumerate(spec.shape):
            if dim < 0 and axis == batch_dim:
                dim = manifest.max_batch_size
            if dim < 0:
                return None
            count *= dim
        total += count
    return total


def _platform(manifest: Manifest) -> str:
    return {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}.get(
        manifest.runtime, f"sciserve_{manifest.runtime}"
    )


def _tensor_metadata(manifest: Manifest, spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _tensor_config(manifest: Manifest, spec: TensorSpec) -> dict[str, Any]:
    dims = list(spec.shape)
    bdim = manifest.batch_dim_of(spec)
    if bdim is not None and bdim == 0:
        dims = dims[1:]  # Triton leaves the (leading) batch dim out of config dims
    entry: dict[str, Any] = {
        "name": spec.name,
        "data_type": _TRITON_TYPES[spec.datatype],
        "dims": dims,
    }
    return entry


def _checked_inputs(manifest: Manifest, request: InferenceRequest) -> dict[str, np.ndarray]:
    """The request's tensors, checked against the signature before batching.

    Each request is checked on its own so one bad request can never fail a
    batch it would have shared with good ones.
    """
    given = {t.name: t for t in request.inputs}
    specs = {t.name: t for t in manifest.inputs}
    if given.keys() != specs.keys():
        unknown = sorted(given.keys() - specs.keys())
        if unknown:
            raise InvalidInput(
                f"model {request.model_name} has no input(s) {unknown}; it takes {sorted(specs)}"
            )
        missing = sorted(specs.keys() - given.keys())
        raise InvalidInput(f"missing input(s) {missing} for model {request.model_name}")
    out = {}
    for name, spec in specs.items():
        tensor = given[name]
        if tensor.datatype != spec.datatype:
            raise InvalidInput(
                f"input {name!r} has datatype {tensor.datatype}; the model expects {spec.datatype}"
            )
        shape = tensor.shape
        if len(shape) != len(spec.shape) or any(
            want not in (-1, have) for want, have in zip(spec.shape, shape, strict=True)
        ):
            raise InvalidInput(
                f"input {name!r} has shape {list(shape)}; the model expects "
                f"{spec.shape} (-1 is any size)"
            )
        out[name] = tensor.data
    return out


def _requested(manifest: Manifest, request: InferenceRequest) -> list[TensorSpec]:
    if not request.outputs:
        return list(manifest.outputs)
    specs = {t.name: t for t in manifest.outputs}
    wanted = []
    for output in request.outputs:
        spec = specs.get(output.name)
        if spec is None:
            raise InvalidInput(
                f"model {request.model_name} has no output {output.name!r}; it has {sorted(specs)}"
            )
        wanted.append(spec)
    return wanted
