"""Closed-loop gRPC load for ``inference.GRPCInferenceService/ModelInfer``.

    python bench/loadgen_grpc.py 127.0.0.1:8001 request.bin --concurrency 16 \
        --batch 1 --warmup 2 --duration 5 --runs 3

The request file holds a serialized ``ModelInferRequest``.  It is sent as is
through a raw ``unary_unary`` call without (de)serializers, so no client-side
protobuf work competes with the server for the CPU.  ``--concurrency`` calls
are kept in flight, spread over ``--processes`` processes that each run one
``grpc.aio`` channel.  After ``--warmup`` seconds of load, ``--runs``
back-to-back windows of ``--duration`` seconds are measured: a request
counts in the window in which it completes.  Prints one JSON object with a
result per window (latencies in milliseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from array import array
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from servebench.results import run_from_latencies

METHOD = "/inference.GRPCInferenceService/ModelInfer"
_CALL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Plan:
    """What every worker process does."""

    target: str
    body: bytes
    warmup: float
    duration: float
    runs: int


@dataclass(frozen=True)
class WorkerResult:
    """Per window: latencies in microseconds (as ``array('d')`` bytes) and failures."""

    latencies: list[bytes]
    errors: list[int]


async def _drive(plan: Plan, inflight: int, barrier: Barrier) -> WorkerResult:
    channel = grpc.aio.insecure_channel(
        plan.target,
        options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
    )
    # No serializers: the prebuilt bytes go out and the response bytes come back untouched.
    infer = channel.unary_unary(METHOD)
    await asyncio.wait_for(channel.channel_ready(), timeout=30)
    # All processes start their clocks together once every channel is up.
    barrier.wait()
    start = time.monotonic() + plan.warmup
    end = start + plan.duration * plan.runs
    latencies = [array("d") for _ in range(plan.runs)]
    errors = [0] * plan.runs

    async def caller() -> None:
        while True:
            sent = time.monotonic()
            if sent >= end:
                return
            try:
                await infer(plan.body, timeout=_CALL_TIMEOUT_S)
                failed = False
            except grpc.aio.AioRpcError:
                failed = True
            done = time.monotonic()
            if start <= done < end:
                window = int((done - start) // plan.duration)
                if failed:
                    errors[window] += 1
                else:
                    latencies[window].append((done - sent) * 1e6)

    try:
        await asyncio.gather(*(caller() for _ in range(inflight)))
    finally:
        await channel.close()
    return WorkerResult([a.tobytes() for a in latencies], errors)


def _worker(plan: Plan, inflight: int, barrier: Barrier, queue: multiprocessing.Queue[Any]) -> None:
    try:
        result = asyncio.run(_drive(plan, inflight, barrier))
        queue.put(("ok", result))
    except BaseException as exc:  # report every failure to the parent, then exit
        barrier.abort()
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def run_load(plan: Plan, concurrency: int, processes: int, batch: int) -> list[dict[str, Any]]:
    """Run the plan with ``concurrency`` calls in flight and return one result per window."""
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    queue: multiprocessing.Queue[Any] = ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(plan, share, barrier, queue), daemon=True)
        for share in shares
    ]
    for worker in workers:
        worker.start()
    results: list[WorkerResult] = []
    failures: list[str] = []
    try:
        for _ in workers:
            status, payload = queue.get(timeout=plan.warmup + plan.duration * plan.runs + 120)
            if status == "ok":
                results.append(payload)
            else:
                failures.append(payload)
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
                worker.join()
    if failures:
        raise RuntimeError("; ".join(failures))
    runs = []
    for window in range(plan.runs):
        latencies = np.concatenate(
            [np.frombuffer(r.latencies[window], dtype=np.float64) for r in results]
        )
        errors = sum(r.errors[window] for r in results)
        runs.append(run_from_latencies(latencies, errors, plan.duration, batch).to_dict())
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="host:port of the gRPC server")
    parser.add_argument("request", type=Path, help="file with a serialized ModelInferRequest")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="rows per request, for rows/s")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    plan = Plan(args.target, args.request.read_bytes(), args.warmup, args.duration, args.runs)
    runs = run_load(plan, args.concurrency, args.processes, args.batch)
    json.dump({"runs": runs, "processes": min(args.processes, args.concurrency)}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
