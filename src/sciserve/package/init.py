"""``sciserve init``: scaffold a package manifest from an existing model file."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._hashing import sha256_file
from ..errors import InvalidInput, NotFound
from .manifest import (
    DATATYPES,
    MANIFEST_NAME,
    Citation,
    FileEntry,
    Manifest,
    TensorSpec,
    dump_manifest,
    load_manifest,
    parse_manifest,
)

__all__ = ["init_package", "parse_tensor_option", "refresh_files"]


def parse_tensor_option(text: str) -> TensorSpec:
    """Parse ``NAME:DATATYPE:SHAPE`` (shape as ``-1,64``, ``[-1,64]`` or ``-1x64``)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise InvalidInput(f"{text!r}: expected NAME:DATATYPE:SHAPE, e.g. x:FP32:-1,64")
    name, datatype, shape_text = parts
    datatype = datatype.upper()
    if datatype not in DATATYPES:
        raise InvalidInput(
            f"{text!r}: unknown datatype {datatype!r}; use one of " + ", ".join(DATATYPES)
        )
    dims = [d for d in re.split(r"[,x\s]+", shape_text.strip("[]() ")) if d]
    try:
        shape = [int(d) for d in dims]
    except ValueError as exc:
        raise InvalidInput(f"{text!r}: shape must be integers, e.g. -1,64") from exc
    try:
        return TensorSpec(name=name, datatype=datatype, shape=shape)  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidInput(f"{text!r}: {exc}") from exc


def _pick_runtime(model_file: Path, runtime: str | None) -> str:
    from ..runtimes import available_runtimes, get_runtime

    if runtime:
        get_runtime(runtime)
        return runtime
    suffix = "".join(model_file.suffixes[-1:]).lower()
    matches = []
    for name in available_runtimes():
        try:
            cls = get_runtime(name)
        except Exception:  # noqa: S112 - a broken plugin must not stop init
            continue
        if suffix in cls.suffixes:
            matches.append(name)
    if len(matches) != 1:
        raise InvalidInput(
            f"cannot tell the runtime of {model_file.name} "
            f"({'candidates: ' + ', '.join(matches) if matches else 'unknown suffix'}); "
            "pass --runtime"
        )
    return matches[0]


def init_package(
    model_file: str | Path,
    *,
    name: str,
    version: str,
    out: str | Path | None = None,
    runtime: str | None = None,
    namespace: str = "default",
    inputs: Sequence[TensorSpec] = (),
    outputs: Sequence[TensorSpec] = (),
    extra_files: Sequence[str | Path] = (),
    notes: list[str] | None = None,
    **fields: Any,
) -> Path:
    """Write ``sciserve.yaml`` for ``model_file`` and return its path.

    The manifest goes beside the model file, or into ``out`` (the model and
    extra files are then copied there).  The signature is read from the file
    where its format carries one (ONNX, LightGBM); explicit ``inputs`` /
    ``outputs`` override it.  A ``CITATION.cff`` beside the model is picked
    up.  Other manifest fields (``license``, ``description``, ``authors``, …)
    pass through ``fields``.  What a person should know about the result
    (how the batch dimension was found) is appended to ``notes``.
    """
    if notes is None:
        notes = []
    from ..runtimes import get_runtime

    model_file = Path(model_file)
    if not model_file.is_file():
        raise NotFound(f"no model file at {model_file}")
    runtime_name = _pick_runtime(model_file, runtime)
    src_dir = model_file.parent
    root = Path(out) if out is not None else src_dir
    root.mkdir(parents=True, exist_ok=True)
    members = [model_file, *map(Path, extra_files)]
    cff = src_dir / "CITATION.cff"
    if cff.is_file() and cff not in members:
        members.append(cff)
    for member in members:
        if not member.is_file():
            raise NotFound(f"no file at {member}")
        if member.parent.resolve() != root.resolve():
            shutil.copy2(member, root / member.name)

    signature = get_runtime(runtime_name).inspect(root / model_file.name)
    if signature is not None and signature.batch_note and not (inputs or outputs):
        notes.append(signature.batch_note)
    data: dict[str, Any] = {
        "name": name,
        "version": version,
        "namespace": namespace,
        "runtime": runtime_name,
        "model_file": model_file.name,
        "inputs": [
            t.model_dump(exclude_none=True)
            for t in (inputs or (signature.inputs if signature else []))
        ],
        "outputs": [
            t.model_dump(exclude_none=True)
            for t in (outputs or (signature.outputs if signature else []))
        ],
        "max_batch_size": signature.max_batch_size if signature else 0,
    }
    # Where the file declares its dims, its batch dimensions decided (a model
    # whose file names none shared by every tensor is not batched); else a
    # free leading dim is taken for the batch dimension.
    declared = signature is not None and signature.input_dims and not (inputs or outputs)
    if (
        not declared
        and data["max_batch_size"] == 0
        and any(-1 in t["shape"][:1] for t in data["inputs"])
    ):
        data["max_batch_size"] = 1024
    if cff in members:
        data["citation"] = Citation(cff=cff.name).model_dump(exclude_none=True)
    data.update({k: v for k, v in fields.items() if v is not None})
    roles = {model_file.name: "model", cff.name: "citation"}
    data["files"] = [_entry(root, m.name, roles.get(m.name, "other")) for m in members]
    manifest = parse_manifest(data, str(root / MANIFEST_NAME))
    target = root / MANIFEST_NAME
    target.write_text(dump_manifest(manifest), encoding="utf-8")
    return target


def _entry(root: Path, rel: str, role: str) -> dict[str, Any]:
    sha, size = sha256_file(root / rel)
    return FileEntry(path=rel, size=size, sha256=sha, role=role).model_dump()  # type: ignore[arg-type]


def refresh_files(root: str | Path) -> Manifest:
    """Recompute size and sha256 of every listed file and rewrite the manifest."""
    root = Path(root)
    manifest = load_manifest(root / MANIFEST_NAME)
    data = manifest.to_dict()
    data["files"] = [_entry(root, f.path, f.role) for f in manifest.files]
    updated = parse_manifest(data, str(root / MANIFEST_NAME))
    (root / MANIFEST_NAME).write_text(dump_manifest(updated), encoding="utf-8")
    return updated
