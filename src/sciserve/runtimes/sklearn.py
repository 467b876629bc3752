"""The ``sklearn`` runtime: scikit-learn estimators saved with skops or joblib.

Two formats, two levels of trust:

* ``.skops`` files are loaded by skops, which rebuilds only types it is told
  to trust.  sciserve trusts skops' defaults plus :data:`ALLOWED_TYPES`, a
  short list of scikit-learn's own data-only classes, and refuses any other
  type with :class:`PermissionDenied` before loading anything.
* ``.pkl`` / ``.pickle`` / ``.joblib`` files are pickles: loading one runs
  whatever code it names.  :meth:`SklearnRuntime.executes_code` says so, and
  the registry only lets such packages in from trusted namespaces.
"""

from __future__ import annotations

import importlib
import io
import json
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import (
    DependencyMissing,
    InvalidInput,
    ManifestError,
    ModelExecutionError,
    PermissionDenied,
    Problem,
)
from ..package.manifest import Manifest, TensorSpec
from ._matrix import MatrixRuntime, Score
from .base import Signature

__all__ = ["ALLOWED_TYPES", "METHODS", "SklearnRuntime"]

#: Types a ``.skops`` file may hold beyond those skops trusts by default.
#: Each is a scikit-learn class that stores only arrays and numbers.
ALLOWED_TYPES = frozenset(
    {
        "sklearn.tree._tree.Tree",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.neighbors._ball_tree.BallTree",
        "sklearn.metrics._dist_metrics.EuclideanDistance64",
        "sklearn.metrics._dist_metrics.ManhattanDistance64",
        "sklearn.metrics._dist_metrics.MinkowskiDistance64",
        "sklearn.metrics._dist_metrics.ChebyshevDistance64",
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
        "sklearn.gaussian_process.kernels.ConstantKernel",
        "sklearn.gaussian_process.kernels.DotProduct",
        "sklearn.gaussian_process.kernels.Exponentiation",
        "sklearn.gaussian_process.kernels.ExpSineSquared",
        "sklearn.gaussian_process.kernels.Matern",
        "sklearn.gaussian_process.kernels.Product",
        "sklearn.gaussian_process.kernels.RBF",
        "sklearn.gaussian_process.kernels.RationalQuadratic",
        "sklearn.gaussian_process.kernels.Sum",
        "sklearn.gaussian_process.kernels.WhiteKernel",
    }
)

#: Estimator methods the ``method`` runtime option may name.
METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function", "transform")

_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")


def _import(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyMissing(
            f"the sklearn runtime needs {module.split('.')[0]}; "
            "install it with: pip install 'sciserve[trees]'"
        ) from exc


class SklearnRuntime(MatrixRuntime):
    """Runs a fitted scikit-learn estimator on one ``[-1, n_features]`` matrix.

    It calls ``predict_proba`` when the output declares ``labels`` or its
    name mentions probabilities, else ``predict``; the ``method`` runtime
    option overrides the choice (one of :data:`METHODS`).
    """

    name = "sklearn"
    library = "scikit-learn"
    #: Estimators take whatever their training data was.
    input_datatypes = None
    suffixes = (".skops", *_PICKLE_SUFFIXES)

    @classmethod
    def executes_code(cls, manifest: Manifest) -> bool:
        # Anything but skops is unpickled, which can run arbitrary code.
        return not (manifest.model_file or "").endswith(".skops")

    @classmethod
    def inspect(cls, model_file: Path) -> Signature | None:
        # Pickles are never opened here: reading one is running it.
        if model_file.suffix != ".skops":
            return None
        return _skops_signature(model_file)

    def _open(self, features: TensorSpec, output: TensorSpec) -> Score:
        method = self._method(output)
        path = self.source.model_path
        estimator = _load_skops(path) if path.suffix == ".skops" else _load_pickle(path)
        predict = getattr(estimator, method, None)
        if not callable(predict):
            raise ManifestError(
                [
                    Problem(
                        "runtime_options.method", f"{type(estimator).__name__} has no {method}()"
                    )
                ],
                self.source.manifest.ref,
            )
        score: Score = predict
        return score

    def _method(self, output: TensorSpec) -> str:
        method = self.source.options.get("method")
        if method is None:
            wants_proba = output.labels is not None or "prob" in output.name.lower()
            return "predict_proba" if wants_proba else "predict"
        if method not in METHODS:
            raise ManifestError(
                [
                    Problem(
                        "runtime_options.method",
                        f"{method!r} is not an estimator method sciserve calls",
                        f"use one of {', '.join(METHODS)}",
                    )
                ],
                self.source.manifest.ref,
            )
        return str(method)


def _load_skops(path: Path) -> Any:
    sio = _import("skops.io")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"{path.name} is not a readable skops file: {exc}") from exc
    refused = sorted(set(untrusted) - ALLOWED_TYPES)
    if refused:
        raise PermissionDenied(
            f"{path.name} contains types sciserve does not load from a skops file: "
            f"{', '.join(refused)}"
        )
    try:
        # Every type passed as trusted was just checked against ALLOWED_TYPES.
        return sio.load(path, trusted=untrusted)
    except Exception as exc:  # skops re-raises whatever a constructor raised
        raise InvalidInput(f"skops cannot load {path.name}: {exc}") from exc


def _load_pickle(path: Path) -> Any:
    joblib = _import("joblib")
    try:
        return joblib.load(path)
    except Exception as exc:  # unpickling can raise anything at all
        raise ModelExecutionError(f"cannot unpickle {path.name}: {exc}") from exc


def _skops_signature(path: Path) -> Signature | None:
    """Best-effort signature from a skops file's ``schema.json``, read as data.

    Only a top-level estimator's ``n_features_in_`` and ``classes_`` are read
    (pipelines store neither); ``None`` when they are absent.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            schema = json.loads(archive.read("schema.json"))
            attributes = schema["content"]["content"]
            n_features = int(json.loads(attributes["n_features_in_"]["content"]))
            labels = _skops_labels(archive, attributes.get("classes_"))
    except (OSError, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"{path.name} is not a skops file: {exc}") from exc
    except (KeyError, TypeError, ValueError):
        return None
    features = {"name": "input", "datatype": "FP64", "shape": [-1, n_features]}
    if labels is None:
        output: dict[str, Any] = {"name": "prediction", "datatype": "FP64", "shape": [-1]}
    else:
        output = {
            "name": "probabilities",
            "datatype": "FP64",
            "shape": [-1, len(labels)],
            "labels": labels,
        }
    return Signature(
        inputs=[TensorSpec.model_validate(features)],
        outputs=[TensorSpec.model_validate(output)],
        max_batch_size=1024,
        named=False,
    )


def _skops_labels(archive: zipfile.ZipFile, node: Any) -> list[str] | None:
    if not isinstance(node, dict) or node.get("__loader__") != "NdArrayNode":
        return None
    if node.get("type") == "json":  # object arrays are stored inline
        return [str(json.loads(item["content"])) for item in node["content"]]
    # Other arrays are .npy members; allow_pickle=False refuses anything
    # that would need unpickling.
    classes = np.load(io.BytesIO(archive.read(str(node["file"]))), allow_pickle=False)
    return [str(label) for label in classes.tolist()]
