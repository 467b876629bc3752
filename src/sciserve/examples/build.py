"""Build the example model packages from scratch, offline and reproducibly.

:func:`build_examples` simulates a labelled light-curve data set, trains two
classifiers on its features and writes each as a complete model package:

``lc-classifier``
    A small neural network (features → 32 → 32 → 5) trained with plain
    numpy and written as an ONNX graph, standardisation included.
``lc-classifier-gbm``
    A LightGBM multiclass model in LightGBM's text format (needs the
    ``trees`` extra).

Both take the ``features`` vector of :mod:`sciserve.examples.features` and
return class ``probabilities`` over :data:`~sciserve.examples.CLASSES`.
Every random draw is seeded, LightGBM trains on one thread in its
deterministic mode and no file records a timestamp, so the same seed and
library versions give the same bytes; the versions that can change the bytes
are named in each manifest's description.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

from .._hashing import sha256_file
from ..errors import Conflict, DependencyMissing, SciserveError
from ..package.manifest import (
    MANIFEST_NAME,
    Author,
    Citation,
    CodeReference,
    DataReference,
    FileEntry,
    Manifest,
    MetricValue,
    TensorSpec,
    dump_manifest,
    load_manifest,
)
from .features import FEATURE_NAMES, FEATURE_SET, extract_many
from .lightcurves import CLASSES, simulate

__all__ = ["DATASET", "build_examples"]

#: Name of the simulated data set, as recorded in metrics and data references.
DATASET = "synthetic-lightcurves-v1"
N_TRAIN = 4000
N_TEST = 1000
VERSION = "1.0.0"
NAMESPACE = "examples"
LICENSE = "CC-BY-4.0"
AUTHORS = "The sciserve developers"
REPOSITORY = "https://github.com/sciserve/sciserve"

_TAGS = (
    "astronomy",
    "time-domain",
    "light-curves",
    "classification",
    "lsst",
    "synthetic",
    "example",
)

_PURPOSE = (
    "Classifies the light curve of a transient or variable source as "
    f"{', '.join(CLASSES[:-1])} or {CLASSES[-1]} from its broker-style features."
)
_PACKAGE_NAMES = ("lc-classifier", "lc-classifier-gbm")
_GBM_ROUNDS = 60
_GBM_LEAVES = 8
_OPSET = 17
# IR version 8 is the one that goes with opset 17; every onnxruntime since
# 1.13 reads it.
_IR_VERSION = 8
# A fixed timestamp for archive members (the earliest a zip file can hold).
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]


def build_examples(out_dir: Path, *, seed: int = 42) -> list[Path]:
    """Write the example packages under ``out_dir`` and return their directories.

    The packages are ``out_dir/lc-classifier`` (ONNX) and
    ``out_dir/lc-classifier-gbm`` (LightGBM).  A package directory left by an
    earlier build is replaced; any other existing directory of that name
    raises :class:`~sciserve.errors.Conflict`.  Takes a few seconds of CPU.
    """
    out_dir = Path(out_dir)
    # Fail before the seconds of training, not after.
    for name in _PACKAGE_NAMES:
        _check_replaceable(out_dir / name)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = _Data.generate(seed)
    data_file = _npz_bytes(
        {
            "features": data.x_train,
            "labels": data.y_train.astype(np.uint8),
            "feature_names": np.asarray(FEATURE_NAMES),
            "classes": np.asarray(CLASSES),
        }
    )
    packages = [_mlp_package(data, seed), _gbm_package(data, seed)]
    return [_write_package(out_dir, package, data, data_file) for package in packages]


# -- data --------------------------------------------------------------------


@dataclass(frozen=True)
class _Data:
    """Features and class indices of the training and held-out objects."""

    seed: int
    x_train: npt.NDArray[np.float32]
    y_train: IntArray
    x_test: npt.NDArray[np.float32]
    y_test: IntArray

    @classmethod
    def generate(cls, seed: int) -> _Data:
        # The held-out objects come from their own seed, so no object (and no
        # shared random draw) appears in both splits.
        train = simulate(N_TRAIN, seed=seed)
        test = simulate(N_TEST, seed=seed + 1)
        return cls(
            seed=seed,
            x_train=extract_many(train),
            y_train=np.array([CLASSES.index(lc.label) for lc in train], dtype=np.intp),
            x_test=extract_many(test),
            y_test=np.array([CLASSES.index(lc.label) for lc in test], dtype=np.intp),
        )

    @property
    def training_reference(self) -> str:
        return f"urn:sciserve:{DATASET}?seed={self.seed}&n={N_TRAIN}"

    @property
    def test_reference(self) -> str:
        return f"urn:sciserve:{DATASET}?seed={self.seed + 1}&n={N_TEST}"


def _npz_bytes(arrays: dict[str, npt.NDArray[np.generic]]) -> bytes:
    """An ``.npz`` archive that :func:`numpy.load` reads, with reproducible bytes.

    :func:`numpy.savez` stamps each member with the current time; here every
    member gets the same fixed time and is stored uncompressed, so the
    archive does not depend on the clock or on the zlib version either.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.create_system = 3  # the same on every platform
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


# -- metrics -----------------------------------------------------------------


def _metrics(y_true: IntArray, probabilities: npt.NDArray[np.floating]) -> list[MetricValue]:
    """Accuracy and macro-averaged F1 on the held-out split."""
    predicted = np.argmax(probabilities, axis=1)
    f1 = []
    for label in range(len(CLASSES)):
        true_pos = np.sum((predicted == label) & (y_true == label))
        claimed = np.sum(predicted == label) + np.sum(y_true == label)
        f1.append(2.0 * true_pos / claimed if claimed else 0.0)
    # Four decimals: enough to compare models, and stable across platforms
    # whose last bits of floating point differ.
    scores = {"accuracy": np.mean(predicted == y_true), "macro_f1": np.mean(f1)}
    return [
        MetricValue(name=name, value=round(float(value), 4), dataset=DATASET, split="test")
        for name, value in scores.items()
    ]


# -- the neural network ------------------------------------------------------


@dataclass(frozen=True)
class _Mlp:
    """A trained ReLU network with its input standardisation."""

    mean: FloatArray
    scale: FloatArray
    layers: tuple[tuple[FloatArray, FloatArray], ...]

    def logits(self, x: npt.NDArray[np.floating]) -> FloatArray:
        h = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        for weight, bias in self.layers[:-1]:
            h = np.maximum(h @ weight + bias, 0.0)
        weight, bias = self.layers[-1]
        return np.asarray(h @ weight + bias)


def _softmax(logits: FloatArray) -> FloatArray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True))


def _train_mlp(
    x: npt.NDArray[np.float32],
    y: IntArray,
    *,
    seed: int,
    hidden: tuple[int, ...] = (32, 32),
    epochs: int = 60,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
) -> _Mlp:
    """Mini-batch Adam on the softmax cross-entropy, in float64 numpy."""
    rng = np.random.default_rng(seed)
    mean = x.mean(axis=0, dtype=np.float64)
    scale = x.std(axis=0, dtype=np.float64)
    # A constant feature carries no information; leave it unscaled rather
    # than divide by zero.
    scale = np.where(scale > 1e-12, scale, 1.0)
    xs = (x.astype(np.float64) - mean) / scale
    onehot = np.eye(len(CLASSES))[y]

    sizes = (x.shape[1], *hidden, len(CLASSES))
    # He initialisation suits ReLU layers.
    params = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        params += [rng.normal(0.0, np.sqrt(2.0 / fan_in), (fan_in, fan_out)), np.zeros(fan_out)]
    adam = _Adam(params, learning_rate)

    for _ in range(epochs):
        order = rng.permutation(len(xs))
        for start in range(0, len(xs), batch_size):
            batch = order[start : start + batch_size]
            grads = _gradients(params, xs[batch], onehot[batch])
            for i in range(0, len(params), 2):
                grads[i] += weight_decay * params[i]
            adam.step(params, grads)

    layers = tuple((params[i], params[i + 1]) for i in range(0, len(params), 2))
    return _Mlp(mean=mean, scale=scale, layers=layers)


def _gradients(params: list[FloatArray], x: FloatArray, onehot: FloatArray) -> list[FloatArray]:
    """Back-propagate the mean cross-entropy through the ReLU network."""
    activations = [x]
    for i in range(0, len(params) - 2, 2):
        activations.append(np.maximum(activations[-1] @ params[i] + params[i + 1], 0.0))
    delta = (_softmax(activations[-1] @ params[-2] + params[-1]) - onehot) / len(x)
    grads: list[FloatArray] = [np.empty(0)] * len(params)
    for i in range(len(params) - 2, -1, -2):
        grads[i] = activations[i // 2].T @ delta
        grads[i + 1] = delta.sum(axis=0)
        if i:
            # ReLU passes the gradient only where it was active.
            delta = (delta @ params[i].T) * (activations[i // 2] > 0)
    return grads


class _Adam:
    """The Adam optimiser (Kingma & Ba, 2015), updating arrays in place."""

    def __init__(
        self, params: list[FloatArray], lr: float, beta1: float = 0.9, beta2: float = 0.999
    ) -> None:
        self.lr, self.beta1, self.beta2 = lr, beta1, beta2
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, params: list[FloatArray], grads: list[FloatArray]) -> None:
        self.t += 1
        correction = np.sqrt(1.0 - self.beta2**self.t) / (1.0 - self.beta1**self.t)
        for p, g, m, v in zip(params, grads, self.m, self.v, strict=True):
            m *= self.beta1
            m += (1.0 - self.beta1) * g
            v *= self.beta2
            v += (1.0 - self.beta2) * g * g
            p -= self.lr * correction * m / (np.sqrt(v) + 1e-8)


def _mlp_to_onnx(mlp: _Mlp) -> onnx.ModelProto:
    """The network as an ONNX graph: Sub, Div, then Gemm/Relu layers and Softmax."""
    n_features = mlp.mean.size
    f32 = np.float32
    initializers = [
        numpy_helper.from_array(mlp.mean.astype(f32), "feature_mean"),
        numpy_helper.from_array(mlp.scale.astype(f32), "feature_scale"),
    ]
    nodes = [
        helper.make_node("Sub", ["features", "feature_mean"], ["centred"], name="centre"),
        helper.make_node("Div", ["centred", "feature_scale"], ["h0"], name="standardise"),
    ]
    for index, (weight, bias) in enumerate(mlp.layers, start=1):
        initializers += [
            numpy_helper.from_array(weight.astype(f32), f"w{index}"),
            numpy_helper.from_array(bias.astype(f32), f"b{index}"),
        ]
        last = index == len(mlp.layers)
        out = "logits" if last else f"z{index}"
        nodes.append(
            helper.make_node(
                "Gemm", [f"h{index - 1}", f"w{index}", f"b{index}"], [out], name=f"dense{index}"
            )
        )
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"h{index}"], name=f"relu{index}"))
    nodes.append(
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1, name="softmax")
    )
    graph = helper.make_graph(
        nodes,
        "lc_classifier",
        inputs=[
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_features])
        ],
        outputs=[
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, ["batch", len(CLASSES)]
            )
        ],
        initializer=initializers,
        doc_string=f"Light-curve classifier over {FEATURE_SET}.",
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _OPSET)],
        ir_version=_IR_VERSION,
        producer_name="sciserve.examples",
        producer_version="1",
    )
    helper.set_model_props(
        model,
        {"labels": ",".join(CLASSES), "feature_names": ",".join(FEATURE_NAMES)},
    )
    onnx.checker.check_model(model, full_check=True)
    return model


# -- packages ----------------------------------------------------------------


@dataclass(frozen=True)
class _Package:
    """A trained model, ready to be written with its metadata."""

    name: str
    runtime: str
    model_file: str
    write_model: Callable[[Path], object]
    description: str
    metrics: list[MetricValue]
    tags: tuple[str, ...]


def _mlp_package(data: _Data, seed: int) -> _Package:
    mlp = _train_mlp(data.x_train, data.y_train, seed=seed)
    # Score the float32 weights that ship, not the float64 ones trained.
    shipped = _Mlp(
        mean=mlp.mean.astype(np.float32),
        scale=mlp.scale.astype(np.float32),
        layers=tuple((w.astype(np.float32), b.astype(np.float32)) for w, b in mlp.layers),
    )
    model_bytes = _mlp_to_onnx(mlp).SerializeToString()
    return _Package(
        name=_PACKAGE_NAMES[0],
        runtime="onnx",
        model_file="model.onnx",
        write_model=lambda path: path.write_bytes(model_bytes),
        description=(
            f"{_PURPOSE} A {len(FEATURE_NAMES)}-32-32-5 ReLU network with standardised "
            f"inputs, trained with mini-batch Adam on {N_TRAIN} simulated LSST-like light "
            f"curves. Built with numpy {np.__version__} and onnx {onnx.__version__}."
        ),
        metrics=_metrics(data.y_test, _softmax(shipped.logits(data.x_test))),
        tags=("neural-network", "onnx"),
    )


def _gbm_package(data: _Data, seed: int) -> _Package:
    try:
        import lightgbm
    except ImportError as exc:
        raise DependencyMissing(
            "the LightGBM example needs lightgbm; install it with: pip install 'sciserve[trees]'"
        ) from exc

    params = {
        "objective": "multiclass",
        "num_class": len(CLASSES),
        # Small trees and few rounds: as accurate on this data as bigger
        # models, at a third of the file size.
        "num_leaves": _GBM_LEAVES,
        "learning_rate": 0.15,
        "min_data_in_leaf": 20,
        # One thread and LightGBM's deterministic mode make the trees, and so
        # the saved text, identical from build to build.
        "num_threads": 1,
        "deterministic": True,
        "force_row_wise": True,
        "seed": seed,
        "verbose": -1,
    }
    train = lightgbm.Dataset(
        data.x_train, label=data.y_train, feature_name=list(FEATURE_NAMES), params=params
    )
    booster = lightgbm.train(params, train, num_boost_round=_GBM_ROUNDS)
    return _Package(
        name=_PACKAGE_NAMES[1],
        runtime="lightgbm",
        model_file="model.txt",
        write_model=lambda path: booster.save_model(path),
        description=(
            f"{_PURPOSE} A LightGBM multiclass model ({_GBM_ROUNDS} rounds of "
            f"{_GBM_LEAVES}-leaf trees) trained on {N_TRAIN} simulated LSST-like light "
            f"curves. Built with lightgbm {lightgbm.__version__}."
        ),
        metrics=_metrics(data.y_test, np.asarray(booster.predict(data.x_test))),
        tags=("gradient-boosting", "lightgbm"),
    )


def _write_package(out_dir: Path, package: _Package, data: _Data, data_file: bytes) -> Path:
    """Write one package into a scratch directory, then move it into place."""
    target = out_dir / package.name
    # Next to the target, so the final rename stays on one file system; made
    # with mkdir (not mkdtemp) so the package gets the usual permissions.
    staging = out_dir / f".{package.name}.{os.getpid()}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # left by a crashed earlier build
    staging.mkdir()
    try:
        package.write_model(staging / package.model_file)
        (staging / "training-data.npz").write_bytes(data_file)
        # Bytes, not text mode, so no platform turns the newlines into CRLF.
        (staging / "CITATION.cff").write_bytes(_citation(package).encode())
        files = [
            _file_entry(staging, package.model_file, "model"),
            _file_entry(staging, "training-data.npz", "data"),
            _file_entry(staging, "CITATION.cff", "citation"),
        ]
        manifest = _manifest(package, data, files)
        (staging / MANIFEST_NAME).write_bytes(dump_manifest(manifest).encode())
        _replace(target, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _check_replaceable(target: Path) -> None:
    """Refuse to touch ``target`` unless it is absent, empty or an earlier build.

    Only what a build wrote (a directory whose manifest names this very
    model) is ever deleted: anything else is the user's.
    """
    if not target.exists():
        return
    if target.is_dir():
        if not any(target.iterdir()):
            return
        try:
            if load_manifest(target).name == target.name:
                return
        except SciserveError:
            pass
    raise Conflict(
        f"{target} exists and is not an example package built earlier; "
        "move it away or choose another output directory"
    )


def _replace(target: Path, staging: Path) -> None:
    _check_replaceable(target)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def _file_entry(root: Path, path: str, role: Literal["model", "data", "citation"]) -> FileEntry:
    digest, size = sha256_file(root / path)
    return FileEntry(path=path, size=size, sha256=digest, role=role)


def _manifest(package: _Package, data: _Data, files: list[FileEntry]) -> Manifest:
    data_entry = next(entry for entry in files if entry.role == "data")
    return Manifest(
        name=package.name,
        version=VERSION,
        namespace=NAMESPACE,
        description=package.description,
        runtime=package.runtime,
        model_file=package.model_file,
        max_batch_size=1024,
        inputs=[
            TensorSpec(
                name="features",
                datatype="FP32",
                shape=[-1, len(FEATURE_NAMES)],
                description=(
                    f"Light-curve features in the column order of {FEATURE_SET} "
                    "(sciserve.examples.features.extract)."
                ),
                feature_names=list(FEATURE_NAMES),
            )
        ],
        outputs=[
            TensorSpec(
                name="probabilities",
                datatype="FP32",
                shape=[-1, len(CLASSES)],
                description="Probability of each class; each row sums to one.",
                labels=list(CLASSES),
            )
        ],
        files=files,
        license=LICENSE,
        authors=[Author(name=AUTHORS)],
        citation=Citation(cff="CITATION.cff"),
        training_data=[
            DataReference(
                name=f"{DATASET} (training split)",
                identifier=data.training_reference,
                sha256=data_entry.sha256,
                description=(
                    f"Features and labels of {N_TRAIN} simulated light curves, in "
                    f"training-data.npz; regenerate with sciserve.examples.simulate("
                    f"{N_TRAIN}, seed={data.seed})."
                ),
            )
        ],
        validation_data=[
            DataReference(
                name=f"{DATASET} (held-out split)",
                identifier=data.test_reference,
                description=(
                    f"{N_TEST} further simulated light curves; regenerate with "
                    f"sciserve.examples.simulate({N_TEST}, seed={data.seed + 1})."
                ),
            )
        ],
        code=CodeReference(repository=REPOSITORY, path="src/sciserve/examples/build.py"),
        compatible_with={"features": FEATURE_SET},
        intended_use=(
            "Demonstrating and testing sciserve: publishing, serving and streaming a light-curve "
            "classifier. Feed it features computed with sciserve.examples.features."
        ),
        limitations=(
            "Trained and evaluated on synthetic light curves only; not for real science. Real "
            "survey data differ in cadence, noise, host contamination and class mix, and the "
            "five classes leave out most kinds of real transients and variables."
        ),
        tags=[*_TAGS, *package.tags],
        metrics=package.metrics,
    )


def _citation(package: _Package) -> str:
    """A ``CITATION.cff`` (Citation File Format 1.2.0) for the package."""
    cff = {
        "cff-version": "1.2.0",
        "message": "If you use this model, please cite it as below.",
        "type": "software",
        "title": f"{package.name}: an example light-curve classifier for sciserve",
        "version": VERSION,
        "authors": [{"name": AUTHORS}],
        "license": LICENSE,
        "repository-code": REPOSITORY,
        "abstract": package.description,
        "keywords": ["astronomy", "time-domain", "light curves", "classification"],
    }
    return yaml.safe_dump(cff, sort_keys=False, allow_unicode=True, width=100)
