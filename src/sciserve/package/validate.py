"""Validation of a package directory against its manifest.

:func:`check_package` collects *every* problem (with a field path and a fix
hint) instead of stopping at the first, so ``sciserve validate`` can show a
complete list.  Nothing here executes code from the package: signatures are
read with each runtime's ``inspect``, which only parses data.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .. import _yaml
from .._hashing import sha256_file
from ..errors import ManifestError, NotFound, PayloadTooLarge, Problem, SciserveError
from .batch_dims import batch_dim_problems
from .card import identifier_iri
from .manifest import DATASET, MANIFEST_NAME, Manifest, TensorSpec, load_manifest
from .reference import served_name_problem, version_problem

if TYPE_CHECKING:
    from ..runtimes.base import Signature

__all__ = ["canonical_license", "check_package", "ensure_valid", "license_problems"]

_LICENSE_REF = re.compile(r"(?:DocumentRef-[A-Za-z0-9.-]+:)?LicenseRef-[A-Za-z0-9.-]+")


#: Names that only a family of licences share (``GPL``): never mapped to one.
_OPERATORS = {"and": "AND", "or": "OR", "with": "WITH"}


@functools.cache
def _spdx() -> tuple[Any, dict[str, str], dict[str, str]]:
    """The SPDX licence list, and its ids by lower-case id and by alias.

    Built once per process: building it reads the whole licence index (about
    0.1 s, which was most of the time of publishing a small package).
    """
    from license_expression import get_spdx_licensing

    licensing = get_spdx_licensing()
    # Built here, before any thread shares it: the library builds its
    # tokenizer lazily, in place, on first use.
    licensing.validate("MIT")
    symbols = licensing.known_symbols
    by_lower: dict[str, str] = {str(key).lower(): str(key) for key in symbols}
    by_alias: dict[str, str] = {
        str(alias).lower(): str(key)
        for key, symbol in symbols.items()
        for alias in getattr(symbol, "aliases", ())
    }
    return licensing, by_lower, by_alias


def canonical_license(expression: str) -> tuple[str, list[Problem]]:
    """``expression`` with every SPDX id in its canonical spelling, and what
    stops that: an unknown id, or a name several licences share (``GPL``).

    A case variant (``mit``, ``Apache-2.0 or mit``) or a deprecated id with a
    version (``GPL-3.0`` → ``GPL-3.0-only``) maps to the canonical id; a
    name without a version is ambiguous and its candidates are listed.
    """
    licensing, by_lower, by_alias = _spdx()
    problems: list[Problem] = []

    def canonical(match: re.Match[str]) -> str:
        token = match.group(0)
        if token.lower() in _OPERATORS:
            return _OPERATORS[token.lower()]
        if _LICENSE_REF.fullmatch(token):
            return token
        if (key := by_lower.get(token.lower())) is not None:
            return key
        key = by_alias.get(token.lower())
        if key is not None and re.search(r"\d", token):
            return key  # a deprecated id of one licence version
        if (ambiguous := _ambiguous(token, by_lower.values())) is not None:
            problems.append(ambiguous)  # a family name: GPL, LGPL, BSD
        return token

    result = re.sub(r"[^\s()]+", canonical, expression.strip())
    if problems:
        return result, problems
    # LicenseRef-* identifiers are valid SPDX for licences not on the list.
    try:
        invalid = bool(licensing.validate(_LICENSE_REF.sub("MIT", result)).errors)
    except AttributeError:
        # license_expression fails on some malformed input (markup, stray
        # quotes) instead of reporting it: that is an invalid expression too.
        invalid = True
    if invalid:
        return result, [
            Problem(
                "license",
                f"{expression!r} is not an SPDX licence expression",
                "use identifiers from https://spdx.org/licenses/ "
                "or 'LicenseRef-<name>' with the licence text in the package",
            )
        ]
    return result, []


def _ambiguous(token: str, keys: Iterable[str]) -> Problem | None:
    """A problem naming the canonical ids of the licence family ``token``, if any."""
    if re.search(r"\d", token) or token.lower().startswith("licenseref-"):
        return None
    family = re.compile(re.escape(token) + r"-\d[\w.+-]*", re.IGNORECASE)
    plain = re.compile(re.escape(token) + r"-\d[\d.]*(?:-only|-or-later)?", re.IGNORECASE)
    # Plain versions first (GPL-3.0-only before GPL-3.0-linking-exception).
    candidates = sorted(
        (k for k in keys if family.fullmatch(k)),
        key=lambda k: (not plain.fullmatch(k), len(k), k),
    )
    if not candidates:
        return None
    shown = sorted([k for k in candidates if plain.fullmatch(k)][:8] or candidates[:8])
    return Problem(
        "license",
        f"{token!r} is ambiguous: several licences go by that name",
        "use one of " + ", ".join(shown) + (", …" if len(candidates) > len(shown) else ""),
    )


def license_problems(expression: str | None, path: str = "license") -> list[Problem]:
    """Problems with an SPDX licence expression (non-SPDX or non-canonical is an error)."""
    if not expression:
        return [
            Problem(
                path,
                "a licence is required to publish",
                "set an SPDX expression, e.g. 'MIT' or 'CC-BY-4.0'",
            )
        ]
    canonical, problems = canonical_license(expression)
    if problems:
        return [Problem(path, p.message, p.hint) for p in problems]
    if canonical != expression:
        return [
            Problem(
                path,
                f"{expression!r} is not written as the canonical SPDX id",
                f"write {canonical!r}, or run 'sciserve init --update'",
            )
        ]
    return []


def check_package(
    root: str | Path, manifest: Manifest | None = None, *, for_publish: bool = True
) -> list[Problem]:
    """Every problem of the package in ``root`` (errors and warnings)."""
    root = Path(root)
    if manifest is None:
        try:
            manifest = load_manifest(root / MANIFEST_NAME)
        except ManifestError as exc:
            return exc.problems + _checks_of_the_rest(root, exc, for_publish=for_publish)
    problems: list[Problem] = []
    if manifest.kind == DATASET:
        return _dataset_problems(root, manifest, for_publish=for_publish)
    if for_publish:
        problems += _publish_requirements(manifest)
    problems += _signature_shape_problems(manifest)
    file_problems = _file_problems(root, manifest)
    problems += file_problems
    # The signature is read only from a model file that is what the manifest
    # says; problems with other files do not hide the signature's.
    if not any(_file_of(manifest, p) == manifest.model_file for p in file_problems):
        problems += _runtime_problems(root, manifest)
    return problems


def _dataset_problems(root: Path, m: Manifest, *, for_publish: bool) -> list[Problem]:
    """A dataset's checks: names, licence, files, then its Croissant document."""
    from . import dataset

    problems: list[Problem] = []
    if for_publish:
        problems += license_problems(m.license)
        for field, problem in (
            ("name", served_name_problem(m.namespace, m.name)),
            ("version", version_problem(m.version)),
        ):
            if problem is not None:
                problems.append(Problem(field, problem))
    file_problems = _file_problems(root, m)
    problems += file_problems
    if not any(p.severity == "error" for p in file_problems):
        problems += dataset.check(root, m)
    return problems


def _file_of(m: Manifest, problem: Problem) -> str | None:
    """The listed file a ``files[i]…`` problem is about."""
    match = re.match(r"files\[(\d+)\]", problem.path)
    if match is None or int(match.group(1)) >= len(m.files):
        return None
    return m.files[int(match.group(1))].path


def _checks_of_the_rest(root: Path, exc: ManifestError, *, for_publish: bool) -> list[Problem]:
    """The checks a manifest with schema errors still allows, so every problem
    shows in one run: the fields with errors are left out, the rest checked."""
    if not isinstance(exc.data, dict):
        return []
    broken = {_top(p.path) for p in exc.problems}
    if "" in broken or broken & {"name", "version", "runtime", "schema_version"}:
        return []  # a whole-manifest problem, or nothing to check against
    rest = {k: v for k, v in exc.data.items() if k not in broken}
    try:
        partial = Manifest.model_validate(rest)
    except ValueError:
        return []
    later = check_package(root, partial, for_publish=for_publish)
    return [p for p in later if _top(p.path) not in broken]


def _top(path: str) -> str:
    """The top-level field of a problem path (``authors`` of ``authors[0].orcid``)."""
    return re.split(r"[.\[]", path, maxsplit=1)[0]


def ensure_valid(root: str | Path, manifest: Manifest | None = None) -> Manifest:
    """Load and fully check a package for publishing; raise :class:`ManifestError`."""
    root = Path(root)
    if manifest is None:
        manifest = load_manifest(root / MANIFEST_NAME)
    problems = check_package(root, manifest, for_publish=True)
    if any(p.severity == "error" for p in problems):
        raise ManifestError(problems, str(root / MANIFEST_NAME))
    return manifest


def _publish_requirements(m: Manifest) -> list[Problem]:
    out = license_problems(m.license)
    # Checked here, not in the schema, so registries that hold such names
    # from older releases still read (and can rename) them.
    if (problem := served_name_problem(m.namespace, m.name)) is not None:
        out.append(Problem("name", problem))
    if (problem := version_problem(m.version)) is not None:
        out.append(Problem("version", problem))
    if not m.inputs:
        out.append(
            Problem(
                "inputs",
                "the model's inputs are not described",
                "add inputs, or run 'sciserve init' with --input NAME:DATATYPE:SHAPE",
            )
        )
    if not m.outputs:
        out.append(
            Problem(
                "outputs",
                "the model's outputs are not described",
                "add outputs, or run 'sciserve init' with --output NAME:DATATYPE:SHAPE",
            )
        )
    if not m.files:
        out.append(
            Problem(
                "files",
                "the package lists no files",
                "list the model file with its size and sha256 ('sciserve init')",
            )
        )
    if m.model_file is None and m.runtime != "python":
        out.append(
            Problem(
                "model_file",
                "no model_file names what the runtime loads",
                "set model_file to one of the listed files",
            )
        )
    for group, refs in (("training_data", m.training_data), ("validation_data", m.validation_data)):
        for i, ref in enumerate(refs):
            if identifier_iri(ref.identifier) is None:
                out.append(
                    Problem(
                        f"{group}[{i}].identifier",
                        f"{ref.identifier!r} is neither a DOI nor a URL",
                        "use a DOI (10.5281/zenodo.1234567) or a URL (https://…, urn:…)",
                    )
                )
    if not m.description:
        out.append(
            Problem("description", "no description", "say what the model does", severity="warning")
        )
    if not m.authors:
        out.append(
            Problem("authors", "no authors", "add authors with name and ORCID", severity="warning")
        )
    return out


def _signature_shape_problems(m: Manifest) -> list[Problem]:
    out: list[Problem] = []
    for group, tensors in (("inputs", m.inputs), ("outputs", m.outputs)):
        for i, t in enumerate(tensors):
            where = f"{group}[{i}]"
            bdim = m.batch_dim_of(t)
            if bdim is not None:
                if bdim >= len(t.shape):
                    out.append(
                        Problem(
                            f"{where}.batch_dim",
                            f"batch dim {bdim} is outside shape {t.shape}",
                            "set batch_dim to the index of the batch dimension",
                        )
                    )
                elif t.shape[bdim] != -1:
                    out.append(
                        Problem(
                            f"{where}.shape",
                            f"batch dim {bdim} has fixed size {t.shape[bdim]}",
                            "use -1 for the batch dimension, or max_batch_size: 0",
                        )
                    )
            out += _last_dim_names(where, t, "feature_names", t.feature_names)
            out += _last_dim_names(where, t, "labels", t.labels)
    return out


def _last_dim_names(
    where: str, t: TensorSpec, field: str, names: list[str] | None
) -> list[Problem]:
    if not names or not t.shape or t.shape[-1] == -1 or len(names) == t.shape[-1]:
        return []
    return [
        Problem(
            f"{where}.{field}",
            f"{len(names)} {field} for a last dimension of size {t.shape[-1]}",
            "give exactly one name per element of the last dimension",
        )
    ]


def _file_problems(root: Path, m: Manifest) -> list[Problem]:
    out: list[Problem] = []
    real_root = root.resolve()
    for i, entry in enumerate(m.files):
        where = f"files[{i}]"
        path = root / entry.path
        if path.is_symlink() and not path.resolve().is_relative_to(real_root):
            out.append(
                Problem(
                    f"{where}.path",
                    f"{entry.path} is a link leading outside the package",
                    "copy the file into the package directory",
                )
            )
            continue
        if not path.is_file():
            out.append(
                Problem(
                    f"{where}.path",
                    f"{entry.path} does not exist in {root}",
                    "add the file or remove it from files",
                )
            )
            continue
        size = path.stat().st_size
        if size != entry.size:
            out.append(
                Problem(
                    f"{where}.size",
                    f"{entry.path} is {size} bytes, manifest says {entry.size}",
                    "run 'sciserve init --update' to refresh",
                )
            )
            continue
        actual, _ = sha256_file(path)
        if actual != entry.sha256:
            out.append(
                Problem(
                    f"{where}.sha256",
                    f"{entry.path} has sha256 {actual}, manifest says {entry.sha256}",
                    "the file changed: refresh the manifest "
                    "with 'sciserve init --update' and publish a new version",
                )
            )
    if m.citation and m.citation.cff and not any(_file_of(m, p) == m.citation.cff for p in out):
        out += _cff_problems(root / m.citation.cff)
    return out


def _cff_problems(path: Path) -> list[Problem]:
    try:
        data = _yaml.load(path.read_text(encoding="utf-8"), what="a CITATION.cff file")
    except OSError as exc:  # its strerror, not its text: that holds the whole path
        return [Problem("citation.cff", f"cannot read {path.name}: {exc.strerror}")]
    except (UnicodeDecodeError, yaml.YAMLError, PayloadTooLarge) as exc:
        return [Problem("citation.cff", f"cannot read {path.name}: {exc}", "fix the CFF file")]
    if not isinstance(data, dict) or "cff-version" not in data or "title" not in data:
        return [
            Problem(
                "citation.cff",
                f"{path.name} is not a CITATION.cff file",
                "it needs at least cff-version, title and authors",
            )
        ]
    return []


def _runtime_problems(root: Path, m: Manifest) -> list[Problem]:
    from ..runtimes import get_runtime

    try:
        runtime = get_runtime(m.runtime)
    except NotFound as exc:
        return [Problem("runtime", str(exc), "pick an installed runtime ('sciserve runtimes')")]
    except SciserveError as exc:  # DependencyMissing: can't inspect, still publishable
        return [
            Problem(
                "runtime", str(exc), "install the extra to check the signature", severity="warning"
            )
        ]
    if m.model_file is None:
        return []
    try:
        found = runtime.inspect(root / m.model_file)
    except SciserveError as exc:
        return [
            Problem(
                "model_file",
                f"cannot read {m.model_file}: {exc}",
                "check that the file is a valid model of this runtime",
            )
        ]
    if found is None:
        return []
    out: list[Problem] = []
    for group, declared, actual in (
        ("inputs", m.inputs, found.inputs),
        ("outputs", m.outputs, found.outputs),
    ):
        if not found.named:
            if len(actual) != len(declared):
                out.append(
                    Problem(
                        group,
                        f"{m.model_file} has {len(actual)} {group}, the "
                        f"manifest describes {len(declared)}",
                        f"describe exactly {len(actual)} {group}",
                    )
                )
                continue
            # Unnamed formats: the manifest's names stand for the file's by position.
            actual = [
                a.model_copy(update={"name": d.name}) for a, d in zip(actual, declared, strict=True)
            ]
        by_name = {t.name: t for t in actual}
        for i, t in enumerate(declared):
            where = f"{group}[{i}]"
            got = by_name.get(t.name)
            if got is None:
                out.append(
                    Problem(
                        f"{where}.name",
                        f"{m.model_file} has no {group[:-1]} "
                        f"named {t.name!r} (it has {sorted(by_name)})",
                        "use the names in the model file",
                    )
                )
                continue
            if got.datatype != t.datatype:
                out.append(
                    Problem(
                        f"{where}.datatype",
                        f"{t.name!r} is {got.datatype} in "
                        f"{m.model_file}, manifest says {t.datatype}",
                        f"set datatype: {got.datatype}",
                    )
                )
            if len(got.shape) != len(t.shape):
                out.append(
                    Problem(
                        f"{where}.shape",
                        f"{t.name!r} has rank {len(got.shape)} "
                        f"{got.shape} in {m.model_file}, manifest says {t.shape}",
                        f"use a shape of rank {len(got.shape)}",
                    )
                )
                continue
            for d, (want, have) in enumerate(zip(t.shape, got.shape, strict=True)):
                if have != -1 and want != have:
                    out.append(
                        Problem(
                            f"{where}.shape[{d}]",
                            f"{t.name!r} dim {d} is {have} in {m.model_file}, manifest says {want}",
                            f"set it to {have}",
                        )
                    )
        missing = set(by_name) - {t.name for t in declared}
        if group == "inputs" and missing:
            out.append(
                Problem(
                    group,
                    f"{m.model_file} needs inputs {sorted(missing)} that the "
                    "manifest does not describe",
                    "describe every model input",
                )
            )
    if not out and found.input_dims:
        out += _batch_dim_problems(m, found)
    return out


def _batch_dim_problems(m: Manifest, found: Signature) -> list[Problem]:
    """Batch dims of the manifest that contradict the model file's dimension names."""
    if found.named:
        in_dims = dict(zip((t.name for t in found.inputs), found.input_dims, strict=True))
        out_dims = dict(zip((t.name for t in found.outputs), found.output_dims, strict=True))
        ins = [in_dims[t.name] for t in m.inputs]
        outs = [out_dims[t.name] for t in m.outputs]
    else:  # matched by position above
        ins, outs = list(found.input_dims), list(found.output_dims)
    return batch_dim_problems(m, ins, outs, m.model_file or "the model file")
