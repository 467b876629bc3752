"""``sciserve init``: scaffold a package manifest from an existing model file."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._hashing import sha256_file
from ..errors import InvalidInput, ManifestError, NotFound
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
from .validate import canonical_license

__all__ = ["init_package", "parse_tensor_option", "refresh_files", "update_package"]


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
    force: bool = False,
    **fields: Any,
) -> Path:
    """Write ``sciserve.yaml`` for ``model_file`` and return its path.

    An existing manifest is refused unless ``force`` (it may hold a person's
    work: citation, authors, licence…); :func:`update_package` refreshes one.

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
    fields = _canonical_license(fields, notes, MANIFEST_NAME)
    runtime_name = _pick_runtime(model_file, runtime)
    src_dir = model_file.parent
    root = Path(out) if out is not None else src_dir
    if (root / MANIFEST_NAME).exists() and not force:
        raise InvalidInput(
            f"{root / MANIFEST_NAME} already exists; pass --update to refresh its files, "
            "checksums and signature and keep everything else, or --force to overwrite it"
        )
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


#: Tensor fields a person writes; a refreshed signature keeps them.
_PERSON_TENSOR_FIELDS = frozenset({"description", "unit", "feature_names", "labels"})


def update_package(
    path: str | Path,
    *,
    out: str | Path | None = None,
    runtime: str | None = None,
    inputs: Sequence[TensorSpec] = (),
    outputs: Sequence[TensorSpec] = (),
    extra_files: Sequence[str | Path] = (),
    notes: list[str] | None = None,
    **fields: Any,
) -> Path:
    """Refresh an existing ``sciserve.yaml``; return its path.

    ``path`` is the package directory, its manifest, or a (new) model file
    (whose package is beside it, or ``out``).  The sizes and checksums of
    every listed file are recomputed, new files added, and the signature
    re-read from the model file: shapes and datatypes come from the file,
    while tensor descriptions, units, feature names and labels stay, and
    batch dims stay unless the file names its batch dimension.  Everything
    else a person wrote (citation, authors, licence, data references,
    namespace, description, ``max_batch_size``…) is kept, except the fields
    given in ``fields`` (``name``, ``version``, ``license``, …), which replace it.
    """
    from ..runtimes import get_runtime

    if notes is None:
        notes = []
    path = Path(path)
    model_file: Path | None = None
    if path.is_dir():
        root = path
    elif path.name == MANIFEST_NAME:
        root = path.parent
    else:
        model_file = path
        if not model_file.is_file():
            raise NotFound(f"no model file at {model_file}")
        root = Path(out) if out is not None else model_file.parent
    target = root / MANIFEST_NAME
    if not target.is_file():
        raise InvalidInput(
            f"no {MANIFEST_NAME} in {root} to update; run 'sciserve init' without --update "
            "to write one"
        )
    manifest = load_manifest(target)
    data = manifest.to_dict()
    if "license" in data and fields.get("license") is None:
        canonical, problems = canonical_license(data["license"])
        if not problems:  # an ambiguous one stays for a person to decide ('validate' says so)
            data["license"] = canonical
    fields = _canonical_license(fields, notes, str(target))
    listed = {entry.path for entry in manifest.files}
    members = [*([model_file] if model_file is not None else []), *map(Path, extra_files)]
    for member in members:
        if not member.is_file():
            raise NotFound(f"no file at {member}")
        if member.parent.resolve() != root.resolve():
            shutil.copy2(member, root / member.name)
        if member.name not in listed:
            role = "model" if member == model_file else "other"
            data["files"].append({"path": member.name, "role": role})
            listed.add(member.name)
    if model_file is not None:
        data["model_file"] = model_file.name
    if runtime is not None:
        data["runtime"] = runtime
    for entry in data["files"]:
        if not (root / entry["path"]).is_file():
            raise InvalidInput(
                f"{entry['path']}, listed under files, is not in {root}; "
                "add it, or remove it from files"
            )
        entry.update(_entry(root, entry["path"], entry.get("role", "other")))

    signature = None
    if data.get("model_file"):
        signature = get_runtime(data["runtime"]).inspect(root / data["model_file"])
    if inputs or outputs:
        data["inputs"] = _merged(list(inputs) or manifest.inputs, manifest.inputs, True)
        data["outputs"] = _merged(list(outputs) or manifest.outputs, manifest.outputs, True)
    elif signature is not None:
        from .batch_dims import infer_batch_dims

        named = infer_batch_dims(signature.input_dims, signature.output_dims).certain
        if named and signature.batch_note:
            notes.append(signature.batch_note)
            data["batch_dim"] = 0  # the file's dims are spelled out per tensor
        found_in, found_out = signature.inputs, signature.outputs
        if not signature.named:  # made-up names: the manifest's stand for them by position
            found_in = _renamed(found_in, manifest.inputs)
            found_out = _renamed(found_out, manifest.outputs)
        data["inputs"] = _merged(found_in, manifest.inputs, named)
        data["outputs"] = _merged(found_out, manifest.outputs, named)
    data.update({k: v for k, v in fields.items() if v is not None})
    updated = parse_manifest(data, str(target))
    target.write_text(dump_manifest(updated), encoding="utf-8")
    return target


def _canonical_license(fields: dict[str, Any], notes: list[str], source: str) -> dict[str, Any]:
    """``fields`` with the licence given spelled as canonical SPDX ids;
    :class:`ManifestError` (with the candidates) for one that is not SPDX."""
    given = fields.get("license")
    if not given:
        return fields
    canonical, problems = canonical_license(given)
    if problems:
        raise ManifestError(problems, source)
    if canonical != given:
        notes.append(f"licence {given!r} written as the canonical SPDX {canonical!r}")
    return {**fields, "license": canonical}


def _renamed(found: Sequence[TensorSpec], declared: Sequence[TensorSpec]) -> list[TensorSpec]:
    if len(found) != len(declared):
        return list(found)
    return [f.model_copy(update={"name": d.name}) for f, d in zip(found, declared, strict=True)]


def _merged(
    found: Sequence[TensorSpec], declared: Sequence[TensorSpec], file_batch_dims: bool
) -> list[dict[str, Any]]:
    """``found`` tensors with what a person wrote about them in ``declared`` kept
    (and their batch dims, unless ``file_batch_dims``)."""
    by_name = {t.name: t for t in declared}
    out = []
    for spec in found:
        item = spec.model_dump(exclude_none=True)
        before = by_name.get(spec.name)
        if before is not None:
            keep = set(_PERSON_TENSOR_FIELDS)
            if not file_batch_dims:
                keep.add("batch_dim")
                item.pop("batch_dim", None)
            item.update(before.model_dump(exclude_none=True, include=keep))
        out.append(item)
    return out


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
