"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven
by Playwright) against a real ``sciserve serve --auth`` serving the example
models.

Screenshots of every page a test looks at are saved under the test's
temporary directory (``SCISERVE_TEST_ARTIFACTS`` to keep them elsewhere)
and checked to show more than one colour.  Without Chromium the tests fail
in CI (``CI`` set) and are skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import sciserve
from sciserve.access._db import engine_of
from sciserve.access.tokens import TokenStore
from sciserve.config import Settings
from sciserve.examples import build_examples
from sciserve.monitoring import Layout, Reference, ReferenceStore
from sciserve.registry.registry import Registry

from helpers.packages import make_onnx_package
from helpers.png import distinct_colours
from helpers.required import unavailable
from helpers.server import Running, start_server, stop_server

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
#: How long a page may take to show what a test waits for.
DEADLINE = 30.0
#: What a live number shows before the first poll answers (an en dash).
NO_NUMBER = "\u2013"
#: Each caller's own rate limit, far above what the tests send; the monitor
#: on, with small windows so a drift test needs few requests.
SETTINGS = (
    "[access]\ndefault_rate = { rate = 1000.0, burst = 1000 }\n"
    "[monitoring]\nenabled = true\nwindow = 1000\nmin_samples = 500\ncheck_every = 100\n"
    "max_rows_per_second = 0\n"
)
#: Feature names that would run script if a page ever rendered them as markup.
HOSTILE_FEATURES = [
    '<img src=x onerror="window.__xss=1">',
    '"><script>window.__xss=2</script>',
    "plain",
    "also plain",
]


def _require_chromium() -> Any:
    """Playwright's sync API, once Chromium and Playwright are known to be there."""
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)"
    try:
        from playwright import sync_api
    except ImportError:
        problem = "Playwright for Python is missing: pip install playwright"
    if problem is not None:
        unavailable(problem)
    return sync_api


@dataclass
class World:
    server: Running
    base: str
    home: Path
    artifacts: Path
    admin: str
    alpha: str
    browser: Any

    def screenshot(self, page: Any, name: str) -> Path:
        """Save what ``page`` shows and check that it shows something."""
        path = self.artifacts / f"{name}.png"
        page.screenshot(path=str(path), full_page=False)
        assert distinct_colours(path) > 1, f"{path} is blank"
        return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    sync_api = _require_chromium()
    work = tmp_path_factory.mktemp("dashboard-browser")
    artifacts = Path(os.environ.get("SCISERVE_TEST_ARTIFACTS", work / "artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    home.mkdir()
    (home / "sciserve.toml").write_text(SETTINGS)
    with Registry(Settings.load(home, environ={})) as reg:
        for package in build_examples(work / "examples"):
            reg.publish(package)
        reg.publish(make_onnx_package(work / "a", name="m", namespace="alpha"))
        reg.publish(make_onnx_package(work / "b", name="b", namespace="beta"))
        hostile = reg.publish(
            make_onnx_package(
                work / "h",
                name="hostile",
                namespace="gamma",
                extra={
                    "inputs": [
                        {
                            "name": "x",
                            "datatype": "FP32",
                            "shape": [-1, 4],
                            "feature_names": HOSTILE_FEATURES,
                        }
                    ]
                },
            )
        ).version
        x = np.random.default_rng(5).normal(size=(20_000, 4)).astype(np.float32)
        ReferenceStore(engine_of(reg)).save(
            "gamma.hostile",
            hostile.version,
            hostile.digest,
            Reference.from_arrays(Layout(hostile.manifest), {"x": x}, {}),
        )
        tokens = TokenStore(reg)
        admin = tokens.create("root", {}, admin=True)[1]
        alpha = tokens.create("alice", {"alpha": ["read", "infer"]})[1]
    # The example classifier's reference: its training data, as a user stores it.
    reference = subprocess.run(
        [
            sys.executable,
            "-m",
            "sciserve",
            "--home",
            str(home),
            "monitor",
            "reference",
            "examples/lc-classifier",
            str(work / "examples" / "lc-classifier" / "training-data.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reference.returncode == 0, reference.stderr
    server = start_server(home, "--auth", stderr_file=work / "server.log")
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            try:
                yield World(server, f"http://{server.http}", home, artifacts, admin, alpha, browser)
            finally:
                browser.close()
    finally:
        stop_server(server.proc)


@pytest.fixture
def page(world: World) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page, logged in as admin."""
    context = world.browser.new_context(viewport={"width": 1000, "height": 700})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=world.base)
    page = context.new_page()
    try:
        _log_in(page, world.base, world.admin)
        yield page
    finally:
        context.close()


def _log_in(page: Any, base: str, token: str) -> None:
    page.goto(f"{base}/login")
    page.fill("#token", token)
    page.click("#login-submit")
    page.wait_for_url(f"{base}/")


def _rows(page: Any) -> set[tuple[str, str]]:
    cells = page.eval_on_selector_all(
        "tr.model", "rows => rows.map(r => [r.dataset.namespace, r.dataset.name])"
    )
    return {(ns, name) for ns, name in cells}


def _wait(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_search_the_catalogue_and_open_a_model(world: World, page: Any) -> None:
    assert _rows(page) >= {("examples", "lc-classifier"), ("alpha", "m"), ("beta", "b")}
    world.screenshot(page, "catalogue")
    page.fill("#search", "lc-classifier gbm")
    page.click("#search-submit")
    page.wait_for_url(re.compile(r".*\?q=lc-classifier\+gbm.*"))
    assert _rows(page) == {("examples", "lc-classifier-gbm")}
    page.select_option("#filter-runtime", "onnx")
    page.fill("#search", "")
    page.click("#search-submit")
    page.wait_for_load_state()
    assert ("examples", "lc-classifier") in _rows(page)
    assert ("examples", "lc-classifier-gbm") not in _rows(page)
    world.screenshot(page, "catalogue-filtered")
    page.click("a.model-link[href='/models/examples/lc-classifier']")
    page.wait_for_url(f"{world.base}/models/examples/lc-classifier")
    assert page.text_content("#model-title").startswith("examples/lc-classifier")
    assert page.text_content("#licence").strip() == "CC-BY-4.0"
    assert "@software{examples_lc_classifier_1_0_0" in page.text_content("#bibtex")
    world.screenshot(page, "model-card")


def test_copy_the_curl_snippet_and_run_it(world: World, page: Any) -> None:
    page.goto(f"{world.base}/models/examples/lc-classifier")
    page.click("button.copy[data-target='snippet-curl']")
    _wait(lambda: page.text_content("button.copy[data-target='snippet-curl']") == "Copied", "copy")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == page.text_content("#snippet-curl")
    assert world.admin not in copied and world.admin not in page.content()
    result = subprocess.run(
        ["bash", "-c", copied],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SCISERVE_TOKEN": world.admin},
        check=True,
    )
    answer = httpx.Response(200, content=result.stdout).json()
    outputs = {o["name"]: o for o in answer["outputs"]}
    # The same zeros through the SDK, in this process, give the same answer.
    model = sciserve.load("examples/lc-classifier:1.0.0", home=world.home)
    features = model.info.manifest.inputs[0]
    shape = [1 if d == -1 else d for d in features.shape]
    expected = model.predict(np.zeros(shape, np.float32))
    for name, value in expected.items():
        np.testing.assert_allclose(
            np.asarray(outputs[name]["data"], dtype=np.float64).ravel(),
            np.asarray(value, dtype=np.float64).ravel(),
            rtol=1e-5,
        )


def test_the_live_numbers_move_while_load_is_sent(world: World, page: Any) -> None:
    page.goto(f"{world.base}/models/alpha/m")
    _wait(lambda: page.text_content("#live-requests") not in (NO_NUMBER, None), "the first numbers")
    before = int(page.text_content("#live-requests") or "0")
    stop = threading.Event()
    sent: list[int] = []

    def load() -> None:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [1] * 8}]}
        headers = {"Authorization": f"Bearer {world.alpha}"}
        with httpx.Client(base_url=world.base, headers=headers) as client:
            while not stop.is_set():
                sent.append(client.post("/v2/models/alpha.m/infer", json=body).status_code)
                stop.wait(0.01)  # a steady stream, not a flood

    sender = threading.Thread(target=load)
    sender.start()
    try:
        _wait(lambda: int(page.text_content("#live-requests") or "0") >= before + 20, "requests")
        _wait(lambda: page.text_content("#live-p50") not in (NO_NUMBER, None), "a latency")
        _wait(lambda: page.locator("#chart-rps polyline").count() == 1, "the request chart")
        _wait(lambda: page.locator("#chart-latency polyline").count() == 2, "the latency chart")
        _wait(lambda: page.locator("#chart-batches rect").count() >= 1, "the batch histogram")
        _wait(lambda: float(page.text_content("#live-rps") or "0") > 0, "a request rate")
    finally:
        stop.set()
        sender.join(timeout=DEADLINE)
    assert len(sent) >= 20 and set(sent) == {200}
    assert page.text_content("#live-p50").endswith(" ms")
    wrong = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]}
    refused = httpx.post(
        f"{world.base}/v2/models/alpha.m/infer",
        json=wrong,
        headers={"Authorization": f"Bearer {world.alpha}"},
    )
    assert refused.status_code == 400
    _wait(lambda: "InvalidInput400" in (page.text_content("#live-errors") or ""), "the error")
    world.screenshot(page, "live")


def test_a_namespace_token_sees_only_its_namespace(world: World) -> None:
    context = world.browser.new_context(viewport={"width": 1000, "height": 700})
    try:
        page = context.new_page()
        page.goto(f"{world.base}/")
        assert page.text_content("h1") == "Log in"
        page.click("#login-link")
        _log_in(page, world.base, world.alpha)
        assert _rows(page) == {("alpha", "m")}
        assert page.text_content("#who") == "alice"
        html = page.content()
        assert world.alpha not in html and "beta" not in html
        cookies = {c["name"]: c for c in context.cookies()}
        session = cookies["sciserve_session"]
        assert session["httpOnly"] and session["sameSite"] == "Strict"
        # Page scripts cannot read the session.
        assert "sciserve_session" not in page.evaluate("document.cookie")
        world.screenshot(page, "catalogue-alpha")
        answer = page.goto(f"{world.base}/models/beta/b")
        assert answer is not None and answer.status == 404
        world.screenshot(page, "hidden-model")
        page.goto(f"{world.base}/")
        page.click("#logout")
        page.wait_for_url(f"{world.base}/login")
        assert "sciserve_session" not in {c["name"] for c in context.cookies()}
        assert page.goto(f"{world.base}/") is not None
        assert page.text_content("h1") == "Log in"
    finally:
        context.close()


def test_the_health_page(world: World, page: Any) -> None:
    page.goto(f"{world.base}/health")
    assert page.text_content("#status") == "ok"
    assert page.locator("#health-models tr.model").count() == 5
    world.screenshot(page, "health")


def _send_rows(world: World, served: str, name: str, rows: np.ndarray, per_request: int) -> None:
    headers = {"Authorization": f"Bearer {world.admin}"}
    with httpx.Client(base_url=world.base, headers=headers, timeout=30) as client:
        for start in range(0, len(rows), per_request):
            chunk = rows[start : start + per_request]
            body = {
                "inputs": [
                    {
                        "name": name,
                        "datatype": "FP32",
                        "shape": list(chunk.shape),
                        "data": chunk.ravel().tolist(),
                    }
                ]
            }
            answer = client.post(f"/v2/models/{served}/infer", json=body)
            assert answer.status_code == 200, answer.text


def _drift_rows(page: Any) -> list[list[str]]:
    rows: list[list[str]] = page.eval_on_selector_all(
        "#drift-alerts tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    return rows


def test_a_drift_alert_appears_after_shifted_traffic(world: World, page: Any) -> None:
    with np.load(world.home.parent / "examples" / "lc-classifier" / "training-data.npz") as npz:
        features, names = npz["features"].astype(np.float32), [str(n) for n in npz["feature_names"]]
    page.goto(f"{world.base}/models/examples/lc-classifier")
    assert page.text_content("#drift-summary") == "No drift alert."
    page.evaluate("window.__same_page = true")  # gone if the page ever reloads
    # Reference-like traffic (the training data itself, shuffled): judged, and no alert.
    rng = np.random.default_rng(7)
    like = features[rng.permutation(len(features))][:1500]
    _send_rows(world, "examples.lc-classifier", "features", like, per_request=50)
    _wait(lambda: any(r[1] == "ok" for r in _drift_rows(page)), "the version judged ok")
    assert page.text_content("#drift-summary") == "No drift alert."
    page.locator("#drift").scroll_into_view_if_needed()
    world.screenshot(page, "drift-ok")
    # One feature moved by three of its standard deviations: the alert appears,
    # live, naming the model's version, the feature, the score and the threshold.
    column = names.index("log_peak_flux")
    assert features[:, column].std() > 0
    shifted = like.copy()
    shifted[:, column] += 3 * features[:, column].std()
    _send_rows(world, "examples.lc-classifier", "features", shifted, per_request=50)
    _wait(lambda: (page.text_content("#drift-summary") or "").startswith("Drift alert"), "alert")
    assert page.evaluate("window.__same_page") is True
    alerts = [r for r in _drift_rows(page) if r[1] == "alerting" and len(r) == 7]
    assert alerts, _drift_rows(page)
    # The moved feature, and perhaps the class mix it changed: nothing else.
    assert names[column] in {r[2] for r in alerts}
    assert {r[2] for r in alerts} <= {names[column], "probabilities"}
    for version, _state, feature, kind, value, threshold, since in alerts:
        assert version == "1.0.0"
        assert kind in (("psi", "ks") if feature == names[column] else ("class_shift",))
        assert float(value) > float(threshold) > 0
        assert since.endswith("UTC")
    page.locator("#drift").scroll_into_view_if_needed()
    world.screenshot(page, "drift-alert")
    # The health page names it too, with what to do.
    page.goto(f"{world.base}/health")
    assert page.text_content("#status") == "degraded"
    problem = page.locator("#problems li", has_text="examples.lc-classifier").text_content() or ""
    assert "drifted from its reference" in problem and names[column] in problem
    assert "/v2/sciserve/monitoring/examples.lc-classifier/reference" in problem
    world.screenshot(page, "health-drift")


def test_drift_alerts_show_hostile_feature_names_as_text(world: World, page: Any) -> None:
    page.goto(f"{world.base}/models/gamma/hostile")
    rows = np.random.default_rng(8).normal(size=(1500, 4)).astype(np.float32)
    rows[:, :2] += 3.0  # both hostile features drift
    _send_rows(world, "gamma.hostile", "x", rows, per_request=50)
    _wait(lambda: (page.text_content("#drift-summary") or "").startswith("Drift alert"), "alert")
    shown = {r[2] for r in _drift_rows(page) if r[1] == "alerting" and len(r) == 7}
    assert set(HOSTILE_FEATURES[:2]) <= shown
    assert page.evaluate("window.__xss === undefined")
    assert page.locator("#drift img, #drift script").count() == 0
    # Rendered by the server too (a reload), still as text.
    page.reload()
    shown = {r[2] for r in _drift_rows(page) if r[1] == "alerting" and len(r) == 7}
    assert set(HOSTILE_FEATURES[:2]) <= shown
    assert page.evaluate("window.__xss === undefined")
    assert page.locator("#drift img, #drift script").count() == 0
    assert "&lt;img src=x" in page.content()
    page.locator("#drift").scroll_into_view_if_needed()
    world.screenshot(page, "drift-hostile")
    # Another namespace's token learns nothing of this model's drift.
    alpha = {"Authorization": f"Bearer {world.alpha}"}
    health = httpx.get(f"{world.base}/v2/sciserve/health", headers=alpha).json()
    assert health["checks"]["drift"] == "ok"
    assert "hostile" not in json.dumps(health) and "gamma" not in json.dumps(health)
    assert httpx.get(f"{world.base}/ui/live/gamma.hostile", headers=alpha).status_code == 404
