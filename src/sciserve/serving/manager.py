"""Which model versions are loaded, and which one a request means.

The manager serves each model's *default* version (the ``production`` alias
when set, else the newest non-yanked version) and loads other versions on
demand.  A background task re-resolves defaults and aliases every
``poll_interval`` seconds, so a ``sciserve tag`` run by any process that
shares the registry rolls a new version out (and back) without clients
changing anything: the new version is loaded first, requests switch to it
once it is READY, and the old one drains its queue before it unloads.

Served names (:func:`sciserve.package.reference.served_name`): a model in
the ``default`` namespace is served under its bare name, a model in another
namespace as ``namespace.name``.  Names in ``default`` cannot contain dots,
so a served name means one model; a registry that holds such a name from an
older release gets it reported at start-up and it is not served (``sciserve
models check-names`` lists them, ``sciserve models rename`` fixes them).
:meth:`ModelManager.identify` says which model a served name is, from what
is served: callers are authorized on that model's stored namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass

from ..config import ServingConfig
from ..errors import ModelNotReady, NotFound, SciserveError
from ..package.reference import (
    Reference,
    parse_served_name,
    served_name,
    served_name_problem,
)
from ..registry.registry import Registry, VersionInfo
from ..runtimes import ModelSource, Runtime, get_runtime
from .batcher import BatchPolicy, BatchTiming, DynamicBatcher
from .lifecycle import Lifecycle, ModelState
from .metrics import ServerMetrics
from .stats import ModelStats

__all__ = ["LoadedModel", "ModelManager"]

log = logging.getLogger("sciserve.serving")

#: Runtimes that run user code and therefore run in a child process, so a
#: crash or a held GIL cannot take the server down.
_ISOLATED_RUNTIMES = frozenset({"python"})


class LoadedModel:
    """One model version inside the server: its lifecycle, runtime and batcher."""

    def __init__(self, served: str, info: VersionInfo, metrics: ServerMetrics) -> None:
        self.served = served
        self.info = info
        self.lifecycle = Lifecycle()
        self.stats = ModelStats(served, info.version)
        self.runtime: Runtime | None = None
        self.batcher: DynamicBatcher | None = None
        self._metrics = metrics

    @property
    def version(self) -> str:
        return self.info.version

    @property
    def state(self) -> ModelState:
        return self.lifecycle.state

    def require_ready(self) -> DynamicBatcher:
        if self.lifecycle.state is not ModelState.READY or self.batcher is None:
            reason = f": {self.lifecycle.reason}" if self.lifecycle.reason else ""
            raise ModelNotReady(
                f"model {self.served} version {self.version} is "
                f"{self.lifecycle.state.value.lower()}{reason}"
            )
        return self.batcher

    async def load(self, registry: Registry, config: ServingConfig) -> None:
        manifest = self.info.manifest
        try:
            root = await asyncio.to_thread(registry.pull, self.info.ref)
            options = {**manifest.runtime_options}
            if manifest.runtime == "onnx":
                options.setdefault("intra_op_threads", config.intra_op_threads)
            source = ModelSource(manifest, root, config.device or manifest.device, options)
            runtime = _make_runtime(source)
            await asyncio.to_thread(runtime.load)
        except SciserveError as exc:
            self.lifecycle.move(ModelState.FAILED, str(exc))
            log.error("model %s version %s failed to load: %s", self.served, self.version, exc)
            return
        except Exception as exc:  # a broken plugin must not take the server down
            self.lifecycle.move(ModelState.FAILED, f"{type(exc).__name__}: {exc}")
            log.exception("model %s version %s failed to load", self.served, self.version)
            return
        self.runtime = runtime
        policy = BatchPolicy(
            max_batch_size=manifest.max_batch_size,
            preferred_batch_sizes=tuple(
                int(x) for x in manifest.runtime_options.get("preferred_batch_sizes", ())
            ),
            max_queue_delay=config.max_queue_delay,
            max_queue_size=config.max_queue_size,
            instances=config.instances,
            realtime_instances=config.realtime_instances,
            max_inline_compute=config.max_inline_compute if runtime.in_process else 0.0,
        )
        self.batcher = DynamicBatcher(runtime.infer, manifest, policy, observe=self._observe)
        self.lifecycle.move(ModelState.READY)
        self._metrics.ready.labels(self.served, self.version).set(1)
        log.info("model %s version %s is ready (%s)", self.served, self.version, self.info.digest)

    def _observe(self, timing: BatchTiming) -> None:
        self.stats.observe_batch(timing)
        self._metrics.observe_batch(self.served, self.version, timing)

    async def unload(self, *, drain: bool = True) -> None:
        if self.lifecycle.state is ModelState.READY:
            self.lifecycle.move(ModelState.DRAINING)
        if self.batcher is not None:
            await self.batcher.close(drain=drain)
        if self.runtime is not None:
            await asyncio.to_thread(self.runtime.unload)
        if self.lifecycle.state in (ModelState.DRAINING, ModelState.FAILED):
            self.lifecycle.move(ModelState.UNLOADED)
        self._metrics.ready.labels(self.served, self.version).set(0)
        log.info("model %s version %s unloaded", self.served, self.version)


def _make_runtime(source: ModelSource) -> Runtime:
    if source.manifest.runtime in _ISOLATED_RUNTIMES:
        from .process import ProcessRuntime

        return ProcessRuntime(source)
    return get_runtime(source.manifest.runtime)(source)


@dataclass
class _Served:
    """What the manager knows about one served model name."""

    namespace: str
    name: str
    default: LoadedModel | None = None
    marked: bool = True  # counts for readiness


class ModelManager:
    """Loads, swaps and unloads model versions for one server."""

    def __init__(self, registry: Registry, config: ServingConfig, metrics: ServerMetrics) -> None:
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self._models: dict[str, _Served] = {}
        # (served name, version) → loaded model, for every loaded version.
        self._loaded: dict[tuple[str, str], LoadedModel] = {}
        # On-demand (non-default) versions, least recently used first.
        self._on_demand: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._loading: dict[tuple[str, str], asyncio.Task[LoadedModel]] = {}
        # (served name, alias) → version, refreshed with the defaults.
        self._aliases: dict[tuple[str, str], str] = {}
        self._poller: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # Models not served because of their names, each reported once.
        self._refused: set[tuple[str, str]] = set()

    # -- start / stop ----------------------------------------------------

    async def start(self) -> None:
        """Load the default version of every model to serve, then keep them current."""
        await self.refresh()
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for model in list(self._loaded.values()):
            await model.unload(drain=True)
        self._loaded.clear()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval)
            try:
                await self.refresh()
            except Exception:  # the registry may be briefly unreachable; keep serving
                log.exception("refreshing models from the registry failed")

    async def _wanted(self) -> list[VersionInfo]:
        if self.config.models is None:
            return await asyncio.to_thread(self.registry.list_models)
        out = []
        for ref in self.config.models:
            try:
                out.append(await asyncio.to_thread(self.registry.resolve, ref))
            except NotFound as exc:
                # Its message says why, e.g. that the name is a dataset's.
                log.error("cannot serve %s: %s", ref, exc)
        return out

    def _servable(self, info: VersionInfo) -> bool:
        """Whether a model's name lets it be served (see the module docstring)."""
        problem = served_name_problem(info.namespace, info.name)
        if problem is None:
            return True
        key = (info.namespace, info.name)
        if key not in self._refused:
            self._refused.add(key)
            log.warning(
                "not serving %s/%s: %s. Rename it with 'sciserve models rename %s/%s NEW' "
                "('sciserve models check-names' lists every such model)",
                info.namespace,
                info.name,
                problem,
                info.namespace,
                info.name,
            )
        return False

    async def refresh(self) -> None:
        """Pick up new models, alias moves and yanks from the registry."""
        wanted = [v for v in await self._wanted() if not v.yanked and self._servable(v)]
        aliases: dict[tuple[str, str], str] = {}
        loads: list[Awaitable[None]] = []
        for info in wanted:
            served = served_name(info.namespace, info.name)
            for version in await asyncio.to_thread(self.registry.versions, info.ref):
                for alias in version.aliases:
                    aliases[(served, alias)] = version.version
            entry = self._models.setdefault(served, _Served(info.namespace, info.name))
            current = entry.default
            if current is None or current.info.digest != info.digest:
                loads.append(self._switch_default(entry, served, info))
        self._aliases = aliases
        await asyncio.gather(*loads)

    async def _switch_default(self, entry: _Served, served: str, info: VersionInfo) -> None:
        new = await self._load(served, info)
        old = entry.default
        if old is not None and old is not new and new.state is not ModelState.READY:
            # Keep serving the old version rather than switch to a broken one.
            log.error("not switching %s to %s: %s", served, info.version, new.lifecycle.reason)
            return
        entry.default = new
        if old is not None and old is not new:
            log.info("model %s now serves version %s (was %s)", served, new.version, old.version)
            self._loaded.pop((served, old.version), None)
            await old.unload(drain=True)

    async def _load(self, served: str, info: VersionInfo) -> LoadedModel:
        key = (served, info.version)
        existing = self._loaded.get(key)
        if existing is not None and existing.state is ModelState.READY:
            return existing
        task = self._loading.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._do_load(served, info))
            self._loading[key] = task
            task.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(task)

    async def _do_load(self, served: str, info: VersionInfo) -> LoadedModel:
        model = LoadedModel(served, info, self.metrics)
        self._loaded[(served, info.version)] = model
        await model.load(self.registry, self.config)
        return model

    # -- lookup ----------------------------------------------------------

    def _entry(self, served: str) -> _Served:
        entry = self._models.get(served)
        if entry is None:
            raise NotFound(f"unknown model {served!r}")
        return entry

    async def get(self, served: str, selector: str | None = None) -> LoadedModel:
        """The loaded model a request names; loads a non-default version on demand."""
        entry = self._entry(served)
        if not selector:
            if entry.default is None:
                raise ModelNotReady(f"model {served} has no version loaded yet")
            return entry.default
        # An alias first, then a version: as Registry.resolve_selector decides.
        version = self._aliases.get((served, selector), selector)
        loaded = self._loaded.get((served, version))
        if loaded is not None:
            return loaded
        return await self._on_demand_load(entry, served, selector)

    async def _on_demand_load(self, entry: _Served, served: str, selector: str) -> LoadedModel:
        if self.config.max_on_demand_versions == 0:
            raise NotFound(f"model {served} has no loaded version {selector!r}")
        try:
            info = await asyncio.to_thread(
                self.registry.resolve_selector, entry.namespace, entry.name, selector
            )
        except (NotFound, SciserveError):
            raise NotFound(f"model {served} has no version or alias {selector!r}") from None
        async with self._lock:
            model = await self._load(served, info)
            key = (served, info.version)
            if entry.default is not model:
                self._on_demand[key] = model
                self._on_demand.move_to_end(key)
                while len(self._on_demand) > self.config.max_on_demand_versions:
                    old_key, old = self._on_demand.popitem(last=False)
                    self._loaded.pop(old_key, None)
                    asyncio.get_running_loop().create_task(old.unload(drain=True))
        return model

    # -- repository extension --------------------------------------------

    def index(self) -> list[dict[str, str]]:
        rows = []
        for served in sorted(self._models):
            versions = [m for (s, _), m in self._loaded.items() if s == served]
            if not versions:
                rows.append(
                    {
                        "name": served,
                        "version": "",
                        "state": ModelState.UNLOADED.value,
                        "reason": "unloaded",
                    }
                )
            for model in versions:
                rows.append(
                    {
                        "name": served,
                        "version": model.version,
                        "state": model.state.value,
                        "reason": model.lifecycle.reason,
                    }
                )
        return rows

    def identify(self, served: str) -> tuple[str, str] | None:
        """The ``(namespace, name)`` of the model served as ``served``, if one is.

        Taken from the registry's record of the model, so access checks are
        made on the namespace it is stored in.
        """
        entry = self._models.get(served)
        return None if entry is None else (entry.namespace, entry.name)

    async def locate(self, served: str) -> tuple[str, str] | None:
        """Like :meth:`identify`; for a model not served yet, the registry's model of that name."""
        found = self.identify(served)
        if found is not None:
            return found
        meant = parse_served_name(served)
        if meant is None:
            return None
        try:
            info = await asyncio.to_thread(self.registry.resolve, Reference(*meant))
        except NotFound:
            return None
        return info.namespace, info.name

    async def load_model(self, served: str) -> None:
        """(Re)load a model's default version (repository extension)."""
        entry = self._models.get(served)
        if entry is None:
            found = await self.locate(served)
            if found is None:
                # Worded like every other request naming a model not served.
                raise NotFound(f"unknown model {served!r}")
            namespace, name = found
            info = await asyncio.to_thread(self.registry.resolve, Reference(namespace, name))
            entry = self._models.setdefault(served, _Served(namespace, name))
        else:
            info = await asyncio.to_thread(
                self.registry.resolve, Reference(entry.namespace, entry.name)
            )
        entry.marked = True
        if entry.default is not None and entry.default.state is ModelState.FAILED:
            self._loaded.pop((served, entry.default.version), None)
            entry.default = None
        await self._switch_default(entry, served, info)
        if entry.default is None or entry.default.state is not ModelState.READY:
            reason = entry.default.lifecycle.reason if entry.default else "not loaded"
            raise ModelNotReady(f"model {served} failed to load: {reason}")

    async def unload_model(self, served: str) -> None:
        entry = self._entry(served)
        entry.marked = False
        for key in [k for k in self._loaded if k[0] == served]:
            model = self._loaded.pop(key)
            self._on_demand.pop(key, None)
            await model.unload(drain=True)
        entry.default = None

    def ready(self) -> bool:
        marked = [e for e in self._models.values() if e.marked]
        if not self.config.strict_readiness:
            return True
        return all(e.default is not None and e.default.state is ModelState.READY for e in marked)

    def loaded_versions(self, served: str) -> list[LoadedModel]:
        self._entry(served)
        return [m for (s, _), m in self._loaded.items() if s == served]

    def served_names(self) -> list[str]:
        return sorted(self._models)
