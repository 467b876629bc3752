"""``sciserve monitor reference``: reference statistics for drift monitoring."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ..access._db import engine_of
from ..errors import InvalidInput, PayloadTooLarge
from ..monitoring.reference import Reference, ReferenceStore
from ..monitoring.sketches import Layout
from ..package.manifest import Manifest
from ..package.reference import served_name
from ..registry.registry import Registry
from ._context import state

#: Rows the model is run on at once when the dataset holds no outputs
#: (for a model without batching: a batch limit of its own does).
_CHUNK = 4096


def register(app: typer.Typer) -> None:
    monitor = typer.Typer(help="Drift monitoring of served models.", no_args_is_help=True)
    monitor.command("reference")(reference)
    app.add_typer(monitor, name="monitor")


def reference(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="The model version: ns/name[:version|@alias].")],
    data: Annotated[
        Path,
        typer.Argument(
            help="An evaluation dataset as .npz: one array per model input (and, "
            "optionally, per output; missing outputs are computed by the model)."
        ),
    ],
) -> None:
    """Store the statistics of an evaluation dataset as a version's drift reference."""
    st = state(ctx)
    settings = st.settings
    arrays = _read_npz(data, settings.limits.max_upload_bytes)
    with st.local_registry(create=False) as reg:
        info = reg.resolve(ref)
        manifest = info.manifest
        names = [t.name for t in manifest.inputs]
        missing = [n for n in names if n not in arrays]
        if missing:
            raise InvalidInput(
                f"{data.name} has no array(s) {missing} for the model's inputs {names}"
            )
        inputs = {n: arrays[n] for n in names}
        outputs = {t.name: arrays[t.name] for t in manifest.outputs if t.name in arrays}
        if len(outputs) < len(manifest.outputs):
            outputs = _predict(reg, manifest, info.ref, inputs)
        result = Reference.from_arrays(Layout(manifest), inputs, outputs)
        ReferenceStore(engine_of(reg)).save(
            served_name(info.namespace, info.name), info.version, info.digest, result
        )
    summary = {
        "ref": info.ref,
        "digest": info.digest,
        "rows": result.stats.rows,
        "features": sorted(result.stats.features),
        "ignored": result.stats.ignored,
    }
    st.emit(
        summary,
        lambda: st.console.print(
            f"reference of {info.ref}: {result.stats.rows} rows, "
            f"{len(result.stats.features)} features ({result.stats.ignored} values ignored)"
        ),
    )


def _read_npz(path: Path, limit: int) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, refusing pickles and oversized members
    (sizes are read from the zip directory before anything is inflated)."""
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(member.file_size for member in archive.infolist())
    except (OSError, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"{path.name} is not a readable .npz file: {exc}") from exc
    if total > limit:
        raise PayloadTooLarge(f"{path.name} unpacks to {total} bytes; at most {limit}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        # allow_pickle=False turns an object array into a ValueError: never unpickled.
        raise InvalidInput(f"cannot read {path.name}: {exc}") from exc


def _predict(
    reg: Registry, manifest: Manifest, ref: str, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The model's outputs for the dataset, computed in chunks along the batch dim."""
    from ..model import load

    batch_dim = manifest.batch_dim
    chunk_rows = manifest.max_batch_size or _CHUNK
    rows = {a.shape[batch_dim] if a.ndim > batch_dim else 0 for a in inputs.values()}
    if len(rows) != 1:
        raise InvalidInput("the dataset's input arrays hold different numbers of rows")
    total = rows.pop()
    parts: dict[str, list[np.ndarray]] = {}
    with load(ref, registry=reg) as model:
        for start in range(0, total, chunk_rows):
            chunk = {
                n: np.take(a, range(start, min(start + chunk_rows, total)), axis=batch_dim)
                for n, a in inputs.items()
            }
            for name, value in model.predict(chunk).items():
                parts.setdefault(name, []).append(value)
    return {name: np.concatenate(values, axis=batch_dim) for name, values in parts.items()}
