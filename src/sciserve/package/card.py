"""A package's metadata for people and for machines.

:func:`render_card` writes a Markdown model card in the spirit of "Model
Cards for Model Reporting" and the Hugging Face cards: what the model is,
its signature, what it is for, what it was trained and evaluated on, who
made it and how to cite it.

:func:`to_jsonld` describes the same model as a JSON-LD document in the
public vocabularies a FAIR catalogue understands: schema.org, FAIR4ML
(``fair4ml:MLModel``, ``fair4ml:trainedOn``, …), SPDX for checksums and
codemeta for the link to the source code.  Its ``@context`` is
``context.jsonld``, shipped with this module, either embedded or referred to
by :data:`CONTEXT_URL`; :func:`document_loader` serves that URL from the
shipped file so JSON-LD processors never need the network.

Text the author wrote as prose (description, intended use, limitations,
citation text) is Markdown and goes into the card unchanged; whoever turns
the card into HTML must sanitise it.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final
from urllib.parse import quote, unquote

from license_expression import ExpressionError, LicenseSymbol, get_spdx_licensing

from ..errors import NotFound
from .manifest import (
    Author,
    Citation,
    CodeReference,
    DataReference,
    FileEntry,
    Manifest,
    MetricValue,
    TensorSpec,
)
from .reference import served_name

__all__ = [
    "CONTEXT_URL",
    "TOKEN_ENV",
    "DocumentLoader",
    "Snippets",
    "bibtex",
    "context_document",
    "document_loader",
    "identifier_iri",
    "model_iri",
    "render_card",
    "snippets",
    "to_jsonld",
]

#: Where the JSON-LD context is published; :func:`document_loader` serves it offline.
CONTEXT_URL: Final = "https://w3id.org/sciserve/context/v1"

_PACKAGE: Final = "sciserve.package"
_CONTEXT_RESOURCE: Final = "context.jsonld"
_SPDX_LICENSES: Final = "https://spdx.org/licenses/"
_DOI_RESOLVER: Final = "https://doi.org/"

#: A PyLD-compatible document loader: ``loader(url, options) -> remote document``.
DocumentLoader = Callable[[str, Mapping[str, Any] | None], dict[str, Any]]


# -- identifiers shared by the card and the JSON-LD ----------------------


@dataclass(frozen=True)
class _Licence:
    """A licence expression and the SPDX licence IRIs it names.

    ``simple`` is true when the expression is one known SPDX licence id,
    which can then stand for the whole licence as a single IRI.
    """

    expression: str
    iris: tuple[str, ...]
    simple: bool


def _licence(expression: str) -> _Licence:
    expression = expression.strip()
    if not expression:
        return _Licence("", (), simple=False)
    licensing = get_spdx_licensing()
    try:
        parsed = licensing.parse(expression, validate=False)
    except ExpressionError:
        # Not a valid SPDX expression (e.g. free text): keep it as written.
        return _Licence(expression, (), simple=False)
    if parsed is None or licensing.unknown_license_keys(parsed):
        # One unknown id makes the whole expression unknowable; claiming the
        # other ids as the licence could mislead, so only the text is kept.
        return _Licence(expression, (), simple=False)
    iris: list[str] = []
    for symbol in licensing.license_symbols(parsed, decompose=True):
        key = str(symbol.key)
        # Exceptions (``WITH LLVM-exception``) modify a licence; they are not one.
        if symbol.is_exception or key.startswith("LicenseRef-"):
            continue
        iri = _SPDX_LICENSES + key
        if iri not in iris:
            iris.append(iri)
    simple = isinstance(parsed, LicenseSymbol) and len(iris) == 1
    return _Licence(expression, tuple(iris), simple)


_DOI_RE = re.compile(r"^(?:doi:\s*)?(10\.\d{4,9}/.+)$", re.IGNORECASE)
_DOI_URL_RE = re.compile(r"^https?://(?:dx\.)?doi\.org/(10\.\d{4,9}/.+)$", re.IGNORECASE)
_IRI_RE = re.compile(r"^(?:(?:https?|ftp|s3|gs)://|urn:)\S+$", re.IGNORECASE)


def _doi_iri(doi: str) -> str:
    # Percent-encode what would change the meaning of the resolver URL
    # ("#", "?", "%", spaces, …) and keep the characters DOIs commonly use.
    return _DOI_RESOLVER + quote(doi, safe="/:;()._-~!$&'*,=@")


def _iri(identifier: str) -> str | None:
    """The IRI an identifier (DOI, URL or URN) names, or ``None`` for free text."""
    identifier = identifier.strip()
    if match := _DOI_URL_RE.fullmatch(identifier):
        return _doi_iri(unquote(match.group(1)))
    if match := _DOI_RE.fullmatch(identifier):
        return _doi_iri(match.group(1))
    if _IRI_RE.fullmatch(identifier):
        return identifier
    return None


def identifier_iri(identifier: str) -> str | None:
    """The IRI a data set identifier (DOI, URL or URN) names, or ``None`` for free text."""
    return _iri(identifier)


def model_iri(manifest: Manifest, base_url: str | None = None) -> str:
    """The IRI naming one version of a model.

    Without ``base_url`` a location-independent URN,
    ``urn:sciserve:<namespace>/<name>:<version>``; with it, the version's
    address on that registry, ``<base_url>/models/<ns>/<name>/versions/<v>``.
    """
    if base_url is None:
        return f"urn:sciserve:{manifest.ref}"
    return (
        f"{base_url.rstrip('/')}/models/{quote(manifest.namespace)}/{quote(manifest.name)}"
        f"/versions/{quote(manifest.version)}"
    )


#: numpy's name of each datatype's array type, for the usage snippets
#: (tritonclient sends BF16 from float32 arrays; numpy has no bfloat16).
_NUMPY_TYPES: Final = {
    "BOOL": "bool_", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
    "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "BF16": "float32", "FP32": "float32", "FP64": "float64",
}  # fmt: skip
#: The server address the card's examples use.
_SERVER: Final = "localhost:8000"
#: The environment variable the examples read an API token from.
TOKEN_ENV: Final = "SCISERVE_TOKEN"  # noqa: S105 (a variable name, not a secret)
#: Up to this many values, the ``curl`` example spells the whole tensor out.
_CURL_VALUES: Final = 64


def _example_shape(tensor: TensorSpec) -> list[int]:
    """A concrete shape for an example request: one row wherever the size is free."""
    return [1 if dim == -1 else dim for dim in tensor.shape]


def _example_array(tensor: TensorSpec) -> str:
    """Python source of an all-zero numpy array of ``tensor``'s shape and type."""
    shape = tuple(_example_shape(tensor))
    if tensor.datatype == "BYTES":
        return f'np.full({shape!r}, b"", dtype=object)'
    return f"np.zeros({shape!r}, np.{_NUMPY_TYPES[tensor.datatype]})"


def _usage_snippet(manifest: Manifest) -> str:
    """In-process use through the SDK."""
    lines = ["import numpy as np", "import sciserve", ""]
    lines.append(f"model = sciserve.load({json.dumps(manifest.ref)})")
    if len(manifest.inputs) == 1:
        lines.append(f"outputs = model.predict({_example_array(manifest.inputs[0])})")
    elif manifest.inputs:
        lines.append("outputs = model.predict({")
        lines += [f"    {json.dumps(t.name)}: {_example_array(t)}," for t in manifest.inputs]
        lines.append("})")
    lines += [f"print(outputs[{json.dumps(t.name)}])" for t in manifest.outputs[:1]]
    return "\n".join(lines) + "\n"


def _tritonclient_snippet(
    manifest: Manifest, served: str, server: str = _SERVER, *, auth: bool = False
) -> str:
    """The same call against a server, with NVIDIA's unmodified ``tritonclient``."""
    lines = ["import numpy as np", "import tritonclient.http as httpclient"]
    if auth:
        lines.insert(0, "import os")
    lines += ["", f"client = httpclient.InferenceServerClient({json.dumps(server)})"]
    if auth:
        lines.append(
            f'headers = {{"Authorization": "Bearer " + os.environ[{json.dumps(TOKEN_ENV)}]}}'
        )
    lines.append("inputs = []")
    for tensor in manifest.inputs:
        shape = _example_shape(tensor)
        lines += [
            f"x = httpclient.InferInput({json.dumps(tensor.name)}, {shape}, "
            f"{json.dumps(tensor.datatype)})",
            f"x.set_data_from_numpy({_example_array(tensor)})",
            "inputs.append(x)",
        ]
    lines.append(
        f"result = client.infer({json.dumps(served)}, inputs, "
        f"model_version={json.dumps(manifest.version)}{', headers=headers' if auth else ''})"
    )
    lines += [f"print(result.as_numpy({json.dumps(t.name)}))" for t in manifest.outputs[:1]]
    return "\n".join(lines) + "\n"


def _curl_line(
    manifest: Manifest, served: str, server: str = _SERVER, *, auth: bool = False
) -> str:
    """One JSON inference request with ``curl``, all zeros (or a placeholder if large)."""
    tensors = []
    for tensor in manifest.inputs:
        shape = _example_shape(tensor)
        count = math.prod(shape)
        zero: object = {"BOOL": False, "BYTES": ""}.get(tensor.datatype, 0)
        data: object = [zero] * count if count <= _CURL_VALUES else f"<{count} values>"
        tensors.append(
            {"name": tensor.name, "datatype": tensor.datatype, "shape": shape, "data": data}
        )
    body = json.dumps({"inputs": tensors}, separators=(",", ":"))
    url = (
        f"{server}/v2/models/{quote(served, safe='')}"
        f"/versions/{quote(manifest.version, safe='')}/infer"
    )
    # Single quotes around the body for the shell; a quote inside it is closed and escaped.
    escaped = body.replace("'", "'\\''")
    # The token stays in the environment: never in the command, a page or a shell history.
    header = f' -H "Authorization: Bearer ${TOKEN_ENV}"' if auth else ""
    return f"curl -s {url}{header} -H 'Content-Type: application/json' -d '{escaped}'\n"


def _usage(manifest: Manifest) -> str:
    served = served_name(manifest.namespace, manifest.name)
    return _section(
        "Use it",
        f"In Python, in this process:\n\n```python\n{_usage_snippet(manifest)}```\n\n"
        f"`sciserve serve` serves this version as {_code(served)} "
        f"(version {_code(manifest.version)}) over the Open Inference Protocol, "
        "for example to `tritonclient`:\n\n"
        f"```python\n{_tritonclient_snippet(manifest, served)}```\n\n"
        f"or to `curl`:\n\n```console\n{_curl_line(manifest, served)}```",
    )


# -- Markdown helpers ----------------------------------------------------

_INLINE_SPECIAL = re.compile(r"([\\`*_\[\]<>])")


def _text(value: str) -> str:
    """Plain text (a name, not prose) made inert in Markdown."""
    return _INLINE_SPECIAL.sub(r"\\\1", " ".join(value.split()))


def _code(value: str) -> str:
    """``value`` as a code span, whatever backticks it contains."""
    value = " ".join(value.splitlines())
    longest = max((len(run) for run in re.findall(r"`+", value)), default=0)
    fence = "`" * (longest + 1)
    # A space keeps a leading or trailing backtick from merging with the fence.
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def _link(text: str, url: str) -> str:
    if re.search(r"[\s<>]", url):
        return f"{_text(text)} ({_code(url)})"
    # The angle-bracket form lets the URL contain parentheses.
    target = f"<{url}>" if "(" in url or ")" in url else url
    return f"[{_text(text)}]({target})"


def _cell(value: str) -> str:
    """``value`` made safe for one GFM table cell."""
    value = "<br>".join(value.strip().splitlines())
    # GFM splits cells on every unescaped pipe, even inside code spans.
    return re.sub(r"(?<!\\)\|", r"\\|", value)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines.extend("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)


def _section(title: str, body: str) -> str:
    return f"## {title}\n\n{body.strip()}" if body.strip() else ""


def _human_size(size: int) -> str:
    value, unit = float(size), "B"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        # Compare after rounding so 1023.96 KiB shows as "1.0 MiB", not "1024.0 KiB".
        if round(value, 1) < 1024:
            break
        value, unit = value / 1024, larger
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"


def _compact(items: Sequence[str], limit: int, *, numbered: bool = False) -> str:
    """The first ``limit`` items as code spans, then how many more there are."""
    shown = [
        f"{i} {_code(item)}" if numbered else _code(item) for i, item in enumerate(items[:limit])
    ]
    if len(items) > limit:
        shown.append(f"… and {len(items) - limit} more")
    return ", ".join(shown)


def _number(value: float) -> str:
    # repr gives the shortest text that reads back as the same float.
    return repr(value)


# -- card sections -------------------------------------------------------


def _title(manifest: Manifest) -> str:
    return f"# {manifest.namespace}/{manifest.name}\n\nVersion {_code(manifest.version)}"


def _yanked_banner(reason: str | None) -> str:
    if reason is None:
        return ""
    why = " ".join(reason.split()) or "no reason was given"
    return (
        "> [!WARNING]\n"
        f"> **This version has been yanked:** {_text(why)}\n"
        "> It stays available for reproducibility, but do not use it for new work."
    )


def _summary(
    manifest: Manifest, digest: str, published_at: str | None, aliases: Sequence[str]
) -> str:
    rows = [("Reference", _code(manifest.ref)), ("Runtime", _code(manifest.runtime))]
    if manifest.model_file:
        rows.append(("Model file", _code(manifest.model_file)))
    licence = _licence(manifest.license or "")
    if licence.expression:
        if licence.simple:
            rows.append(("Licence", _link(licence.expression, licence.iris[0])))
        else:
            rows.append(("Licence", _code(licence.expression)))
    rows.append(("Digest", _code(digest)))
    batching = str(manifest.max_batch_size) if manifest.max_batch_size else "0 (no batching)"
    rows.append(("Max batch size", batching))
    rows.append(("Device", _code(manifest.device)))
    if published_at:
        rows.append(("Published", _text(published_at)))
    if aliases:
        rows.append(("Aliases", ", ".join(_code(a) for a in aliases)))
    return _table(("Property", "Value"), rows)


def _tensors(title: str, manifest: Manifest, tensors: Sequence[TensorSpec]) -> str:
    if not tensors:
        return ""
    rows = []
    notes = []
    for tensor in tensors:
        batch_dim = manifest.batch_dim_of(tensor)
        rows.append(
            (
                _code(tensor.name),
                _code(tensor.datatype),
                _code(json.dumps(tensor.shape)),
                "—" if batch_dim is None else str(batch_dim),
                _text(tensor.unit) if tensor.unit else "",
                tensor.description or "",
            )
        )
        if tensor.feature_names:
            names = _compact(tensor.feature_names, 12)
            notes.append(
                f"- Features of {_code(tensor.name)} ({len(tensor.feature_names)}): {names}"
            )
        if tensor.labels:
            labels = _compact(tensor.labels, 20, numbered=True)
            notes.append(f"- Labels of {_code(tensor.name)} ({len(tensor.labels)}): {labels}")
    header = ("Name", "Datatype", "Shape", "Batch dim", "Unit", "Description")
    body = _table(header, rows)
    if notes:
        body += "\n\n" + "\n".join(notes)
    return _section(title, body)


def _datasets(title: str, references: Sequence[DataReference]) -> str:
    items = []
    for ref in references:
        label = ref.name or ref.identifier
        iri = _iri(ref.identifier)
        line = "- " + (_link(label, iri) if iri else _text(label))
        if ref.name and not iri:
            line += f" ({_code(ref.identifier)})"
        if ref.description:
            line += f" — {' '.join(ref.description.split())}"
        if ref.sha256:
            line += f"\n  sha256 {_code(ref.sha256)}"
        items.append(line)
    return _section(title, "\n".join(items))


def _evaluation(metrics: Sequence[MetricValue]) -> str:
    if not metrics:
        return ""
    with_dataset = any(m.dataset for m in metrics)
    with_split = any(m.split for m in metrics)
    header = ["Metric", "Value"]
    header += ["Dataset"] if with_dataset else []
    header += ["Split"] if with_split else []
    rows = []
    for metric in metrics:
        row = [_text(metric.name), _number(metric.value)]
        row += [_text(metric.dataset or "")] if with_dataset else []
        row += [_text(metric.split or "")] if with_split else []
        rows.append(row)
    return _section("Evaluation", _table(header, rows))


def _author_line(author: Author) -> str:
    parts = [f"**{_text(author.name)}**"]
    if author.orcid_url and author.orcid:
        parts.append(f"ORCID {_link(author.orcid, author.orcid_url)}")
    if author.affiliation:
        parts.append(_text(author.affiliation))
    # E-mail addresses stay out: cards are public pages and addresses on them get harvested.
    return "- " + " · ".join(parts)


def _citation(citation: Citation | None) -> str:
    if citation is None:
        return ""
    parts = []
    if citation.text:
        parts.append("\n".join(f"> {line}" for line in citation.text.strip().splitlines()))
    if citation.doi:
        doi = _iri(citation.doi)
        parts.append("DOI: " + (_link(citation.doi, doi) if doi else _code(citation.doi)))
    if citation.url:
        parts.append("URL: " + _link(citation.url, citation.url))
    if citation.cff:
        parts.append(
            f"The package contains {_code(citation.cff)} (Citation File Format) "
            "for reference managers and citation tools."
        )
    return _section("How to cite", "\n\n".join(parts))


def _code_reference(code: CodeReference | None) -> str:
    if code is None:
        return ""
    repository = code.repository
    line = _link(repository, repository) if _IRI_RE.fullmatch(repository) else _code(repository)
    if code.commit:
        line += f" @ {_code(code.commit)}"
    if code.path:
        line += f", path {_code(code.path)}"
    return _section("Code", line)


def _compatibility(constraints: Mapping[str, str]) -> str:
    lines = [f"- {_code(key)}: {_code(value)}" for key, value in constraints.items()]
    return _section("Compatible with", "\n".join(lines))


def _files(files: Sequence[FileEntry]) -> str:
    if not files:
        return ""
    rows = [(_code(f.path), f.role, _human_size(f.size), _code(f.sha256)) for f in files]
    return _section("Files", _table(("Path", "Role", "Size", "SHA-256"), rows))


def render_card(
    manifest: Manifest,
    *,
    digest: str | None = None,
    published_at: str | None = None,
    aliases: Sequence[str] = (),
    yanked_reason: str | None = None,
) -> str:
    """Render the Markdown model card of ``manifest``.

    ``digest`` defaults to the manifest digest; ``published_at`` and
    ``aliases`` are registry facts the manifest cannot know.  A
    ``yanked_reason`` (even an empty one) marks the version as yanked with a
    warning banner under the title.  Sections with nothing to say are left
    out.
    """
    sections = [
        _title(manifest),
        _yanked_banner(yanked_reason),
        (manifest.description or "").strip(),
        _summary(manifest, digest or manifest.digest, published_at, aliases),
        _tensors("Inputs", manifest, manifest.inputs),
        _tensors("Outputs", manifest, manifest.outputs),
        _section("Intended use", manifest.intended_use or ""),
        _section("Limitations", manifest.limitations or ""),
        _datasets("Training data", manifest.training_data),
        _datasets("Validation data", manifest.validation_data),
        _evaluation(manifest.metrics),
        _section("Authors", "\n".join(_author_line(a) for a in manifest.authors)),
        _citation(manifest.citation),
        _code_reference(manifest.code),
        _compatibility(manifest.compatible_with),
        _section("Tags", " ".join(_code(tag) for tag in manifest.tags)),
        _files(manifest.files),
        _usage(manifest),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


@dataclass(frozen=True)
class Snippets:
    """Copy-paste examples calling one version: in process, with ``tritonclient``, with ``curl``."""

    python: str
    tritonclient: str
    curl: str


def snippets(manifest: Manifest, server: str = _SERVER, *, auth: bool = False) -> Snippets:
    """The card's usage examples, calling the server at ``server`` (``host:port``,
    or a URL for ``curl``); with ``auth`` they send the token in ``$SCISERVE_TOKEN``."""
    served = served_name(manifest.namespace, manifest.name)
    host = re.sub(r"^https?://", "", server)
    return Snippets(
        python=_usage_snippet(manifest),
        tritonclient=_tritonclient_snippet(manifest, served, host, auth=auth),
        curl=_curl_line(manifest, served, server, auth=auth),
    )


_BIBTEX_UNSAFE = re.compile(r"[{}\\\x00-\x1f]")


def _bibtex_value(value: str) -> str:
    # Braces and backslashes would end the field or start a command: drop them.
    return _BIBTEX_UNSAFE.sub("", value).strip()


def bibtex(manifest: Manifest, *, year: int | None = None) -> str:
    """A BibTeX ``@software`` entry for one version (``year`` it was published)."""
    key = re.sub(r"[^A-Za-z0-9]+", "_", f"{manifest.namespace}_{manifest.name}_{manifest.version}")
    fields = [("title", manifest.name)]
    if manifest.authors:
        fields.append(("author", " and ".join(a.name for a in manifest.authors)))
    fields.append(("version", manifest.version))
    if year is not None:
        fields.append(("year", str(year)))
    citation = manifest.citation
    if citation is not None and citation.doi:
        fields.append(
            ("doi", re.sub(r"^(?:doi:\s*|https?://(?:dx\.)?doi\.org/)", "", citation.doi))
        )
    if citation is not None and citation.url:
        fields.append(("url", citation.url))
    if manifest.license:
        fields.append(("license", manifest.license))
    body = ",\n".join(f"  {name} = {{{_bibtex_value(value)}}}" for name, value in fields)
    return f"@software{{{key},\n{body}\n}}\n"


# -- JSON-LD -------------------------------------------------------------

JsonLd = dict[str, Any]


def context_document() -> JsonLd:
    """The JSON-LD context document shipped with sciserve (``{"@context": {...}}``)."""
    text = resources.files(_PACKAGE).joinpath(_CONTEXT_RESOURCE).read_text("utf-8")
    document: JsonLd = json.loads(text)
    return document


def document_loader() -> DocumentLoader:
    """A PyLD document loader that knows only :data:`CONTEXT_URL`.

    It answers that URL from the shipped context and refuses every other URL
    with :class:`~sciserve.errors.NotFound`, so expanding or compacting
    sciserve metadata never touches the network::

        jsonld.expand(doc, options={"documentLoader": document_loader()})
    """
    context = context_document()

    def load(url: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if url != CONTEXT_URL:
            raise NotFound(
                f"no JSON-LD document is known at {url}; only {CONTEXT_URL} is available offline"
            )
        return {
            "contextUrl": None,
            "documentUrl": url,
            "contentType": "application/ld+json",
            # A copy, so a processor that edits what it loaded cannot corrupt later loads.
            "document": copy.deepcopy(context),
        }

    return load


def _prune(node: JsonLd) -> JsonLd:
    """``node`` without the properties that have no value."""
    return {key: value for key, value in node.items() if value not in (None, "", [], {})}


def _sha256(hexdigest: str) -> JsonLd:
    return {
        "@type": "Checksum",
        "algorithm": "spdx:checksumAlgorithm_sha256",
        "checksumValue": hexdigest,
    }


def _iri_or_literal(value: str) -> str | JsonLd:
    # Properties such as codeRepository are coerced to IRIs by the context; a
    # value object keeps text that is not an IRI from turning into a bogus
    # relative one.
    return value if _IRI_RE.fullmatch(value) else {"@value": value}


def _double(value: float) -> float | JsonLd:
    if math.isfinite(value):
        return value
    # JSON has no NaN or infinity; XSD spells them like this.
    lexical = "NaN" if math.isnan(value) else ("INF" if value > 0 else "-INF")
    return {"@value": lexical, "@type": "xsd:double"}


def _license_value(expression: str | None) -> str | list[str | JsonLd] | None:
    licence = _licence(expression or "")
    if not licence.expression:
        return None
    if licence.simple:
        return licence.iris[0]
    # A compound expression ("Apache-2.0 OR MIT") is not one licence: keep the
    # expression itself and name each licence it involves.
    return [{"@value": licence.expression}, *licence.iris]


def _person(author: Author) -> JsonLd:
    affiliation = (
        {"@type": "Organization", "name": author.affiliation} if author.affiliation else None
    )
    return _prune(
        {
            "@id": author.orcid_url,
            "@type": "Person",
            "name": author.name,
            "affiliation": affiliation,
        }
    )


def _dataset(ref: DataReference) -> JsonLd:
    return _prune(
        {
            "@id": _iri(ref.identifier),
            "@type": "Dataset",
            "name": ref.name,
            "identifier": ref.identifier,
            "description": ref.description,
            "checksum": _sha256(ref.sha256) if ref.sha256 else None,
        }
    )


def _media_object(entry: FileEntry) -> JsonLd:
    return {
        "@type": "MediaObject",
        "name": entry.path,
        # schema.org's contentSize is text; a plain byte count is what
        # RO-Crate and most harvesters expect.
        "contentSize": str(entry.size),
        "checksum": _sha256(entry.sha256),
    }


def _citation_value(citation: Citation | None) -> str | JsonLd | None:
    if citation is None:
        return None
    iri = (_iri(citation.doi) if citation.doi else None) or (
        _iri(citation.url) if citation.url else None
    )
    if iri is None:
        return {"@value": citation.text} if citation.text else None
    return _prune(
        {
            "@id": iri,
            "@type": "CreativeWork",
            "identifier": citation.doi,
            "url": citation.url,
            "description": citation.text,
        }
    )


def _source_code(code: CodeReference | None) -> JsonLd | None:
    if code is None or code.commit is None:
        return None
    return {
        "@type": "SoftwareSourceCode",
        "codeRepository": _iri_or_literal(code.repository),
        "version": code.commit,
    }


def _evaluations(manifest: Manifest) -> list[JsonLd]:
    """One ``fair4ml:MLModelEvaluation`` per (dataset, split) the metrics name."""
    # A metric may name its data set by the name or identifier of a listed
    # data reference; link to that reference's IRI when it has one.
    known: dict[str, str] = {}
    for ref in (*manifest.training_data, *manifest.validation_data):
        if iri := _iri(ref.identifier):
            known[ref.identifier] = iri
            if ref.name:
                known[ref.name] = iri
    groups: dict[tuple[str | None, str | None], list[MetricValue]] = {}
    for metric in manifest.metrics:
        groups.setdefault((metric.dataset, metric.split), []).append(metric)
    evaluations = []
    for (dataset, split), metrics in groups.items():
        target: JsonLd | None = None
        if dataset:
            iri = known.get(dataset) or _iri(dataset)
            target = {"@id": iri} if iri else {"@type": "Dataset", "name": dataset}
        results = [
            {"@type": "PropertyValue", "name": m.name, "value": _double(m.value)} for m in metrics
        ]
        evaluations.append(
            _prune(
                {
                    "@type": "MLModelEvaluation",
                    "evaluationDataset": target,
                    "description": f"{split} split" if split else None,
                    "evaluationResults": results,
                }
            )
        )
    return evaluations


def to_jsonld(
    manifest: Manifest,
    *,
    digest: str | None = None,
    base_url: str | None = None,
    inline_context: bool = True,
) -> JsonLd:
    """Describe ``manifest`` as a JSON-LD ``fair4ml:MLModel``.

    The node is named by :func:`model_iri`; ``digest`` (default: the manifest
    digest) becomes its ``schema:identifier``.  With ``inline_context`` the
    context is embedded so any processor can expand the document offline;
    otherwise it refers to :data:`CONTEXT_URL`, which :func:`document_loader`
    resolves.  The result is plain JSON data, ready for :func:`json.dumps`.
    """
    code = manifest.code
    has_labels = any(output.labels for output in manifest.outputs)
    node: JsonLd = {
        "@context": context_document()["@context"] if inline_context else CONTEXT_URL,
        "@id": model_iri(manifest, base_url),
        "@type": ["MLModel", "CreativeWork"],
        "name": manifest.name,
        "version": manifest.version,
        "identifier": digest or manifest.digest,
        "url": model_iri(manifest, base_url) if base_url is not None else None,
        "description": manifest.description,
        "license": _license_value(manifest.license),
        "author": [_person(a) for a in manifest.authors],
        "keywords": list(manifest.tags),
        # Class labels on an output are what makes a model a classifier.
        "mlTask": "classification" if has_labels else None,
        "intendedUse": manifest.intended_use,
        "modelRisksBiasLimitations": manifest.limitations,
        "trainedOn": [_dataset(ref) for ref in manifest.training_data],
        # The manifest's validation data is what the published metrics were
        # measured on, which FAIR4ML calls evaluatedOn.
        "evaluatedOn": [_dataset(ref) for ref in manifest.validation_data],
        "hasEvaluation": _evaluations(manifest),
        "citation": _citation_value(manifest.citation),
        "codeRepository": _iri_or_literal(code.repository) if code else None,
        "hasSourceCode": _source_code(code),
        "runtimePlatform": manifest.runtime,
        "distribution": [_media_object(entry) for entry in manifest.files],
        "codeSampleSnippet": _usage_snippet(manifest),
    }
    return _prune(node)
