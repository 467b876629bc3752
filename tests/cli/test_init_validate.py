"""``sciserve init`` over an existing package (refused, ``--force``, ``--update``)
and ``sciserve validate`` reporting every problem at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sciserve._hashing import sha256_file

from helpers.cli import Cli
from helpers.packages import linear_onnx

ORCID = "0000-0002-1825-0097"


def _model(path: Path, n_out: int = 3, scale: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    linear_onnx(path, np.ones((4, n_out), np.float32) * scale, np.zeros(n_out, np.float32))
    return path


def _init(cli: Cli, model: Path, *extra: str, code: int = 0) -> str:
    return cli("init", str(model), "--name", "lin", "--version", "1.0.0", *extra, code=code)


def _hand_edit(manifest: Path) -> dict[str, Any]:
    """What a person adds to a manifest after ``init``."""
    data = yaml.safe_load(manifest.read_text())
    data.update(
        {
            "namespace": "astro",
            "description": "hand-written description",
            "license": "CC-BY-4.0",
            "authors": [{"name": "Ada Lovelace", "orcid": ORCID, "affiliation": "Engines"}],
            "citation": {"doi": "10.1234/abcd", "text": "Lovelace (1843)"},
            "training_data": [{"name": "ZTF BTS", "identifier": "https://doi.org/10.1/x"}],
            "intended_use": "classifying light curves",
            "tags": ["astro", "light-curves"],
            "max_batch_size": 32,
        }
    )
    data["outputs"][0]["labels"] = ["a", "b", "c"]
    data["outputs"][0]["description"] = "class scores"
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    return data


def test_init_refuses_to_overwrite_a_manifest(cli: Cli, tmp_path: Path) -> None:
    model = _model(tmp_path / "pkg" / "model.onnx")
    _init(cli, model)
    manifest = tmp_path / "pkg" / "sciserve.yaml"
    _hand_edit(manifest)
    before = manifest.read_text()
    out = _init(cli, model, "--license", "MIT", code=2)
    assert "sciserve.yaml already exists" in out
    assert "--update" in out and "--force" in out
    assert manifest.read_text() == before
    # --force overwrites: what was written by hand is gone.
    _init(cli, model, "--force")
    assert "hand-written" not in manifest.read_text()
    assert "--update or --force, not both" in _init(cli, model, "--force", "--update", code=2)


def test_init_update_refreshes_files_and_signature_and_keeps_what_people_wrote(
    cli: Cli, tmp_path: Path
) -> None:
    model = _model(tmp_path / "pkg" / "model.onnx")
    (tmp_path / "pkg" / "notes.txt").write_text("v1")
    _init(cli, model, "--file", str(tmp_path / "pkg" / "notes.txt"))
    manifest = tmp_path / "pkg" / "sciserve.yaml"
    written = _hand_edit(manifest)
    # The model is retrained (new weights, same signature) and the notes change:
    # validate says the checksums are stale and tells people to run --update.
    _model(model, scale=2.0)
    (tmp_path / "pkg" / "notes.txt").write_text("version two")
    stale = cli("validate", str(tmp_path / "pkg"), code=2)
    assert "sciserve init --update" in stale

    result = cli.json("init", "--update", str(tmp_path / "pkg"))
    assert result["manifest"] == str(manifest)
    data = yaml.safe_load(manifest.read_text())
    for field in (
        "namespace",
        "description",
        "license",
        "authors",
        "citation",
        "training_data",
        "intended_use",
        "tags",
        "max_batch_size",
        "name",
        "version",
    ):
        assert data[field] == written[field], field
    assert data["outputs"][0]["labels"] == ["a", "b", "c"]
    assert data["outputs"][0]["description"] == "class scores"
    assert [f["path"] for f in data["files"]] == ["model.onnx", "notes.txt"]
    assert data["files"][1]["size"] == len("version two")
    assert "ready to publish" in cli("validate", str(tmp_path / "pkg"))

    # A new signature (4 classes instead of 3) is taken from the file; options
    # given on the command line replace what the manifest says.
    _model(model, n_out=4)
    cli("init", str(model), "--update", "--version", "2.0.0", "--license", "MIT")
    data = yaml.safe_load(manifest.read_text())
    assert data["outputs"][0]["shape"] == [-1, 4]
    assert data["outputs"][0]["description"] == "class scores"
    assert data["version"] == "2.0.0" and data["license"] == "MIT"
    assert data["authors"] == written["authors"]
    # The labels no longer fit the new shape: validate says so (by hand to fix).
    assert "labels" in cli("validate", str(tmp_path / "pkg"), code=2)


def test_init_update_needs_a_manifest(cli: Cli, tmp_path: Path) -> None:
    model = _model(tmp_path / "pkg" / "model.onnx")
    out = cli("init", "--update", str(model), code=2)
    assert "no sciserve.yaml" in out and "without --update" in out


def test_init_without_update_needs_a_model_name_and_version(cli: Cli, tmp_path: Path) -> None:
    model = _model(tmp_path / "pkg" / "model.onnx")
    assert "--name" in cli("init", str(model), "--version", "1", code=2)
    assert "model file" in cli("init", "--name", "x", "--version", "1", code=2)


# -- validate: every problem at once; ORCID and licence hints ------------------


def test_validate_reports_every_problem_at_once(cli: Cli, tmp_path: Path) -> None:
    model = _model(tmp_path / "pkg" / "model.onnx")
    _init(cli, model, "--license", "MIT", "--description", "d")
    manifest = tmp_path / "pkg" / "sciserve.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["authors"] = [{"name": "Ada", "orcid": "0000-0002-1825-0096"}]  # check digit off by one
    data["training_data"] = [{"name": "ZTF", "identifier": "see the paper"}]
    data["inputs"][0]["shape"] = [-1, 5]  # the file says 4
    data["files"][0]["sha256"] = "0" * 64
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    result = cli.json("validate", str(tmp_path / "pkg"), code=2)
    found = {p["path"]: p for p in result["problems"]}
    assert "authors[0].orcid" in found
    assert "check digit" in found["authors[0].orcid"]["message"]
    assert "training_data[0].identifier" in found
    assert "DOI" in found["training_data[0].identifier"]["hint"]
    assert "files[0].sha256" in found
    # With the checksum wrong the file is not inspected; once it is right,
    # the shape that contradicts the file shows up beside the other problems.
    data["files"][0]["sha256"] = sha256_file(model)[0]
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    result = cli.json("validate", str(tmp_path / "pkg"), code=2)
    paths = {p["path"] for p in result["problems"]}
    assert {"authors[0].orcid", "training_data[0].identifier", "inputs[0].shape[1]"} <= paths


def test_a_bad_orcid_check_digit_to_init_is_a_hint_not_a_traceback(
    cli: Cli, tmp_path: Path
) -> None:
    model = _model(tmp_path / "pkg" / "model.onnx")
    out = _init(cli, model, "--author", "Ada Lovelace,0000-0002-1825-0096", code=2)
    assert "authors[0].orcid" in out
    assert "the ORCID check digit is wrong" in out
    assert not (tmp_path / "pkg" / "sciserve.yaml").exists()
    out = _init(cli, model, "--author", "Ada Lovelace,1234", code=2)
    assert "0000-0002-1825-0097" in out  # the hint shows the form


def test_licences_are_stored_as_canonical_spdx_ids(cli: Cli, tmp_path: Path) -> None:
    model = _model(tmp_path / "pkg" / "model.onnx")
    manifest = tmp_path / "pkg" / "sciserve.yaml"
    _init(cli, model, "--license", "apache-2.0 or mit")
    assert yaml.safe_load(manifest.read_text())["license"] == "Apache-2.0 OR MIT"
    # An ambiguous name is refused, with the canonical candidates.
    out = _init(cli, model, "--force", "--license", "GPL", code=2)
    assert "'GPL' is ambiguous" in out
    assert "GPL-3.0-only" in out and "GPL-3.0-or-later" in out
    out = cli("init", "--update", str(tmp_path / "pkg"), "--license", "gpl", code=2)
    assert "GPL-2.0-or-later" in out
    assert yaml.safe_load(manifest.read_text())["license"] == "Apache-2.0 OR MIT"
    # A manifest written by hand in another case is flagged with the canonical form.
    data = yaml.safe_load(manifest.read_text())
    data["license"] = "cc-by-4.0"
    manifest.write_text(yaml.safe_dump(data))
    result = cli.json("validate", str(tmp_path / "pkg"), code=2)
    (problem,) = [p for p in result["problems"] if p["path"] == "license"]
    assert "CC-BY-4.0" in problem["hint"]
    # init --update writes it canonically.
    cli("init", "--update", str(tmp_path / "pkg"))
    assert yaml.safe_load(manifest.read_text())["license"] == "CC-BY-4.0"
    assert "ready to publish" in cli("validate", str(tmp_path / "pkg"))


def test_a_stale_extra_file_does_not_hide_the_signature_problems(cli: Cli, tmp_path: Path) -> None:
    model = _model(tmp_path / "pkg" / "model.onnx")
    (tmp_path / "pkg" / "notes.txt").write_text("v1")
    _init(cli, model, "--license", "MIT", "--file", str(tmp_path / "pkg" / "notes.txt"))
    manifest = tmp_path / "pkg" / "sciserve.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["outputs"][0]["shape"] = [-1, 7]  # the file says 3
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "pkg" / "notes.txt").write_text("v2")  # same size, other checksum
    result = cli.json("validate", str(tmp_path / "pkg"), code=2)
    paths = {p["path"] for p in result["problems"] if p["severity"] == "error"}
    assert paths == {"files[1].sha256", "outputs[0].shape[1]"}
