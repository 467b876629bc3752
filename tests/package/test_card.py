"""Model cards and JSON-LD metadata, checked with a real JSON-LD processor (offline)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest
from pyld import jsonld

from sciserve.errors import NotFound
from sciserve.package.card import (
    CONTEXT_URL,
    TOKEN_ENV,
    bibtex,
    context_document,
    document_loader,
    model_iri,
    render_card,
    snippets,
    to_jsonld,
)
from sciserve.package.manifest import Manifest
from sciserve.package.validate import canonical_license

SCHEMA = "https://schema.org/"
FAIR4ML = "https://w3id.org/fair4ml#"
SPDX = "http://spdx.org/rdf/terms#"
CODEMETA = "https://codemeta.github.io/terms/"

ORCID = "0000-0002-1825-0097"
MODEL_SHA = hashlib.sha256(b"onnx bytes").hexdigest()
CFF_SHA = hashlib.sha256(b"cff: 1.2.0").hexdigest()
TRAIN_SHA = hashlib.sha256(b"training set").hexdigest()
TRAIN_DOI = "10.5281/zenodo.1234567"


def rich_manifest(**changes: Any) -> Manifest:
    data: dict[str, Any] = {
        "name": "rb-classifier",
        "version": "1.2.0",
        "namespace": "astro",
        "description": "Real/bogus classifier for difference-image cutouts.",
        "runtime": "onnx",
        "model_file": "model.onnx",
        "max_batch_size": 64,
        "inputs": [
            {
                "name": "cutouts",
                "datatype": "FP32",
                "shape": [-1, 3, 63, 63],
                "unit": "counts",
                "description": "science, template and difference stamps",
            },
            {
                "name": "features",
                "datatype": "FP64",
                "shape": [-1, 4],
                "feature_names": ["magpsf", "sigmapsf", "fwhm", "elong"],
            },
        ],
        "outputs": [
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [-1, 2],
                "labels": ["bogus", "real"],
            }
        ],
        "files": [
            {"path": "model.onnx", "size": 2_500_000, "sha256": MODEL_SHA, "role": "model"},
            {"path": "CITATION.cff", "size": 812, "sha256": CFF_SHA, "role": "citation"},
        ],
        "license": "MIT",
        "authors": [
            {"name": "Josiah Carberry", "orcid": ORCID, "affiliation": "Brown University"},
            {"name": "Ada Observer"},
        ],
        "citation": {
            "cff": "CITATION.cff",
            "text": "Carberry J. (2024), A real/bogus classifier.",
            "doi": "10.1000/xyz123",
        },
        "training_data": [
            {"name": "ZTF real/bogus set", "identifier": f"doi:{TRAIN_DOI}", "sha256": TRAIN_SHA}
        ],
        "validation_data": [
            {"name": "Held-out nights", "identifier": "https://example.org/data/heldout"}
        ],
        "code": {
            "repository": "https://github.com/example/rb-classifier",
            "commit": "3f2a1b0c",
            "path": "train.py",
        },
        "compatible_with": {"alert_schema": "ztf:>=4.0"},
        "intended_use": "Vetting ZTF alerts before follow-up.",
        "limitations": "Untested on surveys other than ZTF.",
        "tags": ["astronomy", "transients"],
        "metrics": [
            {"name": "ROC AUC", "value": 0.987, "dataset": "Held-out nights", "split": "test"},
            {"name": "accuracy", "value": 0.951, "dataset": "Held-out nights", "split": "test"},
        ],
    }
    data.update(changes)
    return Manifest.model_validate(data)


def minimal_manifest() -> Manifest:
    return Manifest(name="tiny", version="0.1", runtime="onnx")


def model_node(expanded: list[dict[str, Any]]) -> dict[str, Any]:
    (node,) = [n for n in expanded if f"{FAIR4ML}MLModel" in n.get("@type", [])]
    return node


def expand_offline(document: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = jsonld.expand(
        document, options={"documentLoader": document_loader()}
    )
    return result


# -- JSON-LD -------------------------------------------------------------


@pytest.mark.parametrize("inline_context", [True, False])
def test_jsonld_expands_to_the_public_vocabularies(inline_context: bool) -> None:
    manifest = rich_manifest()
    document = to_jsonld(manifest, inline_context=inline_context)
    assert (document["@context"] == CONTEXT_URL) is not inline_context

    node = model_node(expand_offline(document))

    assert node["@id"] == "urn:sciserve:astro/rb-classifier:1.2.0"
    assert f"{SCHEMA}CreativeWork" in node["@type"]
    assert node[f"{SCHEMA}license"] == [{"@id": "https://spdx.org/licenses/MIT"}]
    assert node[f"{SCHEMA}identifier"] == [{"@value": manifest.digest}]
    assert node[f"{SCHEMA}version"] == [{"@value": "1.2.0"}]
    assert node[f"{FAIR4ML}intendedUse"] == [{"@value": "Vetting ZTF alerts before follow-up."}]
    assert node[f"{FAIR4ML}mlTask"] == [{"@value": "classification"}]

    # Authors keep their order (an ordered list), the first one named by ORCID.
    (author_list,) = node[f"{SCHEMA}author"]
    first, second = author_list["@list"]
    assert first["@id"] == f"https://orcid.org/{ORCID}"
    assert first["@type"] == [f"{SCHEMA}Person"]
    assert first[f"{SCHEMA}name"] == [{"@value": "Josiah Carberry"}]
    (affiliation,) = first[f"{SCHEMA}affiliation"]
    assert affiliation[f"{SCHEMA}name"] == [{"@value": "Brown University"}]
    assert "@id" not in second

    files = {f[f"{SCHEMA}name"][0]["@value"]: f for f in node[f"{SCHEMA}distribution"]}
    assert set(files) == {"model.onnx", "CITATION.cff"}
    model_file = files["model.onnx"]
    assert model_file["@type"] == [f"{SCHEMA}MediaObject"]
    assert model_file[f"{SCHEMA}contentSize"] == [{"@value": "2500000"}]
    (checksum,) = model_file[f"{SPDX}checksum"]
    assert checksum[f"{SPDX}algorithm"] == [{"@id": f"{SPDX}checksumAlgorithm_sha256"}]
    assert checksum[f"{SPDX}checksumValue"][0]["@value"] == MODEL_SHA

    (trained_on,) = node[f"{FAIR4ML}trainedOn"]
    assert trained_on["@id"] == f"https://doi.org/{TRAIN_DOI}"
    assert trained_on["@type"] == [f"{SCHEMA}Dataset"]
    assert trained_on[f"{SPDX}checksum"][0][f"{SPDX}checksumValue"][0]["@value"] == TRAIN_SHA
    (evaluated_on,) = node[f"{FAIR4ML}evaluatedOn"]
    assert evaluated_on["@id"] == "https://example.org/data/heldout"

    assert node[f"{SCHEMA}codeRepository"] == [{"@id": "https://github.com/example/rb-classifier"}]
    (source,) = node[f"{CODEMETA}hasSourceCode"]
    assert source[f"{SCHEMA}version"] == [{"@value": "3f2a1b0c"}]
    (citation,) = node[f"{SCHEMA}citation"]
    assert citation["@id"] == "https://doi.org/10.1000/xyz123"
    assert {k["@value"] for k in node[f"{SCHEMA}keywords"]} == {"astronomy", "transients"}


def test_metrics_become_evaluations_linked_to_their_dataset() -> None:
    node = model_node(expand_offline(to_jsonld(rich_manifest())))

    (evaluation,) = node[f"{FAIR4ML}hasEvaluation"]
    assert evaluation["@type"] == [f"{FAIR4ML}MLModelEvaluation"]
    # The metric names its data set by the validation reference's name.
    assert evaluation[f"{FAIR4ML}evaluationDataset"] == [
        {"@id": "https://example.org/data/heldout"}
    ]
    results = {
        r[f"{SCHEMA}name"][0]["@value"]: r[f"{SCHEMA}value"][0]["@value"]
        for r in evaluation[f"{FAIR4ML}evaluationResults"]
    }
    assert results == {"ROC AUC": 0.987, "accuracy": 0.951}


def test_compound_licence_keeps_the_expression_and_names_each_licence() -> None:
    manifest = rich_manifest(license="Apache-2.0 OR MIT")
    node = model_node(expand_offline(to_jsonld(manifest)))

    licences = node[f"{SCHEMA}license"]
    assert {"@value": "Apache-2.0 OR MIT"} in licences
    assert {"@id": "https://spdx.org/licenses/Apache-2.0"} in licences
    assert {"@id": "https://spdx.org/licenses/MIT"} in licences
    assert len(licences) == 3
    (row,) = table_rows(render_card(manifest), "Licence")
    assert row == ["Licence", "`Apache-2.0 OR MIT`"]


def test_unknown_licence_and_non_url_repository_stay_literals() -> None:
    manifest = rich_manifest(
        license="Proprietary, ask the authors",
        code={"repository": "git@github.com:example/rb.git"},
    )
    node = model_node(expand_offline(to_jsonld(manifest)))

    assert node[f"{SCHEMA}license"] == [{"@value": "Proprietary, ask the authors"}]
    assert node[f"{SCHEMA}codeRepository"] == [{"@value": "git@github.com:example/rb.git"}]
    assert f"{CODEMETA}hasSourceCode" not in node


def test_base_url_names_the_model_by_its_registry_address() -> None:
    manifest = rich_manifest()
    digest = "sha256:" + "a" * 64
    document = to_jsonld(manifest, base_url="https://models.example.org/", digest=digest)

    node = model_node(expand_offline(document))

    expected = "https://models.example.org/models/astro/rb-classifier/versions/1.2.0"
    assert node["@id"] == expected == model_iri(manifest, "https://models.example.org")
    assert node[f"{SCHEMA}url"] == [{"@id": expected}]
    assert node[f"{SCHEMA}identifier"] == [{"@value": digest}]


def test_minimal_manifest_gives_a_small_valid_document() -> None:
    document = to_jsonld(minimal_manifest())
    json.dumps(document, allow_nan=False)  # plain JSON, no NaN or custom objects

    node = model_node(expand_offline(document))

    assert node["@id"] == "urn:sciserve:default/tiny:0.1"
    assert f"{SCHEMA}license" not in node
    assert f"{SCHEMA}author" not in node
    assert f"{SCHEMA}distribution" not in node


def test_non_finite_metric_is_an_xsd_double_not_invalid_json() -> None:
    manifest = rich_manifest(metrics=[{"name": "chi2", "value": float("inf")}])
    document = to_jsonld(manifest)
    json.dumps(document, allow_nan=False)

    (evaluation,) = model_node(expand_offline(document))[f"{FAIR4ML}hasEvaluation"]
    (result,) = evaluation[f"{FAIR4ML}evaluationResults"]
    assert result[f"{SCHEMA}value"] == [
        {"@value": "INF", "@type": "http://www.w3.org/2001/XMLSchema#double"}
    ]


def test_document_loader_serves_only_the_shipped_context() -> None:
    loader = document_loader()

    remote = loader(CONTEXT_URL, {})
    assert remote["documentUrl"] == CONTEXT_URL
    assert remote["contextUrl"] is None
    assert remote["document"] == context_document()
    assert "@context" in remote["document"]

    with pytest.raises(NotFound, match=r"example\.org"):
        loader("https://example.org/x", {})


def test_unknown_remote_context_fails_expansion_instead_of_fetching() -> None:
    document = {"@context": "https://example.org/x", "@id": "urn:x", "name": "x"}

    with pytest.raises(jsonld.JsonLdError) as caught:
        jsonld.expand(document, options={"documentLoader": document_loader()})
    assert isinstance(caught.value.__cause__, NotFound)


def test_loaded_context_cannot_be_corrupted_by_the_caller() -> None:
    loader = document_loader()
    first = loader(CONTEXT_URL, {})
    first["document"]["@context"].clear()

    assert loader(CONTEXT_URL, {})["document"]["@context"]


# -- Markdown card -------------------------------------------------------


def table_rows(card: str, first_cell: str) -> list[list[str]]:
    """The cells of every table row whose first cell is ``first_cell``."""
    rows = []
    for line in card.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if cells[0] == first_cell:
                rows.append(cells)
    return rows


def test_card_shows_the_metadata() -> None:
    manifest = rich_manifest()
    card = render_card(manifest, published_at="2024-05-01T12:00:00Z", aliases=["stable", "latest"])

    assert card.startswith("# astro/rb-classifier\n")
    assert "`1.2.0`" in card
    assert "[MIT](https://spdx.org/licenses/MIT)" in card
    assert f"`{manifest.digest}`" in card
    assert "2024-05-01T12:00:00Z" in card
    assert "`stable`, `latest`" in card
    for tensor in (*manifest.inputs, *manifest.outputs):
        (row,) = table_rows(card, f"`{tensor.name}`")
        assert row[1] == f"`{tensor.datatype}`"
        assert len(row) == 6
    assert table_rows(card, "`cutouts`")[0][2:5] == ["`[-1, 3, 63, 63]`", "0", "counts"]
    assert "`magpsf`, `sigmapsf`, `fwhm`, `elong`" in card
    assert "0 `bogus`, 1 `real`" in card
    assert f"[{ORCID}](https://orcid.org/{ORCID})" in card
    assert "Brown University" in card
    assert table_rows(card, "ROC AUC") == [["ROC AUC", "0.987", "Held-out nights", "test"]]
    assert f"[ZTF real/bogus set](https://doi.org/{TRAIN_DOI})" in card
    assert f"`{TRAIN_SHA}`" in card
    assert "[10.1000/xyz123](https://doi.org/10.1000/xyz123)" in card
    assert "`CITATION.cff`" in card
    assert "@ `3f2a1b0c`" in card
    assert "`alert_schema`: `ztf:>=4.0`" in card
    assert table_rows(card, "`model.onnx`") == [
        ["`model.onnx`", "model", "2.4 MiB", f"`{MODEL_SHA}`"]
    ]
    assert 'sciserve.load("astro/rb-classifier:1.2.0")' in card
    for heading in (
        "Inputs", "Outputs", "Intended use", "Limitations", "Training data",
        "Validation data", "Evaluation", "Authors", "How to cite", "Code",
        "Compatible with", "Tags", "Files", "Use it",
    ):  # fmt: skip
        assert f"\n## {heading}\n" in card
    assert "WARNING" not in card


def test_card_of_a_minimal_manifest_leaves_out_empty_sections() -> None:
    card = render_card(minimal_manifest())

    headings = re.findall(r"^## (.+)$", card, flags=re.MULTILINE)
    assert headings == ["Use it"]
    assert card.startswith("# default/tiny\n")
    assert "`onnx`" in card
    assert "0 (no batching)" in card
    assert "Licence" not in card


def test_pipes_and_newlines_do_not_break_table_rows() -> None:
    inputs = [
        {
            "name": "x|y",
            "datatype": "FP32",
            "shape": [-1, 2],
            "unit": "mag | flux",
            "description": "first line | with a pipe\nsecond line",
        }
    ]
    card = render_card(rich_manifest(inputs=inputs))

    (row,) = table_rows(card, r"`x\|y`")
    assert len(row) == 6
    assert row[4] == r"mag \| flux"
    assert row[5] == r"first line \| with a pipe<br>second line"


def test_yanked_version_shows_a_warning_banner() -> None:
    card = render_card(rich_manifest(), yanked_reason="wrong normalisation of the stamps")

    assert card.partition("\n\n")[0] == "# astro/rb-classifier"
    banner = card[card.index("> [!WARNING]") :].split("\n\n")[0]
    assert "yanked" in banner
    assert "wrong normalisation of the stamps" in banner
    # The banner comes before the content, where nobody can miss it.
    assert card.index("> [!WARNING]") < card.index("## Inputs")


def test_usage_section_names_the_served_model_for_the_sdk_tritonclient_and_curl() -> None:
    card = render_card(rich_manifest())
    usage = card.split("\n## Use it\n", 1)[1]

    assert 'sciserve.load("astro/rb-classifier:1.2.0")' in usage
    assert "serves this version as `astro.rb-classifier`" in usage
    assert 'client.infer("astro.rb-classifier", inputs, model_version="1.2.0")' in usage
    assert 'httpclient.InferInput("cutouts", [1, 3, 63, 63], "FP32")' in usage
    assert "np.zeros((1, 4), np.float64)" in usage
    (curl,) = [line for line in usage.splitlines() if line.startswith("curl ")]
    assert "localhost:8000/v2/models/astro.rb-classifier/versions/1.2.0/infer" in curl
    # Small tensors are spelled out, large ones are a placeholder.
    assert '"shape":[1,4],"data":[0,0,0,0]' in curl
    assert '"data":"<11907 values>"' in curl


def test_usage_section_of_the_default_namespace_serves_the_bare_name() -> None:
    card = render_card(minimal_manifest())
    assert "serves this version as `tiny`" in card
    assert "/v2/models/tiny/versions/" in card


# -- the dashboard's copy-paste examples -------------------------------------


def test_snippets_name_the_server_and_read_the_token_from_the_environment() -> None:
    manifest = rich_manifest()
    plain = snippets(manifest, "http://127.0.0.1:8123")
    assert plain.curl.startswith(
        "curl -s http://127.0.0.1:8123/v2/models/astro.rb-classifier/versions/1.2.0/infer "
    )
    assert "Authorization" not in plain.curl + plain.tritonclient
    assert 'InferenceServerClient("127.0.0.1:8123")' in plain.tritonclient
    assert 'sciserve.load("astro/rb-classifier:1.2.0")' in plain.python
    secured = snippets(manifest, "https://models.example.org", auth=True)
    assert f'-H "Authorization: Bearer ${TOKEN_ENV}"' in secured.curl
    assert f'os.environ["{TOKEN_ENV}"]' in secured.tritonclient
    assert "headers=headers)" in secured.tritonclient
    # The examples are code: they must at least parse.
    compile(secured.tritonclient, "tritonclient", "exec")
    compile(secured.python, "python", "exec")


def test_bibtex_entry_cannot_be_broken_out_of() -> None:
    manifest = rich_manifest(
        authors=[{"name": "Ada {Lovelace}} @misc{evil,"}, {"name": "Grace \\input{x}"}]
    )
    entry = bibtex(manifest, year=2026)
    assert entry.startswith("@software{astro_rb_classifier_1_2_0,\n")
    assert "  author = {Ada Lovelace @miscevil, and Grace inputx},\n" in entry
    assert "  year = {2026},\n" in entry
    # One entry: its braces balance and nothing opens a second one.
    assert entry.count("{") == entry.count("}")
    assert entry.count("@") == 2  # the entry type, and the text of the name


def test_markup_is_not_a_licence_expression() -> None:
    _, problems = canonical_license('<script>alert("x")</script>')
    assert [p.path for p in problems] == ["license"]
    assert "is not an SPDX licence expression" in problems[0].message
    assert canonical_license("mit") == ("MIT", [])
