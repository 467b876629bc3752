"""A pipeline end to end on a replayed file: simulated Rubin alerts plus bad messages."""

from __future__ import annotations

import asyncio
import csv
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

import sciserve
from sciserve._hashing import sha256_file
from sciserve.access.tokens import TokenStore
from sciserve.config import RateLimit, Settings
from sciserve.errors import InvalidInput, PermissionDenied, RateLimited, Unauthenticated
from sciserve.package.manifest import Manifest, dump_manifest
from sciserve.registry.registry import Registry
from sciserve.streams import pipeline as pipeline_module
from sciserve.streams.base import Message, OutRecord, open_sink, open_source
from sciserve.streams.codecs import codec_for
from sciserve.streams.pipeline import Pipeline
from sciserve.streams.results import Annotation, ResultStore
from sciserve.streams.simulate import AlertSimulator, features_from_alert
from sciserve.streams.spec import load_spec, parse_spec

from helpers.server import run_cli

#: A real alert cut short.
_TRUNCATED = next(AlertSimulator(seed=99).alerts(1)).payload[:2000]

#: Bad messages, each with the reason the dead-letter record must give.
BAD = [
    (b"garbage", "bad-magic"),
    (_TRUNCATED, "truncated"),
    (b"\x00\x00\x00\x04\x4d" + b"x" * 10, "invalid-avro"),  # a real schema id, broken Avro
    (b"\x00\x00\x00\x27\x0f" + b"\x00" * 40, "unknown-schema"),  # schema id 9999
    (b"", "empty"),
    (b"\x00\x00\x00\x04\x4d" + b"\x01" * (2 << 20), "oversized"),
]


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(home, *args, timeout=300)


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict[str, str]]]:
    """A registry with the example models and a file of 400 alerts and some bad messages."""
    base = tmp_path_factory.mktemp("pipeline")
    home = base / "home"
    assert _cli(home, "--json", "up", "--no-serve").returncode == 0
    alerts = base / "alerts.avro"
    done = _cli(
        home,
        "alerts",
        "simulate",
        "--count",
        "400",
        "--seed",
        "7",
        "--to",
        f"file://{alerts}",
        "--truth",
        str(base / "truth.csv"),
    )
    assert done.returncode == 0, done.stderr

    async def add_bad() -> None:
        sink = open_sink(f"file://{alerts}")
        await sink.start()
        await sink.write([OutRecord(value) for value, _ in BAD])
        await sink.close()

    asyncio.run(add_bad())
    with open(base / "truth.csv", newline="") as fh:
        truth = list(csv.DictReader(fh))
    return home, alerts, truth


def _spec(base: Path, alerts: Path, name: str) -> Path:
    spec = base / f"{name}.yaml"
    spec.write_text(
        f"name: {name}\n"
        f"source: file://{alerts}\n"
        "codec: lsst\n"
        "models:\n  - ref: examples/lc-classifier@production\n"
        "filter: \"label == 'kilonova' and score > 0.5\"\n"
        f"sinks: [results, file://{base / (name + '-out.jsonl')}]\n"
        f"dead_letter: file://{base / (name + '-dead.jsonl')}\n"
        "batch: 64\n"
    )
    return spec


def test_every_alert_is_annotated_once_and_bad_ones_are_dead_lettered(
    stream: tuple[Path, Path, list[dict[str, str]]], tmp_path: Path
) -> None:
    home, alerts, truth = stream
    spec = _spec(tmp_path, alerts, "smoke")
    run = _cli(home, "stream", "run", str(spec))
    assert run.returncode == 0, run.stderr
    with ResultStore.open(Settings.load(home, environ={})) as store:
        ids = store.alert_ids(pipeline="smoke")
        assert sorted(ids) == sorted(int(row["alert_id"]) for row in truth)
        one = store.get(ids[0], "examples/lc-classifier", "1.0.0")
        assert one is not None
    dead = [json.loads(line) for line in (tmp_path / "smoke-dead.jsonl").read_text().splitlines()]
    assert [d["error"] for d in dead] == [reason for _, reason in BAD]
    assert all(d["pipeline"] == "smoke" and d["offset"] >= 400 for d in dead)
    published = [
        json.loads(line) for line in (tmp_path / "smoke-out.jsonl").read_text().splitlines()
    ]
    assert published and all(p["label"] == "kilonova" and p["score"] > 0.5 for p in published)
    kilonovae = {int(r["alert_id"]) for r in truth if r["label"] == "kilonova"}
    hits = {p["alert_id"] for p in published} & kilonovae
    assert len(hits) > 0.8 * len(kilonovae)  # the classifier finds them
    provenance = published[0]
    assert provenance["model_digest"].startswith("sha256:")
    assert "onnxruntime" in provenance["library_versions"]

    # Replaying the same input (a restart from the beginning) adds nothing.
    (alerts.parent / (alerts.name + ".smoke.offset")).unlink()
    again = _cli(home, "stream", "run", str(spec))
    assert again.returncode == 0, again.stderr
    with ResultStore.open(Settings.load(home, environ={})) as store:
        assert store.count(pipeline="smoke") == len(truth)


def test_status_reports_the_run(
    stream: tuple[Path, Path, list[dict[str, str]]], tmp_path: Path
) -> None:
    home, alerts, truth = stream
    # A file source keeps its committed offset beside the file: replay a copy.
    copy = tmp_path / "copy.avro"
    copy.write_bytes(alerts.read_bytes())
    assert _cli(home, "stream", "run", str(_spec(tmp_path, copy, "counted"))).returncode == 0
    status = _cli(home, "--json", "stream", "status", "counted")
    assert status.returncode == 0, status.stderr
    [entry] = json.loads(status.stdout)
    assert entry["state"] == "stopped"
    assert entry["consumed"] == len(truth) + len(BAD)
    assert entry["dead_lettered"] == len(BAD)
    # By stage, and the newest with their causes and reasons, newest first
    # (what the dashboard's streams page shows).
    assert entry["dead_letters_by_stage"] == {"decode": len(BAD)}
    recent = entry["recent_dead_letters"]
    assert [d["error"] for d in recent] == [reason for _, reason in reversed(BAD)]
    assert all(d["stage"] == "decode" and d["reason"] and d["at"] for d in recent)


# -- in-process runs: model failures, filter failures, user features ------------

#: A model that fails on every other call (a retry succeeds), or on every
#: call with ``always``.
FLAKY_MODEL = """
import numpy as np


class Model:
    def __init__(self, root, options):
        self.calls = 0
        self.always = options.get("always", False)

    def predict(self, inputs):
        self.calls += 1
        if self.always or self.calls % 2:
            raise RuntimeError("detector glitch")
        rows = len(inputs["features"])
        return {"probabilities": np.full((rows, 2), 0.5, dtype=np.float32)}
"""

#: Features for odd alert ids; one value short for even ones.
USER_FEATURES = """
from sciserve.streams.simulate import features_from_alert


def features(alert):
    vector = features_from_alert(alert)
    return vector if alert["diaSource"]["diaSourceId"] % 2 else vector[:-1]
"""


def _python_package(root: Path, name: str, **options: object) -> Path:
    root.mkdir(parents=True)
    (root / "model.py").write_text(FLAKY_MODEL)
    sha, size = sha256_file(root / "model.py")
    manifest = Manifest.model_validate(
        {
            "name": name,
            "version": "1.0.0",
            "namespace": "lab",
            "runtime": "python",
            "runtime_options": {"entrypoint": "model.py:Model", **options},
            "license": "MIT",
            "files": [{"path": "model.py", "size": size, "sha256": sha, "role": "model"}],
            "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 21]}],
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [-1, 2],
                    "labels": ["a", "b"],
                }
            ],
            "max_batch_size": 1024,
        }
    )
    (root / "sciserve.yaml").write_text(dump_manifest(manifest))
    return root


@pytest.fixture(scope="module")
def lab(stream: tuple[Path, Path, list[dict[str, str]]]) -> Settings:
    """The registry of ``stream`` plus a trusted namespace ``lab`` with two
    failing Python models, and an untrusted namespace ``strangers``."""
    home = stream[0]
    settings = Settings.load(home, environ={})
    with Registry(settings) as registry:
        registry.create_namespace("lab", trusted=True)
        registry.create_namespace("strangers")
        for name, options in (("flaky", {}), ("broken", {"always": True})):
            package = _python_package(home.parent / f"pkg-{name}", name, **options)
            registry.publish(package)
    return settings


def _replay_spec(tmp_path: Path, alerts: Path, **fields: object) -> dict[str, object]:
    copy = tmp_path / "alerts.avro"  # a copy: the source's offset file is per path
    copy.write_bytes(alerts.read_bytes())
    return {
        "name": tmp_path.name.lower()[:60].strip("_-.") or "p",
        "source": f"file://{copy}",
        "models": [{"ref": "examples/lc-classifier@production"}],
        "sinks": ["results", f"file://{tmp_path / 'out.jsonl'}"],
        "dead_letter": f"file://{tmp_path / 'dead.jsonl'}",
        "batch": 100,
        **fields,
    }


async def _fresh_alerts(tmp_path: Path, first_id: int, n: int = 120) -> tuple[Path, set[int]]:
    """A file of ``n`` alerts whose ids no other test uses: the result store
    keeps one annotation per alert and model version, whichever pipeline
    wrote it."""
    simulated = list(AlertSimulator(seed=first_id, first_id=first_id).alerts(n))
    path = tmp_path / "fresh.avro"
    sink = open_sink(f"file://{path}")
    await sink.start()
    await sink.write([OutRecord(a.payload) for a in simulated])
    await sink.close()
    return path, {a.alert_id for a in simulated}


async def _run(settings: Settings, fields: dict[str, object]) -> dict[str, object]:
    spec = parse_spec(fields)
    return await Pipeline(spec, settings, write_status_file=False).run()


def _lines(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_failing_models_are_retried_once_then_dead_lettered(
    stream: tuple[Path, Path, list[dict[str, str]]], lab: Settings, tmp_path: Path
) -> None:
    _, alerts, truth = stream
    spec = parse_spec(
        _replay_spec(tmp_path, alerts, models=[{"ref": "lab/flaky"}, {"ref": "lab/broken"}])
    )
    summary = await Pipeline(spec, lab, write_status_file=False).run()
    assert summary["consumed"] == len(truth) + len(BAD)
    with ResultStore.open(lab) as store:
        # Each batch failed once on the flaky model and succeeded on the retry.
        assert store.count(pipeline=spec.name, model="lab/flaky") == len(truth)
        assert store.count(pipeline=spec.name, model="lab/broken") == 0
    dead = _lines(tmp_path / "dead.jsonl")
    model_dead = [d for d in dead if d["stage"] == "model"]
    assert {d["alert_id"] for d in model_dead} == {int(r["alert_id"]) for r in truth}
    assert all("lab/broken:1.0.0 failed twice" in str(d["reason"]) for d in model_dead)
    assert all("detector glitch" in str(d["reason"]) for d in model_dead)
    assert len(dead) == len(model_dead) + len(BAD)


async def test_a_filter_that_fails_keeps_the_annotation_unpublished(
    lab: Settings, tmp_path: Path
) -> None:
    alerts, ids = await _fresh_alerts(tmp_path, first_id=10**6)
    fields = _replay_spec(tmp_path, alerts, filter="score / (score - score) > 1")
    summary = await _run(lab, fields)
    assert summary["annotated"] == len(ids)
    assert summary["published"] == 0
    assert _lines(tmp_path / "out.jsonl") == []
    with ResultStore.open(lab) as store:
        stored = list(store.read(pipeline=str(fields["name"])))
    assert {a.alert_id for a in stored} == ids
    assert all(not a.published and "division by zero" in (a.filter_error or "") for a in stored)


async def test_user_feature_functions_run_only_from_trusted_namespaces(
    lab: Settings, tmp_path: Path
) -> None:
    alerts, ids = await _fresh_alerts(tmp_path, first_id=2 * 10**6)
    (tmp_path / "feats.py").write_text(USER_FEATURES)
    strangers = {"python": "feats.py:features", "namespace": "strangers"}
    (tmp_path / "spec.yaml").write_text(
        json.dumps(_replay_spec(tmp_path, alerts, features=strangers))
    )
    untrusted = load_spec(tmp_path / "spec.yaml")  # the file is relative to the spec
    assert untrusted.features != "lightcurve"
    with pytest.raises(PermissionDenied, match="strangers"):
        await Pipeline(untrusted, lab, write_status_file=False).run()
    assert not (tmp_path / "out.jsonl").exists()

    ours = {"python": str(tmp_path / "feats.py") + ":features", "namespace": "lab"}
    fields = _replay_spec(tmp_path, alerts, features=ours)
    await _run(lab, fields)
    with ResultStore.open(lab) as store:
        assert set(store.alert_ids(pipeline=str(fields["name"]))) == {i for i in ids if i % 2}
    short = [d for d in _lines(tmp_path / "dead.jsonl") if d["stage"] == "features"]
    assert {d["alert_id"] for d in short} == {i for i in ids if not i % 2}
    assert all(d["error"] == "features-shape" for d in short)


def _serve(lab: Settings, *extra: str) -> Iterator[str]:
    """``sciserve serve`` on free 127.0.0.1 ports over the test registry."""
    options = "--model examples/lc-classifier --http-port 0 --grpc-port 0 --metrics-port 0"
    command = [sys.executable, "-m", "sciserve", "--home", str(lab.home), "serve"]
    process = subprocess.Popen(
        [*command, *options.split(), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        match = re.search(r"http=([\d.]+:\d+)", banner)
        assert match, f"no address in {banner!r} (exit code {process.poll()})"
        yield f"http://{match.group(1)}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def server(lab: Settings) -> Iterator[str]:
    yield from _serve(lab)


@pytest.fixture
def auth_server(lab: Settings) -> Iterator[str]:
    yield from _serve(lab, "--auth")


async def test_models_on_a_server_with_auth_use_the_configured_token(
    lab: Settings, auth_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Registry(lab) as registry:
        tokens = TokenStore(registry)
        _, reader = tokens.create("stream-reader", {"examples": ["read"]})
        _, classifier = tokens.create("stream-classifier", {"examples": ["read", "infer"]})
    alerts, ids = await _fresh_alerts(tmp_path, first_id=4 * 10**6, n=40)
    models = [{"ref": "examples/lc-classifier@production", "server": auth_server}]
    fields = _replay_spec(tmp_path, alerts, models=models, batch=20)
    name = str(fields["name"])

    with pytest.raises(Unauthenticated):  # no token at all
        await _run(lab, fields)
    # Allowed to resolve the model but not to run it: a deployment problem,
    # so the pipeline stops with nothing committed instead of dead-lettering.
    monkeypatch.setattr(pipeline_module, "_SERVICE_ATTEMPTS", 2)
    with pytest.raises(PermissionDenied, match="infer"):
        await _run(lab.model_copy(update={"token": SecretStr(reader)}), fields)
    assert not list(tmp_path.glob("alerts.avro*.offset"))
    assert _lines(tmp_path / "dead.jsonl") == []
    with ResultStore.open(lab) as store:
        assert store.count(pipeline=name) == 0

    summary = await _run(lab.model_copy(update={"token": SecretStr(classifier)}), fields)
    assert summary["annotated"] == len(ids)
    with ResultStore.open(lab) as store:
        assert set(store.alert_ids(pipeline=name)) == ids


async def test_a_server_over_quota_is_rate_limited_not_a_model_failure(
    lab: Settings, auth_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One request, then nothing for a quarter of an hour: the server answers
    # the second batch with 429, which every client of the package reads as
    # RateLimited (a quota, not an outage), and the pipeline stops with
    # nothing of that batch committed or dead-lettered.
    with Registry(lab) as registry:
        _, token = TokenStore(registry).create(
            "stream-quota",
            {"examples": ["read", "infer"]},
            limit=RateLimit(rate=0.001, burst=1),
        )
    alerts, _ = await _fresh_alerts(tmp_path, first_id=5 * 10**6, n=40)
    models = [{"ref": "examples/lc-classifier@production", "server": auth_server}]
    fields = _replay_spec(tmp_path, alerts, models=models, batch=20)
    monkeypatch.setattr(pipeline_module, "_SERVICE_ATTEMPTS", 2)
    with pytest.raises(RateLimited, match="lc-classifier"):
        await _run(lab.model_copy(update={"token": SecretStr(token)}), fields)
    assert _lines(tmp_path / "dead.jsonl") == []
    with ResultStore.open(lab) as store:
        assert store.count(pipeline=str(fields["name"])) == 20


async def test_models_run_on_a_sciserve_server(lab: Settings, server: str, tmp_path: Path) -> None:
    alerts, ids = await _fresh_alerts(tmp_path, first_id=3 * 10**6, n=60)
    models = [{"ref": "examples/lc-classifier@production", "server": server}]
    fields = _replay_spec(tmp_path, alerts, models=models, batch=25)
    summary = await _run(lab, fields)
    assert summary["annotated"] == len(ids)
    with ResultStore.open(lab) as store:
        remote = {a.alert_id: a for a in store.read(pipeline=str(fields["name"]))}
    assert set(remote) == ids
    with Registry(lab) as registry:
        info = registry.resolve("examples/lc-classifier@production")
        model = sciserve.load(info.ref, registry=registry)
    assert {a.model_digest for a in remote.values()} == {info.digest}
    assert all("sciserve-server" in a.library_versions for a in remote.values())
    # The server computes what the same model computes in this process.
    codec = codec_for("lsst", fields="lightcurve")
    decoded = [codec.decode(m.value) for m in await _read_all(alerts)]
    features = np.stack([features_from_alert(alert) for alert in decoded])
    expected = model.predict(features=features)["probabilities"]
    model.close()
    for alert, row in zip(decoded, expected, strict=True):
        got = remote[codec.alert_id(alert)].outputs["probabilities"]
        np.testing.assert_allclose(got, row, rtol=1e-5, atol=1e-6)


async def _read_all(path: Path) -> list[Message]:
    source = open_source(f"file://{path}")
    await source.start()
    try:
        return await source.fetch(10_000, 1.0)
    finally:
        await source.close()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"filter": "__import__('os')"}, "only the functions"),
        ({"filter": "probs[0] > 1"}, "neither model outputs"),
        ({"sinks": ["results", "file:///tmp/x.parquet"]}, "durable only when closed"),
        ({"fields": ["diaSource.noSuchField"]}, "noSuchField"),
    ],
)
async def test_bad_specs_fail_before_the_first_message(
    stream: tuple[Path, Path, list[dict[str, str]]],
    lab: Settings,
    tmp_path: Path,
    change: dict[str, object],
    message: str,
) -> None:
    _, alerts, _ = stream
    with pytest.raises(InvalidInput, match=message):
        await _run(lab, _replay_spec(tmp_path, alerts, **change))
    assert not (tmp_path / "dead.jsonl").exists()
    assert not list(tmp_path.glob("alerts.avro*.offset"))


# -- the result store on both databases ------------------------------------------


def _annotation(alert_id: int, version: str = "1.0.0") -> Annotation:
    return Annotation(
        alert_id=alert_id,
        model="lab/m",
        model_version=version,
        model_digest="sha256:" + "0" * 64,
        outputs={"probabilities": [0.25, 0.75]},
        label="b",
        score=0.75,
        pipeline="store-test",
        runtime="onnx",
        library_versions={"sciserve": sciserve.__version__},
        broker_timestamp_ms=1_700_000_000_000,
        processed_at=datetime.now(UTC),
        published=True,
    )


def test_the_result_store_writes_each_key_once(settings: Settings) -> None:
    with ResultStore.open(settings) as store:
        assert store.write([_annotation(i) for i in range(10)]) == 10
        # A redelivered batch overlapping the stored one, with a duplicate
        # inside the batch itself, and a new model version of one alert.
        again = [_annotation(i) for i in range(5, 15)] + [_annotation(14), _annotation(3, "2.0")]
        assert store.write(again) == 6
        assert store.count(pipeline="store-test") == 16
        assert store.alert_ids(model="lab/m") == sorted([*range(15), 3])
        stored = store.get(7, "lab/m", "1.0.0")
    assert stored is not None
    assert stored.outputs == {"probabilities": [0.25, 0.75]}
    assert stored.processed_at.tzinfo is not None
    assert stored.key == "7:lab/m:1.0.0"
