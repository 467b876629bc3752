"""The dashboard's benchmarks page: leaderboards per dataset from the
evaluation records, and each record's HTML report, over HTTP and in a real
headless Chromium (as in ``test_dashboard_browser.py``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import sciserve
from sciserve.access.tokens import TokenStore
from sciserve.config import Settings
from sciserve.evaluation import registered
from sciserve.examples import build_examples
from sciserve.examples.benchmark import build_benchmark
from sciserve.registry.registry import Registry

from helpers.png import distinct_colours
from helpers.required import unavailable
from helpers.server import Running, start_server, stop_server

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
DATA = "examples/synthetic-lightcurves"


@dataclass
class World:
    server: Running
    base: str
    home: Path
    admin: str
    beta: str
    records: dict[str, str]  # model name -> record id

    def bearer(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("benchmarks-page")
    home = work / "home"
    records = {}
    with Registry(Settings.load(home, environ={})) as reg:
        for package in build_examples(work / "examples"):
            reg.publish(package)
        build_benchmark(work / "bench")
        reg.publish(work / "bench")
        split = registered.open_split(reg, DATA, "test")
        for name in ("lc-classifier", "lc-classifier-gbm"):
            with sciserve.load(f"examples/{name}", registry=reg) as model:
                done = registered.evaluate_dataset(reg, model, split)
            records[name] = done.stored.record_id
        tokens = TokenStore(reg)
        admin = tokens.create("root", {}, admin=True)[1]
        beta = tokens.create("bob", {"beta": ["read"]})[1]
    server = start_server(home, "--auth", stderr_file=work / "server.log")
    try:
        yield World(server, f"http://{server.http}", home, admin, beta, records)
    finally:
        stop_server(server.proc)


def test_the_page_ranks_the_evaluated_versions_and_links_their_reports(world: World) -> None:
    page = httpx.get(f"{world.base}/benchmarks", headers=world.bearer(world.admin), timeout=60)
    assert page.status_code == 200
    text = page.text
    assert f'data-dataset="{DATA}"' in text and "weighted_log_loss" in text
    ranked = re.findall(r"<td><a href=\"/models/examples/([^\"]+)\">", text)
    assert sorted(ranked) == ["lc-classifier", "lc-classifier-gbm"]
    for name, record_id in world.records.items():
        assert f"/benchmarks/examples/{name}/evaluations/{record_id}" in text
    by_accuracy = httpx.get(
        f"{world.base}/benchmarks",
        params={"metric": "accuracy"},
        headers=world.bearer(world.admin),
        timeout=60,
    )
    assert "<strong>accuracy</strong>" in by_accuracy.text
    # A caller who may see none of the ranked models sees no board at all.
    nothing = httpx.get(f"{world.base}/benchmarks", headers=world.bearer(world.beta), timeout=60)
    assert DATA not in nothing.text and 'id="no-evaluations"' in nothing.text


def test_the_report_route_serves_the_self_contained_report(world: World) -> None:
    record_id = world.records["lc-classifier"]
    url = f"{world.base}/benchmarks/examples/lc-classifier/evaluations/{record_id}"
    answer = httpx.get(url, headers=world.bearer(world.admin), timeout=60)
    assert answer.status_code == 200
    assert answer.headers["content-security-policy"].startswith("default-src 'none'; img-src data:")
    assert answer.text.count("data:image/png;base64,") == 3 and record_id in answer.text
    # Another model's path to the record, or a caller who may not see the model: 404.
    other = url.replace("/lc-classifier/", "/lc-classifier-gbm/")
    assert httpx.get(other, headers=world.bearer(world.admin), timeout=60).status_code == 404
    assert httpx.get(url, headers=world.bearer(world.beta), timeout=60).status_code == 404
    assert httpx.get(url, timeout=60).status_code == 401


def _sync_api() -> Any:
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


def test_a_browser_opens_a_report_from_the_benchmarks_page(world: World, tmp_path: Path) -> None:
    sync_api = _sync_api()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            blocked: list[str] = []
            page.on("console", lambda m: blocked.append(m.text) if "violates" in m.text else None)
            page.goto(f"{world.base}/login")
            page.fill("#token", world.admin)
            page.click("#login-submit")
            page.wait_for_url(f"{world.base}/")
            page.goto(f"{world.base}/benchmarks")
            assert page.locator("table.leaderboard tr.model").count() == 2
            page.screenshot(path=str(tmp_path / "benchmarks.png"))
            assert distinct_colours(tmp_path / "benchmarks.png") > 1
            page.click("a.report >> nth=0")
            page.wait_for_url(re.compile(r".*/evaluations/[0-9a-f]+$"))
            # Every plot is drawn: the inline images decoded under the report's policy.
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
            assert widths == [640, 640, 640]
            assert page.locator("h1").inner_text().startswith("examples/lc-classifier")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            assert distinct_colours(tmp_path / "report.png") > 1
            assert blocked == []  # nothing the policy had to refuse
        finally:
            browser.close()
