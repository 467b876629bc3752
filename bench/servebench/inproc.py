"""The ceiling: the same ONNX Runtime session called directly from Python threads.

No network, no serialization, no batching across callers: ``concurrency``
threads each call ``session.run`` on their own batch in a closed loop.
ONNX Runtime releases the GIL while it computes, so threads overlap on both
cores.  Measured like the gRPC load generator: after a warm-up, back-to-back
windows, a call counting in the window in which it completes.
"""

from __future__ import annotations

import threading
import time
from array import array
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .model import INPUT_NAME, OUTPUT_NAME
from .results import Run, run_from_latencies

__all__ = ["open_session", "run_inprocess"]


def open_session(model: Path, intra_op_threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session configured like every server's (one intra-op thread)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def run_inprocess(
    session: ort.InferenceSession,
    inputs: np.ndarray,
    concurrency: int,
    warmup: float,
    duration: float,
    runs: int,
) -> list[Run]:
    """Keep ``concurrency`` calls running; return one :class:`Run` per window."""
    batch = int(inputs.shape[0])
    latencies = [[array("d") for _ in range(runs)] for _ in range(concurrency)]
    ready = threading.Barrier(concurrency + 1)
    clock: dict[str, float] = {}

    def caller(mine: list[array[float]]) -> None:
        feed = {INPUT_NAME: inputs.copy()}
        ready.wait()
        start, end = clock["start"], clock["end"]
        while True:
            sent = time.monotonic()
            if sent >= end:
                return
            session.run([OUTPUT_NAME], feed)
            done = time.monotonic()
            if start <= done < end:
                mine[int((done - start) // duration)].append((done - sent) * 1e6)

    threads = [
        threading.Thread(target=caller, args=(latencies[i],), daemon=True)
        for i in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    clock["start"] = time.monotonic() + warmup
    clock["end"] = clock["start"] + duration * runs
    ready.wait()
    for thread in threads:
        thread.join()
    return [
        run_from_latencies(
            np.concatenate([np.frombuffer(mine[w], dtype=np.float64) for mine in latencies]),
            errors=0,
            duration_s=duration,
            batch=batch,
        )
        for w in range(runs)
    ]
