"""Serve the benchmark MLP with NVIDIA Triton through PyTriton (runs in the Triton peer venv).

Triton's native ONNX Runtime backend needs a newer glibc than many hosts
have, so this measures Triton's Python backend: Triton's HTTP/gRPC front
ends and dynamic batcher, then PyTriton's proxy into this process, where an
onnxruntime session with one intra-op thread runs the batch.

Usage: python triton_server.py MODEL.onnx --http-port N --grpc-port N --metrics-port N
       [--intra-op-threads 1] [--max-batch-size 64] [--workspace DIR]

Prints ``triton ready`` on stdout once the model is loaded; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType
from typing import Any

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def _session(path: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--workspace", help="PyTriton's work directory (removed on stop)")
    args = parser.parse_args(argv)

    session = _session(args.model, args.intra_op_threads)
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name

    @batch  # type: ignore[untyped-decorator]
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        # @batch has already concatenated the queued requests into one array.
        (output,) = session.run([output_name], {input_name: inputs[input_name]})
        return {output_name: output}

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
        allow_sagemaker=False,
        allow_vertex_ai=False,
        log_verbose=0,
    )
    in_features = session.get_inputs()[0].shape[1]
    out_features = session.get_outputs()[0].shape[1]

    def stop(signum: int, frame: FrameType | None) -> Any:
        # Leave through KeyboardInterrupt so PyTriton's own shutdown runs and
        # frees its shared memory and workspace.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with Triton(config=config, workspace=args.workspace) as triton:
        triton.bind(
            model_name="mlp",
            infer_func=infer,
            inputs=[Tensor(name=input_name, dtype=np.float32, shape=(in_features,))],
            outputs=[Tensor(name=output_name, dtype=np.float32, shape=(out_features,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=0),
            ),
            strict=False,
        )
        print("triton ready", flush=True)
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
