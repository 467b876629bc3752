"""What an evaluation costs beyond the model: sciserve's runner against
ONNX Runtime in-process, and its metrics against scikit-learn's, in one run.

    python bench/evaluate.py --rows 1000000 --batch 1024 --runs 3

Builds the example light-curve classifier (ONNX MLP, one intra-op thread),
publishes it in a scratch registry and draws ``--rows`` feature rows, with
their labels, from a seeded pool of simulated light curves.  Then, best of
``--runs`` each:

* ``onnxruntime``: an ``InferenceSession`` run over the same batches (the
  model's own time: the floor);
* ``evaluate``: :func:`sciserve.evaluation.evaluate_arrays` over the model
  loaded with ``sciserve.load`` (batches, checks, every metric, the outputs'
  sha256);
* ``sklearn``: scikit-learn's accuracy, balanced accuracy, per-class
  precision / recall / F1, one-vs-rest ROC-AUC, log-loss and confusion
  matrix over the same outputs (ours are checked equal to them first).

The target: the evaluation's overhead over doing it by hand (``evaluate``
minus ``onnxruntime`` plus ``sklearn``) at most 20 % of the model's own time
(``onnxruntime``).  The overhead over the model alone (``evaluate`` minus
``onnxruntime``, all the metrics included) is reported beside it.  One JSON
object goes to stdout and to ``bench/results/evaluate-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import sklearn
from sklearn import metrics as skm

import sciserve
from sciserve.config import Settings
from sciserve.evaluation import classification_metrics, evaluate_arrays
from sciserve.examples import CLASSES, build_examples, extract_many, simulate
from sciserve.registry.registry import Registry

TARGET_OVERHEAD = 0.20


def _best(work: Callable[[], Any], runs: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(runs):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


def _sklearn(y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    p64 = probs.astype(np.float64)
    p64 /= p64.sum(axis=1, keepdims=True)
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "prf": skm.precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0),
        # Ranked on the model's own numbers, as sciserve does (normalising moves ties).
        "roc_auc_macro": skm.roc_auc_score(
            y, probs.astype(np.float64), multi_class="ovr", labels=range(k)
        ),
        "log_loss": skm.log_loss(y, p64, labels=range(k)),
        "confusion": skm.confusion_matrix(y, pred, labels=range(k)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--pool", type=int, default=5000, help="simulated light curves drawn from")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        built = {p.name: p for p in build_examples(root / "built")}
        curves = simulate(args.pool, seed=args.seed)
        pool_x = extract_many(curves)
        pool_y = np.array([CLASSES.index(lc.label) for lc in curves])
        pick = np.random.default_rng(args.seed).integers(0, args.pool, args.rows)
        x, y = np.ascontiguousarray(pool_x[pick]), pool_y[pick]
        labels = np.array(CLASSES)[y]

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(built["lc-classifier"] / "model.onnx"),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )

        def raw() -> np.ndarray:
            out = [
                session.run(["probabilities"], {"features": x[i : i + args.batch]})[0]
                for i in range(0, args.rows, args.batch)
            ]
            return np.concatenate(out)

        ort_seconds, ort_probs = _best(raw, args.runs)

        with (
            Registry(Settings.load(root / "home", environ={})) as reg,
            sciserve.load(
                reg.publish(built["lc-classifier"]).version.ref,
                registry=reg,
                intra_op_threads=1,
            ) as model,
        ):
            eval_seconds, (record, outputs) = _best(
                lambda: evaluate_arrays(
                    model,
                    x,
                    labels,
                    "classification",
                    batch_size=args.batch,
                    seeds={"pool": args.seed},
                ),
                args.runs,
            )
        probs = outputs["probabilities"]
        if not np.array_equal(probs, ort_probs):
            raise SystemExit("sciserve's outputs differ from ONNX Runtime's on the same batches")
        metrics_seconds, ours = _best(
            lambda: classification_metrics(labels, probs, classes=list(CLASSES)), args.runs
        )
        sk_seconds, theirs = _best(lambda: _sklearn(y, probs), args.runs)
        checks = {
            "accuracy": abs(ours.accuracy - theirs["accuracy"]) < 1e-12,
            "balanced_accuracy": abs(ours.balanced_accuracy - theirs["balanced_accuracy"]) < 1e-12,
            "f1": np.allclose([c.f1 for c in ours.per_class], theirs["prf"][2], rtol=1e-10),
            "roc_auc_macro": abs((ours.roc_auc_macro or 0) - theirs["roc_auc_macro"]) < 1e-9,
            "log_loss": abs(ours.log_loss - theirs["log_loss"]) < 1e-9,
            "confusion": np.array_equal(ours.confusion_matrix, theirs["confusion"]),
        }
        if not all(checks.values()):
            raise SystemExit(f"metrics disagree with scikit-learn: {checks}")

    by_hand = ort_seconds + sk_seconds
    overhead = (eval_seconds - by_hand) / ort_seconds
    results = {
        "rows": args.rows,
        "batch": args.batch,
        "classes": len(CLASSES),
        "runs": args.runs,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
        },
        "seconds": {
            "onnxruntime": round(ort_seconds, 4),
            "evaluate": round(eval_seconds, 4),
            "evaluate_model_calls": round(record.performance.seconds, 4),
            "sciserve_metrics": round(metrics_seconds, 4),
            "sklearn_metrics": round(sk_seconds, 4),
        },
        "rows_per_second": {
            "onnxruntime": round(args.rows / ort_seconds),
            "evaluate": round(args.rows / eval_seconds),
        },
        "overhead_vs_by_hand": round(overhead, 4),
        "overhead_vs_model_alone": round((eval_seconds - ort_seconds) / ort_seconds, 4),
        "target": f"(evaluate - (onnxruntime + sklearn)) / onnxruntime <= {TARGET_OVERHEAD:.0%}",
        "verdict": "PASS" if overhead <= TARGET_OVERHEAD else "FAIL",
        "metrics_agree_with_sklearn": checks,
        "predictions_sha256": record.predictions_sha256,
    }
    text = json.dumps(results, indent=2, default=bool)
    print(text)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"evaluate-{stamp}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
