"""Start each server on loopback with free ports, wait until it is ready, stop it after.

Every launcher is a context manager yielding an :class:`Endpoint`; the
server process group is stopped when the block ends, however it ends.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .model import MAX_BATCH, MODEL_NAME, write_package
from .procs import ChildFailed, Service, free_port, run_command
from .venvs import MLSERVER, PEERS_DIR, TRITON

__all__ = [
    "GRPC",
    "HTTP_BINARY",
    "HTTP_JSON",
    "MLSERVER_MAX_BATCH_TIME",
    "NO_HTTP_FRONTENDS",
    "SCALING_CELLS",
    "SCALING_FRONTENDS",
    "SERVERS",
    "Endpoint",
    "ServerSpec",
    "scaling_key",
    "server_specs",
]

HTTP_BINARY = "http-binary"
HTTP_JSON = "http-json"
GRPC = "grpc"

#: MLServer's adaptive batcher only batches with a positive wait; it waits this
#: long for a batch to fill, so it also adds up to this much latency per request.
MLSERVER_MAX_BATCH_TIME = 0.001

_LOOPBACK = "127.0.0.1"
_START_TIMEOUT_S = 180.0

#: The scaling row: sciserve on HTTP-binary with this many HTTP front-end processes …
SCALING_FRONTENDS = (0, 1, 2)
#: … measured on these (concurrency, batch) cells only.
SCALING_CELLS = ((16, 1), (16, 64))
#: Why a front-end contender is not measured with a sciserve that predates them.
NO_HTTP_FRONTENDS = "this sciserve has no --http-frontends"


@dataclass(frozen=True)
class Endpoint:
    """A running server: where it listens and what it reports about itself."""

    http: str
    grpc: str
    version: str
    details: dict[str, str] = field(default_factory=dict)
    #: The server's process (its tree's root, for CPU accounting).
    pid: int | None = None


Launcher = Callable[[Path, Path], AbstractContextManager[Endpoint]]


@dataclass(frozen=True)
class ServerSpec:
    """One contender: its name, the protocols it is compared on, how to start it."""

    key: str
    label: str
    protocols: tuple[str, ...]
    launch: Launcher
    missing: Callable[[], str | None]
    note: str = ""
    #: The (concurrency, batch) cells it is measured on; ``None``: the run's matrix.
    cells: tuple[tuple[int, int], ...] | None = None


def _wait_ready(service: Service, http: str, timeout: float = _START_TIMEOUT_S) -> None:
    """Poll the OIP server and model readiness endpoints until both answer 200."""
    deadline = time.monotonic() + timeout
    urls = [f"http://{http}/v2/health/ready", f"http://{http}/v2/models/{MODEL_NAME}/ready"]
    while True:
        service.check_running()
        try:
            if all(httpx.get(url, timeout=2.0).status_code == 200 for url in urls):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise ChildFailed(
                f"{service.name} not ready after {timeout:.0f} s:\n{service.log_tail()}"
            )
        time.sleep(0.2)


def _server_version(http: str) -> str:
    metadata = httpx.get(f"http://{http}/v2", timeout=5.0).json()
    return f"{metadata.get('name', '?')} {metadata.get('version', '?')}"


def _package_versions(python: Path, *names: str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    )
    out = run_command([str(python), "-c", code, *names], timeout=60)
    versions: dict[str, str] = json.loads(out)
    return versions


# -- sciserve ---------------------------------------------------------------


def _sciserve_argv() -> list[str]:
    # The console script of the venv running the benchmark (never another
    # sciserve found on PATH); the module when there is no script.
    script = Path(sys.executable).parent / "sciserve"
    return [str(script)] if script.exists() else [sys.executable, "-m", "sciserve"]


def _sciserve_missing() -> str | None:
    argv = _sciserve_argv()
    if argv[0] == sys.executable and importlib.util.find_spec("sciserve") is None:
        return "sciserve is not installed in this venv (pip install -e .)"
    return None


@functools.cache
def _serve_help() -> str:
    """``sciserve serve --help``: which options this sciserve has."""
    return run_command([*_sciserve_argv(), "serve", "--help"], timeout=60)


def _frontends_missing(http_frontends: int | None) -> Callable[[], str | None]:
    """``missing`` of a sciserve contender asking for ``http_frontends`` front ends."""

    def missing() -> str | None:
        reason = _sciserve_missing()
        # None: serve's default; 0: what a sciserve without the option does anyway.
        if reason is not None or not http_frontends:
            return reason
        try:
            help_text = _serve_help()
        except ChildFailed as exc:
            return f"'sciserve serve --help' failed: {str(exc).splitlines()[0]}"
        return None if "--http-frontends" in help_text else NO_HTTP_FRONTENDS

    return missing


@contextmanager
def _sciserve(
    work: Path,
    model: Path,
    *,
    monitoring: bool = False,
    http_frontends: int | None = None,
    name: str = "sciserve",
) -> Iterator[Endpoint]:
    cli = _sciserve_argv()
    help_text = _serve_help()
    if "--http-port" not in help_text:
        raise ChildFailed("'sciserve serve' has no --http-port option")
    home = work / f"{name}-home"
    # Said either way, so the two contenders differ in monitoring whatever the default.
    home.mkdir(parents=True, exist_ok=True)
    (home / "sciserve.toml").write_text(f"[monitoring]\nenabled = {str(monitoring).lower()}\n")
    package = write_package(work / "sciserve-package", model)
    run_command([*cli, "--home", str(home), "publish", str(package)], timeout=120)
    argv = [
        *cli,
        "--home",
        str(home),
        "serve",
        "--host",
        _LOOPBACK,
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
    ]
    if "--intra-op-threads" in help_text:
        argv += ["--intra-op-threads", "1"]
    if "--grpc-frontends" in help_text:
        # gRPC terminated by a front-end process that relays to the server:
        # gRPC's own per-call work leaves the serving event loop.
        argv += ["--grpc-frontends", "1"]
    if "--no-jobs" in help_text:
        argv += ["--no-jobs"]  # serving alone: no job runner polling beside it
    if http_frontends is not None and "--http-frontends" in help_text:
        # Said even for 0, so that the scaling row's 0 means none whatever the default.
        argv += ["--http-frontends", str(http_frontends)]
    elif http_frontends:
        raise ChildFailed(NO_HTTP_FRONTENDS)
    with Service(name, argv, work / "logs" / f"{name}.log", cwd=work) as service:
        banner = service.wait_for_output(
            r"sciserve serving http=(\S+) grpc=(\S+) metrics=(\S+)", _START_TIMEOUT_S
        )
        http, grpc = banner.group(1), banner.group(2)
        _wait_ready(service, http)
        yield Endpoint(
            http=http,
            grpc=grpc,
            version=_server_version(http),
            details={"command": " ".join(argv[1:]).replace(str(work), "<tmp>")},
            pid=service.pid,
        )


# -- NVIDIA Triton through PyTriton -------------------------------------------


@contextmanager
def _triton(work: Path, model: Path) -> Iterator[Endpoint]:
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    argv = [
        str(TRITON.python),
        str(PEERS_DIR / "triton_server.py"),
        str(model),
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        str(metrics_port),
        "--max-batch-size",
        str(MAX_BATCH),
        "--workspace",
        str(work / "triton-workspace"),
    ]
    details = _package_versions(TRITON.python, "nvidia-pytriton", "onnxruntime", "numpy")
    with Service("triton", argv, work / "logs" / "triton.log", cwd=work) as service:
        service.wait_for_output(r"triton ready", _START_TIMEOUT_S)
        http = f"{_LOOPBACK}:{http_port}"
        _wait_ready(service, http)
        yield Endpoint(
            http=http,
            grpc=f"{_LOOPBACK}:{grpc_port}",
            version=_server_version(http),
            details={**details, "backend": "python (PyTriton @batch + onnxruntime)"},
            pid=service.pid,
        )


# -- Seldon MLServer ----------------------------------------------------------


def _mlserver_settings(root: Path, model: Path, http_port: int, grpc_port: int) -> None:
    (root / MODEL_NAME).mkdir(parents=True, exist_ok=True)
    server = {
        "debug": False,
        "host": _LOOPBACK,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_endpoint": None,  # no metrics server: one less listener
        "parallel_workers": 0,  # inference in the server process, like the others
        "load_models_at_startup": True,
    }
    model_settings = {
        "name": MODEL_NAME,
        "implementation": "mlserver_runtime.OnnxModel",
        "max_batch_size": MAX_BATCH,
        "max_batch_time": MLSERVER_MAX_BATCH_TIME,
        "parameters": {
            "uri": str(model),
            "version": "1",
            "extra": {"intra_op_threads": 1},
        },
    }
    (root / "settings.json").write_text(json.dumps(server, indent=2))
    (root / MODEL_NAME / "model-settings.json").write_text(json.dumps(model_settings, indent=2))


@contextmanager
def _mlserver(work: Path, model: Path) -> Iterator[Endpoint]:
    root = work / "mlserver"
    http_port, grpc_port = free_port(), free_port()
    _mlserver_settings(root, model, http_port, grpc_port)
    env = {**os.environ, "PYTHONPATH": str(PEERS_DIR)}
    details = _package_versions(MLSERVER.python, "mlserver", "onnxruntime", "uvloop", "numpy")
    argv = [str(MLSERVER.bin("mlserver")), "start", str(root)]
    with Service("mlserver", argv, work / "logs" / "mlserver.log", cwd=root, env=env) as service:
        http = f"{_LOOPBACK}:{http_port}"
        _wait_ready(service, http)
        yield Endpoint(
            http=http,
            grpc=f"{_LOOPBACK}:{grpc_port}",
            version=_server_version(http),
            details={
                **details,
                "runtime": "bench/peers/mlserver_runtime.py (onnxruntime)",
                "adaptive_batching": f"max {MAX_BATCH}, max_batch_time {MLSERVER_MAX_BATCH_TIME}s",
            },
            pid=service.pid,
        )


def scaling_key(http_frontends: int) -> str:
    """The contender name of the scaling row's sciserve with ``http_frontends`` front ends."""
    return f"sciserve-fe{http_frontends}"


def _scaling_spec(n: int) -> ServerSpec:
    key = scaling_key(n)
    plural = "" if n == 1 else "s"
    return ServerSpec(
        key=key,
        label=f"sciserve, {n} HTTP front end{plural}",
        protocols=(HTTP_BINARY,),
        launch=functools.partial(_sciserve, http_frontends=n, name=key),
        missing=_frontends_missing(n),
        cells=SCALING_CELLS,
    )


def server_specs(http_frontends: int | None = None) -> tuple[ServerSpec, ...]:
    """Every contender; ``http_frontends`` goes to the main sciserve contenders
    (``None``: serve's own default)."""
    return (
        ServerSpec(
            key="sciserve",
            label="sciserve",
            protocols=(HTTP_BINARY, HTTP_JSON, GRPC),
            launch=functools.partial(_sciserve, http_frontends=http_frontends),
            missing=_frontends_missing(http_frontends),
        ),
        ServerSpec(
            key="sciserve-monitored",
            label="sciserve, monitoring on",
            protocols=(HTTP_BINARY,),
            launch=functools.partial(
                _sciserve,
                monitoring=True,
                http_frontends=http_frontends,
                name="sciserve-monitored",
            ),
            missing=_frontends_missing(http_frontends),
            note="'sciserve, monitoring on' is sciserve with monitoring.enabled = true in its "
            "sciserve.toml, 'sciserve' the same with false: what monitoring on the request "
            "path costs.",
        ),
        ServerSpec(
            key="triton",
            label="Triton 2.51 (PyTriton)",
            protocols=(HTTP_BINARY, HTTP_JSON, GRPC),
            launch=_triton,
            missing=TRITON.missing,
            note=(
                "Triton runs its Python backend (PyTriton): its native ONNX Runtime backend "
                "needs a newer glibc than this machine has."
            ),
        ),
        ServerSpec(
            key="mlserver",
            label="MLServer 1.7.1",
            protocols=(HTTP_JSON, GRPC),
            launch=_mlserver,
            missing=MLSERVER.missing,
            note="MLServer has no binary tensor extension: compared on HTTP-JSON and gRPC only.",
        ),
        *(_scaling_spec(n) for n in SCALING_FRONTENDS),
    )


SERVERS: tuple[ServerSpec, ...] = server_specs()
