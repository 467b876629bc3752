"""``sciserve serve``: the Open Inference Protocol server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError

from ..config import ServingConfig, Settings, frontends_for_cores
from ..errors import ConfigError
from ._context import log_to_stderr, state

if TYPE_CHECKING:
    from ..server import Addresses

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def _strict(value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise typer.BadParameter("use true or false")
    return lowered in ("true", "1", "yes")


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP port (0: pick a free one).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (0: pick a free one).")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Metrics port (0: pick a free one).")] = 8002,
    grpc_frontends: Annotated[
        int,
        typer.Option(
            help="Processes that terminate gRPC and relay calls to this one "
            "(more gRPC throughput with a spare core); 0: gRPC in this process."
        ),
    ] = 0,
    http_frontends: Annotated[
        str,
        typer.Option(
            metavar="N|auto",
            help="Processes that accept and parse HTTP and relay requests to this one "
            "(more HTTP throughput with spare cores); 'auto': one per core but one; "
            "0: HTTP in this process.",
        ),
    ] = "0",
    http_batch_lane: Annotated[
        int,
        typer.Option(
            help="Batch-class inference requests each HTTP front end relays at once; "
            "more get 503 before their body is read."
        ),
    ] = 64,
    http_interactive_lane: Annotated[
        int,
        typer.Option(help="The same for interactive requests (realtime ones are never bounded)."),
    ] = 1024,
    http_fast_path: Annotated[
        bool,
        typer.Option(
            "--http-fast-path/--no-http-fast-path",
            help="HTTP front ends decode inference requests and encode the answers themselves "
            "(the serving process still authorises each); off (default): they relay requests "
            "as they are.",
        ),
    ] = False,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", help="Serve only these references (repeatable); default: every model."
        ),
    ] = None,
    strict_readiness: Annotated[
        str, typer.Option(help="Ready only when every model loaded (true/false).")
    ] = "true",
    poll_interval: Annotated[
        float, typer.Option(help="Seconds between checks for alias changes in the registry.")
    ] = 5.0,
    max_queue_delay: Annotated[
        float, typer.Option(help="Seconds a request may wait to fill a batch.")
    ] = 0.0,
    max_queue_size: Annotated[
        int, typer.Option(help="Requests waiting per model before 503.")
    ] = 1024,
    instances: Annotated[int, typer.Option(help="Parallel executions per model.")] = 1,
    realtime_instances: Annotated[
        int, typer.Option(help="Of --instances, how many only realtime requests may use.")
    ] = 0,
    max_inline_compute: Annotated[
        float,
        typer.Option(help="Full batches quicker than this (s) run on the event loop; 0: never."),
    ] = 0.0005,
    device: Annotated[str | None, typer.Option(help="Device for every model: cpu, cuda:N.")] = None,
    intra_op_threads: Annotated[int, typer.Option(help="ONNX Runtime threads per model.")] = 1,
    max_request_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 64 * 2**20,
    auth: Annotated[
        bool | None,
        typer.Option("--auth/--no-auth", help="Require tokens (default: the [access] settings)."),
    ] = None,
    insecure: Annotated[
        bool, typer.Option(help="Allow serving without authentication beyond loopback.")
    ] = False,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate (chain) for TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key for TLS.")] = None,
    jobs: Annotated[
        bool | None,
        typer.Option(
            "--jobs/--no-jobs",
            help="Run the schedules' scheduler and a batch job runner beside the server "
            "(default: [jobs] run_in_server).",
        ),
    ] = None,
) -> None:
    """Serve the registry's models over HTTP and gRPC (KServe v2 / Triton protocol)."""
    st = state(ctx)
    try:
        config = ServingConfig(
            host=host,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            grpc_frontends=grpc_frontends,
            http_frontends=_frontends(http_frontends),
            http_batch_lane=http_batch_lane,
            http_interactive_lane=http_interactive_lane,
            http_fast_path=http_fast_path,
            models=tuple(model) if model else None,
            strict_readiness=_strict(strict_readiness),
            poll_interval=poll_interval,
            max_queue_delay=max_queue_delay,
            max_queue_size=max_queue_size,
            instances=instances,
            realtime_instances=realtime_instances,
            max_inline_compute=max_inline_compute,
            device=device,
            intra_op_threads=intra_op_threads,
            max_request_bytes=max_request_bytes,
            insecure=insecure,
            tls_cert=tls_cert,
            tls_key=tls_key,
        )
    except ValidationError as exc:
        raise ConfigError(_options_problem(exc)) from exc
    settings = st.settings
    if auth is not None:
        settings = settings.model_copy(
            update={"access": settings.access.model_copy(update={"enabled": auth})}
        )
    run_jobs = settings.jobs.run_in_server if jobs is None else jobs
    run_server(settings, config, jobs=run_jobs and not settings.read_only)


def _frontends(value: str) -> int:
    if value.strip().lower() == "auto":
        return frontends_for_cores()
    if not value.strip().isdigit():
        raise typer.BadParameter(
            "use a number of processes or 'auto'", param_hint="--http-frontends"
        )
    return int(value)


def _options_problem(exc: ValidationError) -> str:
    """Pydantic's complaint about the options, in the options' own names."""
    problems = []
    for error in exc.errors():
        where = ", ".join("--" + str(part).replace("_", "-") for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


#: The serving process's GIL switch interval (s).  A model thread whose
#: batch has finished needs the GIL to hand the results back; under load the
#: event loop holds it, and with Python's default of 5 ms the thread may wait
#: that long, stalling every request in the batch.  0.5 ms measured +10 % gRPC
#: throughput at concurrency 16 (bench/serve.py); much shorter intervals cost
#: more in forced switches than they save.
SWITCH_INTERVAL = 0.0005


def run_server(
    settings: Settings,
    config: ServingConfig,
    *,
    announce: Callable[[Addresses], None] | None = None,
    jobs: bool = False,
) -> None:
    """Run until SIGTERM / SIGINT; print one line with the bound addresses, then
    call ``announce`` with them.  With ``jobs``, the schedules' scheduler runs
    in a thread and a job runner beside the server once it is up (see
    :class:`JobsRunnerChild`)."""
    from ..server import Server

    log_to_stderr()
    sys.setswitchinterval(SWITCH_INTERVAL)
    child = JobsRunnerChild(settings) if jobs else None

    def ready(addresses: Addresses) -> None:
        sys.stdout.write(f"{addresses.banner()}\n")
        if announce is not None:
            announce(addresses)
        sys.stdout.flush()
        if jobs:
            # Only once the server is up: a refused start (bind safety, a
            # port in use) must not have touched the registry first.
            background.enter_context(_scheduler(settings))
        if child is not None:
            child.start()

    with contextlib.ExitStack() as background:
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(Server(settings, config).serve(on_ready=ready))
        finally:
            if child is not None:
                child.stop()


class JobsRunnerChild:
    """``sciserve jobs runner`` as a child process of the server.

    A separate process, so that nothing a batch job does (memory, a crash,
    a Dask cluster's threads and signals) can take the server down; in a
    session of its own, so that a terminal's Ctrl-C reaches only the server,
    which stops it (SIGTERM: its job is cancelled and queued again; then
    SIGKILL if it lingers).  A runner that exits on its own (the database
    was down, it crashed) is started again after a pause that doubles up to
    a minute; one that is killed with the server exits by itself.
    """

    #: Seconds the runner gets to put its job back before it is killed.
    STOP_TIMEOUT = 30.0
    #: Pauses (s) before starting a runner that exited again.
    FIRST_PAUSE, LONGEST_PAUSE = 1.0, 60.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._supervise, name="sciserve-jobs-runner", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        # The registry is passed in the environment, not on a command line
        # every user of the machine can read (a database URL may hold a password).
        env = {
            **os.environ,
            "SCISERVE_HOME": str(self.settings.home),
            "SCISERVE_DATABASE_URL": self.settings.database_url,
            "SCISERVE_STORE_URL": self.settings.store_url,
        }
        command = [
            *(sys.executable, "-m", "sciserve", "jobs", "runner"),
            *("--exit-with-parent", str(os.getpid())),
        ]
        with self._lock:
            if self._stopping.is_set():
                return None
            try:
                self.proc = subprocess.Popen(
                    command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,  # the server's stdout carries its banner
                    start_new_session=True,
                )
            except OSError as exc:  # the server serves on without it, and tries again
                logger.error("cannot start the job runner: %s", exc)
                return None
            logger.info("job runner started (pid %d)", self.proc.pid)
            return self.proc

    def _supervise(self) -> None:
        pause = self.FIRST_PAUSE
        while not self._stopping.is_set():
            proc = self._spawn()
            if proc is not None:
                started = time.monotonic()
                code = proc.wait()
                if self._stopping.is_set():
                    return
                logger.warning(
                    "the job runner (pid %d) exited with code %d; starting another in %g s",
                    proc.pid,
                    code,
                    pause,
                )
                if time.monotonic() - started > self.LONGEST_PAUSE:
                    pause = self.FIRST_PAUSE  # it had been running well
            self._stopping.wait(pause)
            pause = min(pause * 2, self.LONGEST_PAUSE)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                logger.warning("the job runner (pid %d) did not stop; killed", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        if self._thread.is_alive():
            self._thread.join(self.STOP_TIMEOUT)


def _scheduler(settings: Settings) -> contextlib.AbstractContextManager[object]:
    """The schedules' scheduler, in a thread, while the server runs; a
    read-only registry has no schedules to advance."""
    if settings.read_only:
        return contextlib.nullcontext()
    from ..jobs.schedules import running_scheduler

    return running_scheduler(settings)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (it comes with ``uvicorn[standard]``): a faster loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
