"""Checking a batch spec before it becomes a job record.

A job record stores its spec as YAML text that a runner, possibly on
another machine and in another working directory, parses again.  So what
is stored is the spec with every location absolute:

* :func:`local_spec` is for ``sciserve jobs submit`` on the registry
  database: the local user's spec, its relative paths taken relative to
  the spec file, as ``sciserve batch run`` takes them;
* :func:`api_spec` is for ``POST /v2/sciserve/jobs``: a stranger's spec,
  whose every location must be under a ``[jobs] archives`` root
  (:class:`~sciserve.jobs.archives.Archives`), and which may not make the
  runner talk to a server or a storage endpoint of the caller's choosing.

Neither decides who may submit: the caller checks the models' namespaces
(:func:`model_references`) against the submitter's rights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import _yaml
from ..errors import InvalidInput, PermissionDenied
from ..package.reference import Reference, parse_reference
from ..streams.spec import BatchSpec, PythonFeatures, parse_batch_spec
from .archives import Archives
from .records import MAX_SPEC_BYTES

__all__ = ["CheckedSpec", "api_spec", "local_spec", "model_references", "spec_document"]


@dataclass(frozen=True)
class CheckedSpec:
    """A validated spec and the YAML text to store for it."""

    spec: BatchSpec
    text: str


def spec_document(value: object, *, source: str = "the spec") -> dict[str, Any]:
    """The mapping a spec stands for, given as YAML text or as an already parsed mapping.

    YAML is read with the project's hostile-input rules (size bound, no
    anchors or aliases); anything else is :class:`~sciserve.errors.InvalidInput`.
    """
    if isinstance(value, str):
        try:
            data = _yaml.load(value, what="a batch spec", max_bytes=MAX_SPEC_BYTES)
        except yaml.YAMLError as exc:
            raise InvalidInput(f"{source} is not valid YAML: {exc}") from exc
    else:
        data = value
    if not isinstance(data, dict) or not all(isinstance(key, str) for key in data):
        raise InvalidInput(f"{source} must be a mapping of settings (YAML text or an object)")
    return data


def model_references(spec: BatchSpec) -> list[Reference]:
    """The registry references of the spec's models, in order."""
    return [parse_reference(step.ref) for step in spec.models]


def local_spec(path: Path) -> CheckedSpec:
    """The spec file at ``path``, validated, its locations made absolute."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read batch spec {path}: {exc}") from exc
    source = str(path)
    data = spec_document(text, source=f"batch spec {source}")
    spec = parse_batch_spec(data, base_dir=path.resolve().parent, source=source)
    # parse_batch_spec has made the relative locations absolute: store those.
    stored = {**data, "input": spec.input}
    if isinstance(spec.features, PythonFeatures):
        stored["features"] = {**data["features"], "python": spec.features.python}
    return CheckedSpec(spec, _dump(stored))


def api_spec(data: dict[str, Any], archives: Archives) -> CheckedSpec:
    """A spec submitted over the API, validated and confined to ``archives``.

    Raises :class:`~sciserve.errors.InvalidInput` for an invalid spec (naming
    the field) or an input that does not exist, and
    :class:`~sciserve.errors.PermissionDenied` for a location outside the
    archives, a ``server:`` model step or ``storage_options``.
    """
    spec = parse_batch_spec(data, source="submitted")
    remote = [step.ref for step in spec.models if step.server]
    if remote:
        raise PermissionDenied(
            f"model {remote[0]} names a server: a job submitted over the API runs its "
            "models from this server's registry, never on a server the caller chooses"
        )
    if spec.storage_options:
        raise PermissionDenied(
            "storage_options are not accepted from the API: the server's environment "
            "decides how its archives are reached"
        )
    stored = {**data, "input": archives.confine(spec.input)}
    if isinstance(spec.features, PythonFeatures):
        file = archives.confine_file(str(spec.features.file), what="feature function file")
        stored["features"] = {**data["features"], "python": f"{file}:{spec.features.function}"}
    checked = parse_batch_spec(stored, source="submitted")
    archives.check_contents(checked.input)
    if isinstance(checked.features, PythonFeatures) and not checked.features.file.is_file():
        raise InvalidInput(f"feature function file {checked.features.file} does not exist")
    return CheckedSpec(checked, _dump(stored))


def _dump(data: dict[str, Any]) -> str:
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if len(text.encode()) > MAX_SPEC_BYTES:
        raise InvalidInput(f"the spec is over {MAX_SPEC_BYTES} bytes")
    return text
