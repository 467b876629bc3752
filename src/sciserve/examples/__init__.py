"""Example models that sciserve builds for itself, offline and reproducibly.

:mod:`~sciserve.examples.lightcurves` simulates labelled multi-band light
curves of transients and variable sources, :mod:`~sciserve.examples.features`
summarises them as broker-style feature vectors, and
:mod:`~sciserve.examples.build` trains two classifiers on those features and
writes them as model packages ready to publish.
"""

from __future__ import annotations

from .build import build_examples
from .features import FEATURE_NAMES, extract, extract_many
from .lightcurves import CLASSES, LightCurve, simulate

__all__ = [
    "CLASSES",
    "FEATURE_NAMES",
    "LightCurve",
    "build_examples",
    "extract",
    "extract_many",
    "simulate",
]
