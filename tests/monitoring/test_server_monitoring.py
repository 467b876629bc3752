"""A real ``sciserve serve`` process with the monitor on: shifted traffic over
HTTP raises the drift alert in its Prometheus metrics and monitoring route."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from sciserve.access._db import engine_of
from sciserve.config import Settings
from sciserve.monitoring import Layout, Reference, ReferenceStore
from sciserve.registry.registry import Registry

from helpers.packages import expected_linear, make_onnx_package
from helpers.server import Running, serving

FEATURES = ["mag", "color", "snr", "ext"]
ALERT = 'sciserve_monitor_alert{model="linear",version="1.0.0"} 1.0'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    home = tmp_path_factory.mktemp("home")
    work = tmp_path_factory.mktemp("work")
    (home / "sciserve.toml").write_text(
        "[monitoring]\nenabled = true\nwindow = 1000\nmin_samples = 500\ncheck_every = 100\n"
        "max_rows_per_second = 0\n"
    )
    package = make_onnx_package(
        work / "linear",
        extra={
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [-1, 4], "feature_names": FEATURES}
            ],
            "outputs": [
                {"name": "y", "datatype": "FP32", "shape": [-1, 3], "labels": ["a", "b", "c"]}
            ],
        },
    )
    with Registry(Settings.load(home, environ={})) as reg:
        info = reg.publish(package).version
        x = np.random.default_rng(1).normal(size=(20_000, 4)).astype(np.float32)
        reference = Reference.from_arrays(
            Layout(info.manifest), {"x": x}, {"y": expected_linear(x)}
        )
        ReferenceStore(engine_of(reg)).save("linear", info.version, info.digest, reference)
    with serving(home) as running:
        yield running


def _infer(client: httpx.Client, rows: np.ndarray) -> httpx.Response:
    body = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": list(rows.shape),
                "data": [None if not np.isfinite(v) else float(v) for v in rows.ravel()],
            }
        ]
    }
    return client.post("/v2/models/linear/infer", json=body)


def _metrics(server: Running) -> str:
    return httpx.get(f"http://{server.metrics}/metrics", timeout=10).text


def test_shifted_traffic_over_http_sets_the_alert_gauge(server: Running) -> None:
    rng = np.random.default_rng(2)
    with httpx.Client(base_url=f"http://{server.http}", timeout=30) as client:
        for _ in range(1000):  # a full window: judged on 1000 rows, far from a false alarm
            assert _infer(client, rng.normal(size=(1, 4)).astype(np.float32)).status_code == 200
        # Folding lags the answers (every 0.5 s, in slices): wait until the
        # check after the last of the 1000 rows was made, not just the first.
        deadline = time.monotonic() + 30
        while True:
            status = client.get("/v2/sciserve/monitoring").json()
            if status["models"] and status["models"][0]["rows_seen"] >= 1000:
                break
            assert time.monotonic() < deadline, f"the monitor never saw 1000 rows: {status}"
            time.sleep(0.1)
        assert "sciserve_monitor_drift_score" in _metrics(server)
        assert ALERT not in _metrics(server)
        assert status["enabled"] is True
        [model] = status["models"]
        assert (model["model"], model["state"]) == ("linear", "ok")
        shifted = rng.normal(size=(3000, 4)).astype(np.float32)
        shifted[:, 0] += 1.0
        sent = 0
        for row in shifted:
            assert _infer(client, row[None, :]).status_code == 200
            sent += 1
            if sent % 100 == 0 and ALERT in _metrics(server):
                break
        deadline = time.monotonic() + 30
        while ALERT not in _metrics(server):
            assert time.monotonic() < deadline, "the alert gauge was never set"
            time.sleep(0.1)
        # The stated bound (2 x window + check_every, here 2100 rows) holds over HTTP too.
        assert sent <= 2100
        text = _metrics(server)
        assert (
            'sciserve_monitor_drift_score{kind="ks",model="linear",name="mag",version="1.0.0"}'
            in text
        )
        model = client.get("/v2/sciserve/monitoring").json()["models"][0]
        assert model["state"] == "alerting"
        assert [b["name"] for b in model["breaches"] if b["kind"] == "ks"] == ["mag"]


def test_hostile_values_never_fail_a_request(server: Running) -> None:
    with httpx.Client(base_url=f"http://{server.http}", timeout=30) as client:
        # NaN and infinities in binary tensor data: the model answers, the monitor counts.
        raw = np.array([[np.nan, np.inf, -np.inf, 1.0]] * 8, np.float32).tobytes()
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [8, 4],
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ]
            }
        ).encode()
        response = client.post(
            "/v2/models/linear/infer",
            content=header + raw,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert response.status_code == 200, response.text
        huge = np.zeros((64, 4), np.float32)
        assert _infer(client, huge).status_code == 200
        empty = client.post(
            "/v2/models/linear/infer",
            json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [0, 4], "data": []}]},
        )
        assert empty.status_code in (200, 400), empty.text
        # The monitor is still alive and judging.
        assert client.get("/v2/sciserve/monitoring").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200


def test_recorded_traffic_becomes_the_reference_over_http(server: Running) -> None:
    rng = np.random.default_rng(3)
    with httpx.Client(base_url=f"http://{server.http}", timeout=30) as client:
        for _ in range(20):
            assert _infer(client, rng.normal(size=(1, 4)).astype(np.float32)).status_code == 200
        deadline = time.monotonic() + 30
        while client.get("/v2/sciserve/monitoring").json()["models"][0]["state"] == "no_traffic":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        frozen = client.post("/v2/sciserve/monitoring/linear/reference")
        assert frozen.status_code == 200, frozen.text
        assert frozen.json()["source"] == "traffic" and frozen.json()["rows"] > 0
        [model] = client.get("/v2/sciserve/monitoring").json()["models"]
        assert model["reference"]["source"] == "traffic"
        missing = client.post("/v2/sciserve/monitoring/nope/reference", content=b"\xff" * 1000)
        assert missing.status_code == 404 and "Traceback" not in missing.text
        wrong = client.get("/v2/sciserve/monitoring/linear/reference")
        assert wrong.status_code == 405
