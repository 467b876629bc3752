"""Synthetic traffic of a small classifier, for the monitoring tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from sciserve.package.manifest import Manifest
from sciserve.registry.registry import VersionInfo

LABELS = ["star", "galaxy", "qso"]
REFERENCE_MIX = np.array([0.6, 0.3, 0.1])


def classifier_manifest(**extra: Any) -> Manifest:
    """A manifest with four named features, a labelled output and a score output."""
    return Manifest.model_validate(
        {
            "name": "clf",
            "version": "1.0.0",
            "runtime": "onnx",
            "model_file": "model.onnx",
            "max_batch_size": 64,
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [-1, 4],
                    "feature_names": ["mag", "color", "snr", "ext"],
                }
            ],
            "outputs": [
                {"name": "probs", "datatype": "FP32", "shape": [-1, 3], "labels": LABELS},
                {"name": "score", "datatype": "FP32", "shape": [-1, 1]},
            ],
            "files": [{"path": "model.onnx", "size": 1, "sha256": "0" * 64}],
            "license": "MIT",
            **extra,
        }
    )


class Traffic:
    """Requests whose features are N(0, 1) (feature 0 optionally shifted)
    and whose class mix is ``mix``."""

    def __init__(self, seed: int, shift: float = 0.0, mix: np.ndarray = REFERENCE_MIX) -> None:
        self.rng = np.random.default_rng(seed)
        self.shift = shift
        self.mix = mix

    def batch(self, rows: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        x = self.rng.normal(size=(rows, 4)).astype(np.float32)
        x[:, 0] += self.shift
        classes = self.rng.choice(len(LABELS), size=rows, p=self.mix)
        probs = np.full((rows, 3), 0.1, np.float32)
        probs[np.arange(rows), classes] = 0.8
        # The score barely depends on the shifted feature: drift must be seen in the inputs.
        score = (0.05 * x[:, :1] + self.rng.normal(size=(rows, 1))).astype(np.float32)
        return {"x": x}, {"probs": probs, "score": score}

    def requests(self, count: int) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """``count`` one-row requests (as the server hands them over)."""
        inputs, outputs = self.batch(count)
        return [
            ({"x": inputs["x"][i : i + 1]}, {k: v[i : i + 1] for k, v in outputs.items()})
            for i in range(count)
        ]


def version_info(
    digest: str, published_at: datetime | None = None, **manifest_extra: Any
) -> VersionInfo:
    """The registry's record of :func:`classifier_manifest` (not stored anywhere)."""
    return VersionInfo(
        manifest=classifier_manifest(**manifest_extra),
        digest=digest,
        size=1,
        published_at=published_at or datetime.now(UTC),
    )
