"""The ``xgboost`` runtime: boosters saved as XGBoost JSON or UBJSON.

Both formats are pure data, so loading one never runs code shipped in a
package (unlike pickled ``XGBClassifier`` objects, which are not accepted).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from ..errors import (
    DependencyMissing,
    InvalidInput,
)
from ..package.manifest import TensorSpec
from ._matrix import MatrixRuntime, Score
from .base import Signature

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


class XGBoostRuntime(MatrixRuntime):
    """Scores one ``[-1, n_features]`` FP32/FP64 matrix with an XGBoost booster.

    The output is what ``Booster.inplace_predict`` returns, cast to the
    manifest's datatype and rank.  Runtime option: ``num_threads`` (default 1).
    """

    name = "xgboost"
    library = "XGBoost"
    suffixes = (".json", ".ubj")

    @classmethod
    def inspect(cls, model_file: Path) -> Signature | None:
        return _signature(model_file)

    def _open(self, features: TensorSpec, output: TensorSpec) -> Score:
        xgboost = _import_xgboost()
        path = self.source.model_path
        booster = xgboost.Booster()
        try:
            booster.load_model(str(path))
        except (xgboost.core.XGBoostError, UnicodeDecodeError) as exc:
            # XGBoost fails to decode its own error text for some garbage input.
            raise InvalidInput(f"XGBoost cannot read {path.name}: {exc}") from exc
        booster.set_param({"nthread": int(self.source.options.get("num_threads", 1))})
        self._check_width(features, booster.num_features())
        score: Score = booster.inplace_predict
        return score
