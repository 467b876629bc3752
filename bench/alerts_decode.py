"""How fast Rubin alerts decode: full decoding against a light-curve projection.

    python bench/alerts_decode.py --count 2000 --detections 30 --schema lsst:11.1

Simulates ``--count`` alerts (each with ``--detections`` earlier detections)
and times, on one core (polars limited to one thread), encoding, full decoding, decoding with the
``lightcurve`` projection, and that projection followed by the feature
extraction a classifying pipeline runs; then the same work a batch at a
time (``--batch`` alerts): batch decoding into light-curve columns, and
batch decoding followed by batch features.  The best of ``--runs`` passes
is reported, as alerts per second, in one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

# One core, as fastavro uses: polars would otherwise spread the batch reads
# over a thread pool the size of the machine.
os.environ.setdefault("POLARS_MAX_THREADS", "1")

import fastavro
import polars

from sciserve.examples.features import extract_columns
from sciserve.streams.batchdecode import LightCurveColumns, RubinBatchDecoder
from sciserve.streams.codecs import RubinCodec
from sciserve.streams.simulate import AlertSimulator, features_from_alert


def _rate(work: Callable[[], object], count: int, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return round(count / best, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--detections", type=int, default=30)
    parser.add_argument("--schema", default="lsst:11.1")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="alerts per batch (batch paths)")
    args = parser.parse_args()

    simulator = AlertSimulator(args.schema, seed=0, n_detections=args.detections)
    alerts = list(simulator.alerts(args.count))
    payloads = [alert.payload for alert in alerts]
    full = RubinCodec(args.schema)
    projected = RubinCodec(args.schema, fields="lightcurve")
    batches = [payloads[i : i + args.batch] for i in range(0, len(payloads), args.batch)]
    decoder = RubinBatchDecoder(projected.schemas, max_bytes=projected.max_bytes)
    decoder.decode(batches[0])  # the container header is built once per schema

    def batch_decode() -> list[LightCurveColumns | None]:
        return [curve for batch in batches for curve in decoder.decode(batch)]

    def batch_decode_and_features() -> None:
        for batch in batches:
            extract_columns([curve for curve in decoder.decode(batch) if curve is not None])

    results = {
        "schema": simulator.schema.name,
        "alerts": args.count,
        "detections_per_alert": args.detections + 1,
        "mean_alert_bytes": round(sum(map(len, payloads)) / len(payloads)),
        "python": platform.python_version(),
        "fastavro": fastavro.__version__,
        "polars": polars.__version__,
        "polars_threads": polars.thread_pool_size(),
        "batch": args.batch,
        "alerts_per_second": {
            "encode": _rate(lambda: [full.encode(a.alert) for a in alerts], args.count, args.runs),
            "decode_full": _rate(lambda: [full.decode(p) for p in payloads], args.count, args.runs),
            "decode_projected": _rate(
                lambda: [projected.decode(p) for p in payloads], args.count, args.runs
            ),
            "decode_projected_and_features": _rate(
                lambda: [features_from_alert(projected.decode(p)) for p in payloads],
                args.count,
                args.runs,
            ),
            "decode_batch": _rate(batch_decode, args.count, args.runs),
            "decode_batch_and_batch_features": _rate(
                batch_decode_and_features, args.count, args.runs
            ),
        },
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
