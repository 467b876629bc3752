"""What drift monitoring costs on the request path, in-process (no HTTP, no load generator).

    python bench/monitor_cost.py                  # 20k requests, concurrency 16, batch 1
    python bench/monitor_cost.py --requests 50000 --profile

Serves the serving benchmark's MLP (64 features in, 10 values out) from an
:class:`~sciserve.serving.service.InferenceService` on a SQLite registry,
once with monitoring off and once on, and drives ``infer`` from
``--concurrency`` asyncio tasks.  It reports the process CPU time per
request, the event loop's share of it (which folds the monitor's queue on
a server) and a monitor thread's (none unless one runs), and wall-clock
requests/s.  With ``--reference`` the warm-up traffic becomes the drift
reference, so the drift checks run as well.  With ``--profile`` the
monitor thread's hottest functions are printed.  This is a measurement
aid, not a gate: the gate is the c=16 b=1 HTTP cell of ``bench/serve.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servebench.model import IN_FEATURES, INPUT_NAME, MODEL_NAME, write_model, write_package

from sciserve.config import MonitoringConfig, ServingConfig, Settings
from sciserve.monitoring.monitor import Monitor
from sciserve.registry.registry import Registry
from sciserve.serving.service import InferenceService
from sciserve.serving.types import InferenceRequest, InferInput


def _profile_drains(monitor: Monitor, profiler: cProfile.Profile) -> None:
    """Profile every drain of the monitor's queue (its thread's work)."""
    process = monitor._process

    def profiled(batch: list[Any]) -> None:
        profiler.enable()
        try:
            process(batch)
        finally:
            profiler.disable()

    monitor._process = profiled  # type: ignore[method-assign]


def _thread_cpu(thread: threading.Thread | None) -> float:
    if thread is None or thread.ident is None:
        return 0.0
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except (OSError, ProcessLookupError):
        return 0.0


async def _drive(
    service: InferenceService, requests: int, concurrency: int, batch: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    bodies = [rng.normal(size=(batch, IN_FEATURES)).astype(np.float32) for _ in range(64)]
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            x = bodies[i % len(bodies)]
            await service.infer(
                InferenceRequest(
                    model_name=MODEL_NAME,
                    model_version=None,
                    id=None,
                    inputs=[InferInput(INPUT_NAME, "FP32", x.shape, x)],
                )
            )

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _measure(
    registry: Registry, monitored: bool, args: argparse.Namespace
) -> dict[str, float]:
    monitoring = MonitoringConfig(enabled=monitored)
    service = InferenceService(registry, ServingConfig(intra_op_threads=1), monitoring=monitoring)
    await service.start()
    profiler = cProfile.Profile() if (args.profile and monitored) else None
    try:
        await _drive(service, args.warmup, args.concurrency, args.batch, 1)
        monitor = service.monitor
        if monitor is not None:
            await asyncio.to_thread(monitor.flush, 60.0)
            if args.reference:  # judge against the warm-up traffic: drift checks run too
                await service.freeze_reference(MODEL_NAME)
            if profiler is not None:
                _profile_drains(monitor, profiler)
        thread = None if monitor is None else monitor._thread
        cpu0, mon0, wall0 = time.process_time(), _thread_cpu(thread), time.perf_counter()
        loop0 = time.thread_time()
        await _drive(service, args.requests, args.concurrency, args.batch, 2)
        wall = time.perf_counter() - wall0
        if service.monitor is not None:
            await asyncio.to_thread(service.monitor.flush, 60.0)
        cpu, mon = time.process_time() - cpu0, _thread_cpu(thread) - mon0
        loop = time.thread_time() - loop0
        dropped = 0 if service.monitor is None else service.monitor.dropped
    finally:
        await service.stop()
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
        print(out.getvalue())
    return {
        "cpu_us": cpu / args.requests * 1e6,
        "monitor_us": mon / args.requests * 1e6,
        "loop_us": loop / args.requests * 1e6,
        "rps": args.requests / wall,
        "dropped": float(dropped),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs, interleaved")
    parser.add_argument(
        "--reference", action="store_true", help="freeze the warm-up as reference (checks run)"
    )
    parser.add_argument("--profile", action="store_true", help="profile the monitor thread")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = write_model(work / "model.onnx")
        package = write_package(work / "package", model)
        with Registry(Settings.load(work / "home", environ={})) as registry:
            registry.publish(package)
            rows: list[tuple[str, dict[str, float]]] = []
            for _ in range(args.rounds):
                for monitored in (False, True):
                    result = asyncio.run(_measure(registry, monitored, args))
                    rows.append(("on " if monitored else "off", result))
    print(
        f"{'monitoring':<10} {'CPU µs/req':>11} {'event loop':>11} {'monitor':>8}"
        f" {'req/s':>9} {'dropped':>8}"
    )
    for name, r in rows:
        print(
            f"{name:<10} {r['cpu_us']:>11.1f} {r['loop_us']:>11.1f} {r['monitor_us']:>8.1f}"
            f" {r['rps']:>9.0f}"
            f" {r['dropped']:>8.0f}"
        )
    off = [r["cpu_us"] for n, r in rows if n == "off"]
    on = [r["cpu_us"] for n, r in rows if n.strip() == "on"]
    print(f"CPU per request, monitoring on vs off: {min(on) / min(off) - 1:+.1%} (best of each)")


if __name__ == "__main__":
    main()
