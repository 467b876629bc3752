"""The ``xgboost`` runtime: boosters saved as XGBoost JSON or UBJSON.

Both formats are pure data, so loading one never runs code shipped in a
package (unlike pickled ``XGBClassifier`` objects, which are not accepted).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import (
    DependencyMissing,
    DeviceUnavailable,
    InvalidInput,
    ManifestError,
    ModelExecutionError,
    ModelNotReady,
    Problem,
)
from ..package.manifest import TensorSpec
from ._tensors import check_inputs, conform_output, only_tensor
from .base import ModelSource, Runtime, Signature

__all__ = ["XGBoostRuntime"]

#: Suggested ``max_batch_size``: tree ensembles score rows independently.
DEFAULT_MAX_BATCH = 1024


def _import_xgboost() -> ModuleType:
    try:
        import xgboost
    except ImportError as exc:
        raise DependencyMissing(
            "the xgboost runtime needs XGBoost; install it with: pip install 'sciserve[xgboost]'"
        ) from exc
    module: ModuleType = xgboost
    return module


def _signature(path: Path) -> Signature | None:
    # UBJSON needs a decoder the standard library lacks; only JSON is read.
    if path.suffix != ".json":
        return None
    try:
        with path.open("rb") as fh:
            learner = json.load(fh)["learner"]
        params = learner["learner_model_param"]
        n_features = int(params["num_feature"])
        n_classes = int(params.get("num_class", "0"))
        n_targets = int(params.get("num_target", "1"))
        objective = str(learner.get("objective", {}).get("name", ""))
        names = [str(name) for name in learner.get("feature_names", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"{path.name} is not an XGBoost JSON model: {exc!r}") from exc
    if objective == "multi:softprob":
        output = {"name": "probabilities", "shape": [-1, n_classes]}
    elif objective == "binary:logistic":
        output = {"name": "probability", "shape": [-1]}
    elif n_targets > 1:
        output = {"name": "prediction", "shape": [-1, n_targets]}
    else:
        output = {"name": "prediction", "shape": [-1]}
    spec = {"name": "input", "datatype": "FP32", "shape": [-1, n_features]}
    return Signature(
        inputs=[
            TensorSpec.model_validate(
                {**spec, "feature_names": names if len(names) == n_features else None}
            )
        ],
        outputs=[TensorSpec.model_validate({**output, "datatype": "FP32"})],
        max_batch_size=DEFAULT_MAX_BATCH,
        named=False,
    )


class XGBoostRuntime(Runtime):
    """Scores one ``[-1, n_features]`` FP32/FP64 matrix with an XGBoost booster.

    The output is what ``Booster.inplace_predict`` returns, cast to the
    manifest's datatype and rank.  Runtime option: ``num_threads`` (default 1).
    """

    name = "xgboost"
    suffixes = (".json", ".ubj")

    def __init__(self, source: ModelSource) -> None:
        super().__init__(source)
        self._booster: Any = None

    @classmethod
    def inspect(cls, model_file: Path) -> Signature | None:
        return _signature(model_file)

    def load(self) -> None:
        if self.source.device != "cpu":
            raise DeviceUnavailable(
                f"the xgboost runtime runs on the CPU only, not {self.source.device!r}"
            )
        manifest = self.source.manifest
        spec = only_tensor(manifest.inputs, "inputs", self.name)
        only_tensor(manifest.outputs, "outputs", self.name)
        if spec.datatype not in ("FP32", "FP64"):
            raise ManifestError(
                [Problem("inputs[0].datatype", "XGBoost takes FP32 or FP64 features")],
                manifest.ref,
            )
        xgboost = _import_xgboost()
        path = self.source.model_path
        booster = xgboost.Booster()
        try:
            booster.load_model(str(path))
        except (xgboost.core.XGBoostError, UnicodeDecodeError) as exc:
            # XGBoost fails to decode its own error text for some garbage input.
            raise InvalidInput(f"XGBoost cannot read {path.name}: {exc}") from exc
        booster.set_param({"nthread": int(self.source.options.get("num_threads", 1))})
        n_features = booster.num_features()
        if spec.shape[-1:] not in ([-1], [n_features]):
            raise ManifestError(
                [Problem("inputs[0].shape", f"the model takes {n_features} features")],
                manifest.ref,
            )
        self._booster = booster

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._booster is None:
            raise ModelNotReady(f"{self.source.manifest.ref} is not loaded")
        manifest = self.source.manifest
        (features,) = check_inputs(manifest.inputs, inputs)
        try:
            result = self._booster.inplace_predict(features)
        except Exception as exc:  # XGBoostError, or ValueError for odd shapes
            raise ModelExecutionError(f"{manifest.ref} failed: {exc}") from exc
        output = manifest.outputs[0]
        return {output.name: conform_output(output, result)}

    def unload(self) -> None:
        self._booster = None
