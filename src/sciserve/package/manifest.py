"""The model package manifest (``sciserve.yaml``): schema, parsing and digest.

A package is a directory holding ``sciserve.yaml`` plus exactly the files the
manifest lists.  Field names follow schema.org / FAIR4ML where the two
overlap (``name``, ``version``, ``description``, ``license``, ``author``-like
``authors``, ``keywords``-like ``tags``, ``trainedOn``-like ``training_data``);
:mod:`sciserve.package.card` maps them to those vocabularies for JSON-LD.

Structural checks live in the pydantic models below; checks that need the
files on disk (sizes, checksums, ONNX signatures) live in
:mod:`sciserve.package.validate`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .. import _yaml
from ..datatypes import DATATYPES, Datatype
from ..errors import ManifestError, PayloadTooLarge, Problem

__all__ = [
    "DATASET",
    "DATASET_RUNTIME",
    "DATATYPES",
    "KINDS",
    "MANIFEST_NAME",
    "MAX_MANIFEST_BYTES",
    "MODEL",
    "SCHEMA_VERSION",
    "Author",
    "Citation",
    "CodeReference",
    "DataReference",
    "Datatype",
    "FileEntry",
    "Manifest",
    "MetricValue",
    "TensorSpec",
    "dump_manifest",
    "load_manifest",
    "parse_manifest",
]

MANIFEST_NAME = "sciserve.yaml"
#: What a package holds: a model (served, loaded) or a dataset (evaluated on).
#: One registry keeps both, under the same rules; a name is one or the other.
MODEL: Final = "model"
DATASET: Final = "dataset"
KINDS: Final = (MODEL, DATASET)
#: The ``runtime`` of every dataset package: none can be loaded as a model.
DATASET_RUNTIME = "dataset"
SCHEMA_VERSION = 1
#: Largest manifest file, and largest canonical manifest the registry stores.
MAX_MANIFEST_BYTES = 4 * 2**20


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
ORCID_RE = re.compile(r"^(?:https://orcid\.org/)?(\d{4}-\d{4}-\d{4}-\d{3}[\dX])$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TensorSpec(_Strict):
    """One input or output tensor of the model's signature."""

    name: str = Field(min_length=1, max_length=256)
    datatype: Datatype
    #: Dimensions; ``-1`` marks a variable dimension (including the batch dim).
    shape: list[int] = Field(min_length=0, max_length=16)
    #: Which dimension is the batch dimension; ``None`` means the model's
    #: default (``Manifest.batch_dim``).  Recurrent models taking ``[T, B, F]``
    #: say ``1``.
    batch_dim: int | None = None
    description: str | None = None
    unit: str | None = None
    feature_names: list[str] | None = None
    #: Class labels along the last dimension of an output.
    labels: list[str] | None = None

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int]) -> list[int]:
        for dim in shape:
            if dim < -1 or dim == 0:
                raise ValueError(f"dimension {dim} is not allowed; use a positive size or -1")
        return shape


class FileEntry(_Strict):
    """A file that belongs to the package, with its size and sha256."""

    path: str
    size: int = Field(ge=0)
    sha256: str
    #: What the file is for: ``model`` (what the runtime loads), ``citation``,
    #: ``context``, ``data``, ``code`` or ``other``.
    role: Literal["model", "citation", "context", "data", "code", "metadata", "other"] = "other"

    @field_validator("path")
    @classmethod
    def _safe_path(cls, path: str) -> str:
        check_member_path(path)
        if path == MANIFEST_NAME:
            raise ValueError(f"{MANIFEST_NAME} describes the package and is not listed in it")
        return path

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not SHA256_RE.fullmatch(value):
            raise ValueError("sha256 must be 64 lowercase hexadecimal characters")
        return value


class Author(_Strict):
    name: str = Field(min_length=1)
    orcid: str | None = None
    affiliation: str | None = None
    email: str | None = None

    @field_validator("orcid")
    @classmethod
    def _orcid(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = ORCID_RE.fullmatch(value.strip())
        if not match:
            raise ValueError(f"{value!r} is not a valid ORCID iD")
        if not _orcid_checksum_ok(match.group(1)):
            # The form is right, so this is most likely a typo in one digit.
            raise ValueError(f"{value!r}: the ORCID check digit is wrong (a mistyped digit?)")
        return match.group(1)

    @property
    def orcid_url(self) -> str | None:
        return f"https://orcid.org/{self.orcid}" if self.orcid else None


class Citation(_Strict):
    """How to cite the model: a ``CITATION.cff`` in the package and/or text and DOI."""

    cff: str | None = None
    text: str | None = None
    doi: str | None = None
    url: str | None = None

    @model_validator(mode="after")
    def _something(self) -> Citation:
        if not (self.cff or self.text or self.doi or self.url):
            raise ValueError("give at least one of cff, text, doi, url")
        return self


class DataReference(_Strict):
    """A data set the model was trained or validated on."""

    name: str | None = None
    identifier: str = Field(min_length=1, description="DOI or URL")
    sha256: str | None = None
    description: str | None = None

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not SHA256_RE.fullmatch(value):
            raise ValueError("sha256 must be 64 lowercase hexadecimal characters")
        return value


class CodeReference(_Strict):
    repository: str = Field(min_length=1)
    commit: str | None = None
    path: str | None = None


class MetricValue(_Strict):
    """A recorded evaluation result, shown on the model card."""

    name: str
    value: float
    dataset: str | None = None
    split: str | None = None


class Manifest(_Strict):
    """The parsed, structurally valid content of ``sciserve.yaml``."""

    schema_version: int = SCHEMA_VERSION
    #: ``model`` or ``dataset``; left out of the canonical form of a model so
    #: that the digests of models published before datasets existed hold.
    kind: Literal["model", "dataset"] = MODEL
    name: str
    version: str
    namespace: str = "default"
    description: str | None = None
    runtime: str = Field(min_length=1, max_length=64)
    #: The listed file the runtime loads.
    model_file: str | None = None
    #: Runtime-specific options (e.g. ``{"entrypoint": "model:Model"}`` for python).
    runtime_options: dict[str, Any] = Field(default_factory=dict)
    #: Preferred device: ``cpu`` or ``cuda:N``; the server config may override.
    device: str = "cpu"
    #: Largest batch the model accepts; 0 disables batching.
    max_batch_size: int = Field(default=0, ge=0)
    #: Default batch dimension of every tensor that does not set its own.
    batch_dim: int = Field(default=0, ge=0)
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    files: list[FileEntry] = Field(default_factory=list)
    license: str | None = None
    authors: list[Author] = Field(default_factory=list)
    citation: Citation | None = None
    training_data: list[DataReference] = Field(default_factory=list)
    validation_data: list[DataReference] = Field(default_factory=list)
    code: CodeReference | None = None
    #: Constraints on where the model is valid, e.g. ``{"alert_schema": "lsst:>=7.0"}``.
    compatible_with: dict[str, str] = Field(default_factory=dict)
    intended_use: str | None = None
    limitations: str | None = None
    tags: list[str] = Field(default_factory=list)
    metrics: list[MetricValue] = Field(default_factory=list)

    @field_validator("schema_version")
    @classmethod
    def _schema(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"this sciserve reads schema_version {SCHEMA_VERSION}, not {value}")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid model name")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not NAMESPACE_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid namespace")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: Any) -> str:
        if not VERSION_RE.fullmatch(str(value)):
            raise ValueError(f"{value!r} is not a valid version")
        return str(value)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
            raise ValueError(f"{value!r} is not a device; use 'cpu' or 'cuda:N'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        seen: set[str] = set()
        for entry in self.files:
            if entry.path in seen:
                raise ValueError(f"file {entry.path!r} is listed twice")
            seen.add(entry.path)
        for group in (self.inputs, self.outputs):
            names = [t.name for t in group]
            if len(names) != len(set(names)):
                raise ValueError("tensor names must be unique")
        if self.kind == DATASET:
            if self.runtime != DATASET_RUNTIME:
                raise ValueError(f"a dataset has runtime {DATASET_RUNTIME!r}, not {self.runtime!r}")
            if self.model_file is not None or self.inputs or self.outputs:
                raise ValueError("a dataset has no model_file, inputs or outputs")
        elif self.runtime == DATASET_RUNTIME:
            raise ValueError(f"runtime {DATASET_RUNTIME!r} is for datasets (kind: dataset)")
        if self.model_file is not None and self.model_file not in seen:
            raise ValueError(f"model_file {self.model_file!r} is not listed under files")
        if self.citation and self.citation.cff and self.citation.cff not in seen:
            raise ValueError(f"citation.cff {self.citation.cff!r} is not listed under files")
        return self

    # -- derived views ---------------------------------------------------

    @property
    def ref(self) -> str:
        """``namespace/name:version``."""
        return f"{self.namespace}/{self.name}:{self.version}"

    def batch_dim_of(self, tensor: TensorSpec) -> int | None:
        """The batch dimension of ``tensor``, or ``None`` if the model does not batch."""
        if self.max_batch_size == 0:
            return None
        return self.batch_dim if tensor.batch_dim is None else tensor.batch_dim

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain data, without unset optional fields."""
        data = self.model_dump(mode="json", exclude_none=True, exclude_defaults=False)
        if data.get("kind") == MODEL:
            del data["kind"]
        return data

    def canonical_bytes(self) -> bytes:
        """A byte form independent of YAML formatting, comments and key order."""
        return json.dumps(
            self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` over the canonical manifest.

        The manifest records every file's sha256, so this digest covers the
        metadata and all the bytes of the package: any change needs a new
        version.
        """
        return "sha256:" + hashlib.sha256(self.canonical_bytes()).hexdigest()


def check_member_path(path: str) -> None:
    """Refuse paths that could escape a package directory."""
    if not path or "\\" in path or "\x00" in path:
        raise ValueError(f"{path!r} is not a valid relative path")
    if PurePosixPath(path).is_absolute() or re.match(r"^[A-Za-z]:", path):
        raise ValueError(f"{path!r} is absolute; paths are relative to the package")
    if any(part in ("..", ".", "") for part in path.split("/")):
        raise ValueError(f"{path!r} must be a normalised relative path without '.' or '..'")


def _orcid_checksum_ok(orcid: str) -> bool:
    # ISO 7064 11,2 over the 15 leading digits, as ORCID specifies.
    digits = orcid.replace("-", "")
    total = 0
    for ch in digits[:-1]:
        total = (total + int(ch)) * 2
    check = (12 - total % 11) % 11
    return digits[-1] == ("X" if check == 10 else str(check))


_HINTS = {
    "datatype": "use one of " + ", ".join(DATATYPES),
    "shape": "list the dimensions, with -1 for variable ones, e.g. [-1, 64]",
    "sha256": "run 'sciserve init' again or 'sha256sum FILE' to get the digest",
    "name": "letters, digits, '.', '_' and '-', starting with a letter or digit",
    "namespace": "lowercase letters, digits, '_' and '-'",
    "version": "e.g. 1.0.0; letters, digits, '.', '_', '+' and '-'",
    "orcid": "use the 16-digit form 0000-0002-1825-0097 and check it on orcid.org",
    "path": "use a relative path inside the package, without '..'",
    "device": "use 'cpu' or 'cuda:0'",
    "schema_version": f"set schema_version: {SCHEMA_VERSION}",
}


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith(("function-", "literal[", "model[")):
            out += ("." if out else "") + part
    return out


def _problems_from(exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors():
        path = _loc_to_path(tuple(err["loc"]))
        leaf = next((p for p in reversed(err["loc"]) if isinstance(p, str)), "")
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            hint = "remove it, or check its spelling against the manifest reference"
            message = "unknown field"
        elif err["type"] == "missing":
            hint = f"add '{leaf}'"
        else:
            hint = _HINTS.get(leaf, "")
        problems.append(Problem(path, message, hint))
    return problems


def parse_manifest(data: Any, source: str = "") -> Manifest:
    """Validate already-loaded manifest data; raise :class:`ManifestError`."""
    if not isinstance(data, dict):
        raise ManifestError(
            [Problem("", "the manifest must be a mapping of fields", "start with 'name: …'")],
            source,
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        error = ManifestError(_problems_from(exc), source)
        # Kept so validation can go on checking what is valid (files, shapes).
        error.data = data
        raise error from exc


def load_manifest(path: str | Path, *, max_bytes: int = MAX_MANIFEST_BYTES) -> Manifest:
    """Read and validate a ``sciserve.yaml`` file (or a package directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ManifestError(
            [Problem("", f"cannot read {path}: {exc.strerror}")], str(path)
        ) from exc
    if size > max_bytes:
        raise ManifestError(
            [Problem("", f"manifest is {size} bytes, over the {max_bytes}-byte limit")], str(path)
        )
    return parse_manifest_text(path.read_bytes(), str(path), max_bytes=max_bytes)


def parse_manifest_text(
    text: bytes | str, source: str = "", *, max_bytes: int = MAX_MANIFEST_BYTES
) -> Manifest:
    """Parse and validate manifest text; anchors and aliases are refused."""
    try:
        data = _yaml.load(text, what="a manifest", max_bytes=max_bytes)
    except PayloadTooLarge as exc:
        raise ManifestError([Problem("", str(exc))], source) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ManifestError(
            [Problem(where, f"not valid YAML: {getattr(exc, 'problem', exc)}", "fix the syntax")],
            source,
        ) from exc
    except UnicodeDecodeError as exc:
        raise ManifestError([Problem("", "the manifest is not UTF-8 text")], source) from exc
    return parse_manifest(data, source)


def dump_manifest(manifest: Manifest) -> str:
    """YAML text for ``manifest`` with fields in schema order."""
    return yaml.safe_dump(manifest.to_dict(), sort_keys=False, allow_unicode=True, width=100)
