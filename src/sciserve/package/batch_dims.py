"""Which dimension of each tensor is the batch dimension, from a model file's
dimension names.

Formats like ONNX name their variable dimensions (``["batch", 64]``,
``["T", "B", 8]``).  A name that every input and every output carries is the
batch dimension: a recurrent model taking ``[T, B, F]`` and answering
``[B, C]`` batches along dim 1 of its input and dim 0 of its output.
Batching along the wrong dimension concatenates requests in time and hands
out wrong numbers, so :func:`infer_batch_dims` only guesses dim 0 where the
file names nothing that says otherwise, and :func:`batch_dim_problems`
flags manifests that contradict the names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import Problem
from .manifest import Manifest

__all__ = ["BatchDims", "Dim", "batch_dim_problems", "infer_batch_dims"]

#: One dimension as a model file declares it: a symbolic name, a fixed size,
#: or ``None`` when it is variable and unnamed.
Dim = str | int | None

#: Names that exporters make up for dimensions nobody named (tf2onnx's
#: ``unk__12``, PyTorch's ``x_dynamic_axes_1``): they say nothing.
_PLACEHOLDER = re.compile(r"unk__\d+|.+_dynamic_axes_\d+")
#: Names people give a batch dimension.
_BATCH_LIKE = re.compile(r"(?i)b|n|bs|n_?samples|num_?samples|.*batch.*")


@dataclass(frozen=True)
class BatchDims:
    """Where each tensor's batch dimension lies, as a model file tells it."""

    #: Per input and per output (in order), or ``None`` when the model cannot batch.
    inputs: tuple[int, ...] | None
    outputs: tuple[int, ...] | None
    #: The dimension name every tensor shares, when the file names one.
    name: str | None
    #: How this was found, for people (``sciserve init`` prints it).
    note: str
    #: ``name`` is the only name every tensor shares (not picked among several).
    certain: bool = False

    @property
    def batchable(self) -> bool:
        return self.inputs is not None


def _named(dim: Dim) -> str | None:
    if isinstance(dim, str) and dim and not _PLACEHOLDER.fullmatch(dim):
        return dim
    return None


def _shared_name(tensors: Sequence[Sequence[Dim]]) -> tuple[str | None, list[str]]:
    """The one name every tensor carries exactly once (and all such candidates)."""
    names_of = [[_named(d) for d in dims] for dims in tensors]
    candidates = sorted({n for n in names_of[0] if n is not None} if names_of else set())
    candidates = [n for n in candidates if all(names.count(n) == 1 for names in names_of)]
    if len(candidates) <= 1:
        return (candidates[0] if candidates else None), candidates
    narrowed = [n for n in candidates if _BATCH_LIKE.fullmatch(n)]
    if len(narrowed) != 1:
        leading = [n for n in candidates if all(names[0] == n for names in names_of)]
        narrowed = leading if len(leading) == 1 else narrowed
    return (narrowed[0] if len(narrowed) == 1 else None), candidates


def infer_batch_dims(
    inputs: Sequence[Sequence[Dim]], outputs: Sequence[Sequence[Dim]]
) -> BatchDims:
    """Infer the batch dimension of every input and output from their dims.

    The name shared by every tensor wins (with several, a batch-like name such
    as ``batch``, ``B`` or ``N``, else the one leading every tensor).  With no
    name shared, dim 0 is assumed only if it is variable in every tensor and
    the names it carries (if any) agree and look like a batch; otherwise the
    model is not batched (``max_batch_size: 0``), the safe choice: a model
    that does batch needs its ``batch_dim`` set by hand.
    """
    tensors = [*inputs, *outputs]
    off = "batching is off (max_batch_size: 0); if the model batches, set max_batch_size and "
    off += "each tensor's batch_dim in the manifest"
    if not inputs or not outputs:
        return BatchDims(None, None, None, "the model file describes no inputs or outputs; " + off)
    if any(len(dims) == 0 for dims in tensors):
        return BatchDims(None, None, None, "a tensor has no dimensions; " + off)
    name, candidates = _shared_name(tensors)
    if name is not None:
        where = [[_named(d) for d in dims].index(name) for dims in tensors]
        note = f"batch dimension {name!r}, the dimension name every input and output shares"
        return BatchDims(
            tuple(where[: len(inputs)]),
            tuple(where[len(inputs) :]),
            name,
            note,
            certain=len(candidates) == 1,
        )
    if candidates:
        return BatchDims(
            None,
            None,
            None,
            f"every input and output shares the dimension names {candidates}, and none of them "
            "is clearly the batch; " + off,
        )
    free = all(dims[0] is None or isinstance(dims[0], str) for dims in tensors)
    names = {name for dims in tensors if (name := _named(dims[0])) is not None}
    if free and (not names or (len(names) == 1 and _BATCH_LIKE.fullmatch(next(iter(names))))):
        zeros = (0,) * len(inputs), (0,) * len(outputs)
        return BatchDims(
            *zeros,
            None,
            "the model file names no batch dimension shared by every input and output; "
            "assuming dim 0 of every tensor (the server refuses answers whose rows do not match)",
        )
    return BatchDims(
        None,
        None,
        None,
        "the model file names no dimension that every input and output shares; " + off,
    )


def batch_dim_problems(
    manifest: Manifest,
    inputs: Sequence[Sequence[Dim]],
    outputs: Sequence[Sequence[Dim]],
    source: str,
) -> list[Problem]:
    """Where the manifest's batch dims contradict the dimension names of the model file.

    ``inputs`` and ``outputs`` hold the file's dims of the manifest's tensors,
    in the manifest's order.  A manifest that does not batch contradicts
    nothing.  Batching along another dim than the one name every tensor
    shares is an error; other doubts (a name picked among several, batch
    dims that carry different names) are warnings, as exporters often name
    one batch dimension differently in inputs and outputs.
    """
    if manifest.max_batch_size == 0 or len(inputs) != len(manifest.inputs):
        return []
    if len(outputs) != len(manifest.outputs):
        return []
    found = infer_batch_dims(inputs, outputs)
    problems: list[Problem] = []
    at: dict[str, list[str]] = {}
    for group, specs, dims_of, want in (
        ("inputs", manifest.inputs, inputs, found.inputs),
        ("outputs", manifest.outputs, outputs, found.outputs),
    ):
        for i, (spec, dims) in enumerate(zip(specs, dims_of, strict=True)):
            bdim = manifest.batch_dim_of(spec)
            if bdim is None or bdim >= len(dims):
                continue  # the manifest's own shape checks report these
            if found.name is not None and want is not None and want[i] != bdim:
                problems.append(
                    Problem(
                        f"{group}[{i}].batch_dim",
                        f"{spec.name!r} batches along dim {bdim}, but in {source} its batch "
                        f"dimension {found.name!r} is dim {want[i]}",
                        f"set batch_dim: {want[i]} on {spec.name!r} "
                        "(or run 'sciserve init --update')",
                        severity="error" if found.certain else "warning",
                    )
                )
            name = _named(dims[bdim])
            if name is not None:
                at.setdefault(name, []).append(spec.name)
    if not problems and len(at) > 1:
        described = "; ".join(f"{name!r} for {', '.join(map(repr, ts))}" for name, ts in at.items())
        problems.append(
            Problem(
                "batch_dim",
                f"the batch dims name different dimensions of {source} ({described})",
                "check that these are one batch dimension; if not, set each tensor's "
                "batch_dim to the dimension that holds the batch, or max_batch_size: 0",
                severity="warning",
            )
        )
    return problems
