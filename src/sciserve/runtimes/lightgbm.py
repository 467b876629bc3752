"""The ``lightgbm`` runtime: gradient-boosted trees saved in LightGBM's text format.

The text format is pure data (tree splits and leaf values), so loading it
never runs code shipped in a package.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ..errors import (
    DependencyMissing,
    InvalidInput,
)
from ..package.manifest import TensorSpec
from ._matrix import MatrixRuntime, Score
from .base import Signature

__all__ = ["LightGBMRuntime", "read_header"]

#: Suggested ``max_batch_size``: tree ensembles score rows independently.
DEFAULT_MAX_BATCH = 1024

# A header is a few short lines plus one line per feature list; these bounds
# keep a hostile file from making ``inspect`` read gigabytes.
_MAX_HEADER_LINES = 1000
_MAX_LINE_BYTES = 16 * 2**20


def _import_lightgbm() -> ModuleType:
    try:
        import lightgbm
    except ImportError as exc:
        raise DependencyMissing(
            "the lightgbm runtime needs LightGBM; install it with: pip install 'sciserve[trees]'"
        ) from exc
    return lightgbm


def read_header(path: Path) -> dict[str, str]:
    """The ``key=value`` lines before the first tree of a LightGBM text model.

    Raises :class:`InvalidInput` when the file is not in LightGBM's text format.
    """
    header: dict[str, str] = {}
    with path.open("rb") as fh:
        if fh.readline(64).strip() != b"tree":
            raise InvalidInput(f"{path.name} is not a LightGBM text model (no 'tree' header)")
        for _ in range(_MAX_HEADER_LINES):
            line = fh.readline(_MAX_LINE_BYTES).decode("utf-8", "replace").strip()
            # The header ends at the first blank line, before "Tree=0".
            if not line or line.startswith("Tree="):
                break
            key, sep, value = line.partition("=")
            if sep:
                header[key] = value
    return header


def _signature(path: Path) -> Signature:
    header = read_header(path)
    try:
        n_features = int(header["max_feature_idx"]) + 1
        n_classes = int(header.get("num_class", "1"))
    except (KeyError, ValueError) as exc:
        raise InvalidInput(f"{path.name}: the LightGBM header lacks a valid {exc}") from exc
    names = header.get("feature_names", "").split()
    # LightGBM invents Column_<i> when trained without names: they say nothing.
    if names == [f"Column_{i}" for i in range(len(names))] or len(names) != n_features:
        names = []
    objective = header.get("objective", "").split(" ")[0]
    if n_classes > 1:
        output = {"name": "probabilities", "shape": [-1, n_classes]}
    elif objective in ("binary", "cross_entropy"):
        output = {"name": "probability", "shape": [-1]}
    else:
        output = {"name": "prediction", "shape": [-1]}
    spec = {"name": "input", "datatype": "FP32", "shape": [-1, n_features]}
    return Signature(
        inputs=[TensorSpec.model_validate({**spec, "feature_names": names or None})],
        outputs=[TensorSpec.model_validate({**output, "datatype": "FP32"})],
        max_batch_size=DEFAULT_MAX_BATCH,
        named=False,
    )


class LightGBMRuntime(MatrixRuntime):
    """Scores one ``[-1, n_features]`` FP32/FP64 matrix with a LightGBM booster.

    The output is what ``Booster.predict`` returns (class probabilities for
    multiclass models), cast to the manifest's datatype and rank.  Runtime
    options: ``num_threads`` (default 1), ``raw_score`` (default false).
    """

    name = "lightgbm"
    library = "LightGBM"
    suffixes = (".txt", ".lgb")

    @classmethod
    def inspect(cls, model_file: Path) -> Signature | None:
        return _signature(model_file)

    def _open(self, features: TensorSpec, output: TensorSpec) -> Score:
        lightgbm = _import_lightgbm()
        path = self.source.model_path
        try:
            booster = lightgbm.Booster(model_file=str(path))
        except lightgbm.basic.LightGBMError as exc:
            raise InvalidInput(f"LightGBM cannot read {path.name}: {exc}") from exc
        self._check_width(features, booster.num_feature())
        options = self.source.options
        raw_score = bool(options.get("raw_score", False))
        num_threads = int(options.get("num_threads", 1))
        return lambda matrix: booster.predict(matrix, raw_score=raw_score, num_threads=num_threads)
